"""Signed Shopify webhooks driven by ``wrk``, shared by the ingest and system benches.

wrk is a compiled load generator: a Python client saturates near a few hundred
requests/s and then measures itself. wrk's Lua has no HMAC, so ``write_pool`` pre-signs
distinct orders/create bodies (one file per wrk thread) and ``webhooks.lua`` walks them,
so no webhook id repeats; ``wrk`` runs it and reads back the status counts, latency
percentiles and the delivery ids answered 2xx.
"""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import hmac
import json
import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import httpx

HERE = Path(__file__).parent
FIXTURE = HERE.parent / "services/orders-ingest/tests/fixtures/shopify_order.json"
LUA = HERE / "webhooks.lua"
FLOOR_APP = HERE / "ingest"  # floor.py: the bare HMAC endpoint
THREADS = 2  # the machine has 2 cores; wrk's threads share them with the service


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_healthy(url: str, proc: subprocess.Popen[bytes], what: str) -> None:
    # 180 s: two uvicorn workers joining their consumer groups on a loaded 2-core
    # machine took more than 90.
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with {proc.returncode}")
        try:
            if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.2)
    raise RuntimeError(f"{what} did not start")


# The process serving each URL started by process(), for cpu_seconds().
PIDS: dict[str, int] = {}


@contextlib.contextmanager
def process(cmd: list[str], env: dict[str, str], port: int, what: str) -> Iterator[str]:
    proc = subprocess.Popen(cmd, env={**os.environ, **env})
    url = f"http://127.0.0.1:{port}"
    PIDS[url] = proc.pid
    try:
        wait_healthy(url, proc, what)
        yield url
    finally:
        PIDS.pop(url, None)
        proc.terminate()
        proc.wait(timeout=60)


def cpu_seconds(pid: int) -> float:
    """CPU time (user + system) used so far by ``pid`` and its descendants (uvicorn's
    workers), from /proc; 0.0 where there is none. Per request it is a figure that
    other load on the machine changes far less than a rate does."""
    parent: dict[int, int] = {}
    used: dict[int, float] = {}
    tick = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # ended meanwhile
        p = int(stat.parent.name)
        parent[p] = int(fields[1])
        used[p] = (int(fields[11]) + int(fields[12])) / tick
    total, todo = 0.0, [pid]
    while todo:
        p = todo.pop()
        total += used.get(p, 0.0)
        todo += [c for c, pp in parent.items() if pp == p]
    return total


def floor(secret: str) -> contextlib.AbstractContextManager[str]:
    """The bare HMAC endpoint, under uvicorn with the settings ``afterglow serve`` uses."""
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", "floor:create_app", "--factory"]
    cmd += ["--app-dir", str(FLOOR_APP), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--log-level", "warning", "--no-access-log", "--timeout-graceful-shutdown", "20"]
    return process(cmd, {"FLOOR_SECRET": secret}, port, "floor endpoint")


def require_wrk() -> None:
    if shutil.which("wrk") is None:
        sys.exit("wrk is not installed: apt-get install wrk")


def write_pool(
    directory: Path,
    tag: str,
    secret: str,
    size: int,
    offset: int,
    customer_of: Callable[[int], int] = lambda i: 500_000 + i % 5000,
    first_orders: bool = False,
) -> str:
    """``size`` signed orders/create bodies, split over the wrk threads' files; order
    ids start at ``offset`` so no two phases share one; ``customer_of(i)`` is the
    Shopify customer id of the i-th order, and with ``first_orders`` Shopify says it is
    that customer's first order (the fixture's customer has ordered three times)."""
    order = json.loads(FIXTURE.read_text())
    # Placed now: an order older than the tenant's history limit is recorded as history
    # and starts no journey (no welcome), which is not the load being measured.
    placed = datetime.now(UTC).isoformat(timespec="seconds")
    order["created_at"] = order["processed_at"] = placed
    if first_orders:
        order["customer"]["orders_count"] = 1
    prefix = str(directory / f"pool-{tag}")
    files = [open(f"{prefix}-{t}.tsv", "w") for t in range(THREADS)]  # noqa: SIM115
    try:
        for i in range(size):
            body = copy.deepcopy(order)
            body["id"] = offset + i
            body["order_number"] = offset + i
            body["customer"]["id"] = customer_of(i)
            raw = json.dumps(body, separators=(",", ":")).encode()
            sig = base64.b64encode(hmac.new(secret.encode(), raw, hashlib.sha256).digest())
            line = f"{tag}-{i}-{uuid.uuid4().hex[:8]}\t{sig.decode()}\t{raw.decode()}\n"
            files[i % THREADS].write(line)
    finally:
        for f in files:
            f.close()
    return prefix


@dataclass
class WrkResult:
    requests: int
    seconds: float
    statuses: dict[int, int]
    socket_errors: dict[str, int]
    wrapped: int
    p50_ms: float
    p99_ms: float
    max_ms: float
    ids: list[str]

    @property
    def ok(self) -> int:
        return sum(c for s, c in self.statuses.items() if 200 <= s < 300)

    @property
    def rate(self) -> float:
        return self.requests / self.seconds

    def line(self, label: str) -> str:
        codes = " ".join(f"{s}:{c}" for s, c in sorted(self.statuses.items()))
        errs = sum(self.socket_errors.values())
        return (
            f"  {label:<34} {self.rate:7.0f} req/s  p50 {self.p50_ms:6.1f} ms  "
            f"p99 {self.p99_ms:7.1f} ms  max {self.max_ms:7.1f} ms  [{codes}]"
            + (f"  socket errors {self.socket_errors}" if errs else "")
            + (
                f"  POOL WRAPPED {self.wrapped}x (ids repeated)"
                if self.wrapped and not label.startswith("floor")
                else ""
            )
        )


def wrk(
    url: str,
    pool: str,
    workdir: Path,
    *,
    shop: str,
    connections: int,
    duration: int,
    rate: int = 0,
    once: bool = False,
) -> WrkResult:
    """Run wrk against ``url``/webhooks/shopify with the pool's bodies; ``rate`` > 0
    paces it (requests/s over all threads); ``once`` sends each thread's share of the pool
    once and stops the thread when all of it is answered (``duration`` is then an
    upper bound)."""
    out = workdir / f"wrk-{uuid.uuid4().hex[:6]}.json"
    env = {
        **os.environ,
        "WRK_POOL": pool,
        "WRK_SHOP": shop,
        "WRK_RATE": str(rate),
        "WRK_THREADS": str(THREADS),
        "WRK_ONCE": "1" if once else "0",
        "WRK_OUT": str(out),
    }
    cmd = ["wrk", f"-t{THREADS}", f"-c{connections}", f"-d{duration}s", "--timeout", "10s"]
    cmd += ["--latency", "-s", str(LUA), url]
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL)
    data = json.loads(out.read_text())
    ids = Path(f"{out}.ids").read_text().split()
    return WrkResult(
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        statuses={int(k): v for k, v in data["statuses"].items()},
        socket_errors={k: v for k, v in data["errors"].items() if v},
        wrapped=data["wrapped"],
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        ids=ids,
    )


def wrk_script(
    url: str,
    script: Path,
    workdir: Path,
    env: dict[str, str],
    *,
    connections: int,
    duration: int,
) -> WrkResult:
    """Run wrk with another Lua ``script`` whose done() writes the same JSON as
    webhooks.lua to WRK_OUT (no delivery ids: ``ids`` is empty)."""
    out = workdir / f"wrk-{uuid.uuid4().hex[:6]}.json"
    cmd = ["wrk", f"-t{THREADS}", f"-c{connections}", f"-d{duration}s", "--timeout", "10s"]
    cmd += ["--latency", "-s", str(script), url]
    run_env = {**os.environ, **env, "WRK_THREADS": str(THREADS), "WRK_OUT": str(out)}
    subprocess.run(cmd, env=run_env, check=True, stdout=subprocess.DEVNULL)
    data = json.loads(out.read_text())
    return WrkResult(
        requests=data["requests"],
        seconds=data["duration_us"] / 1e6,
        statuses={int(k): v for k, v in data["statuses"].items()},
        socket_errors={k: v for k, v in data["errors"].items() if v},
        wrapped=0,
        p50_ms=data["p50_us"] / 1000,
        p99_ms=data["p99_us"] / 1000,
        max_ms=data["max_us"] / 1000,
        ids=[],
    )
