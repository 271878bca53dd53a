"""Signed Shopify webhooks per second through orders-ingest, against a bare endpoint.

Starts the real stack (embedded PostgreSQL and broker unless DATABASE_URL /
KAFKA_BOOTSTRAP_SERVERS are set), runs orders-ingest under uvicorn in its own process,
registers a tenant, then posts N signed orders/create webhooks (each a new order and
webhook id) with C concurrent clients and prints deliveries/s and p50/p99 latency. The
floor is the same load against ``GET /healthz`` of the same process (HTTP + framework,
no database). It also prints how long the outbox relay took to publish the backlog.

    uv run python bench/ingest/run.py [--requests 2000] [--concurrency 50]
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import copy
import hashlib
import hmac
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from pathlib import Path

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from afterglow.devstack.stack import running_stack

FIXTURE = Path(__file__).parents[2] / "services/orders-ingest/tests/fixtures/shopify_order.json"
ADMIN_TOKEN = uuid.uuid4().hex  # a throwaway admin token for this run
TENANT = f"bench-{uuid.uuid4().hex[:6]}"
SHOP = f"{TENANT}.myshopify.com"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextlib.contextmanager
def service(env: dict[str, str], port: int) -> Iterator[str]:
    cmd = [sys.executable, "-m", "afterglow.kit.cli", "serve", "ingest", "--port", str(port)]
    cmd += ["--host", "127.0.0.1"]
    proc = subprocess.Popen(cmd, env={**os.environ, **env})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            raise RuntimeError("orders-ingest did not start")
        yield url
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def signed(secret: str, order: dict, i: int) -> tuple[bytes, dict[str, str]]:
    body = copy.deepcopy(order)
    body["id"] = 10_000_000 + i
    body["customer"]["id"] = 500_000 + i % 5000
    raw = json.dumps(body).encode()
    sig = base64.b64encode(hmac.new(secret.encode(), raw, hashlib.sha256).digest()).decode()
    return raw, {
        "Content-Type": "application/json",
        "X-Shopify-Topic": "orders/create",
        "X-Shopify-Shop-Domain": SHOP,
        "X-Shopify-Webhook-Id": str(uuid.uuid4()),
        "X-Shopify-Hmac-Sha256": sig,
    }


async def load(
    n: int, concurrency: int, call: Callable[[int], Awaitable[httpx.Response]]
) -> tuple[float, list[float], int]:
    """Runs n calls with `concurrency` workers; returns (wall s, latencies s, errors)."""
    latencies: list[float] = []
    errors = 0
    counter = iter(range(n))

    async def worker() -> None:
        nonlocal errors
        for i in counter:
            t0 = time.perf_counter()
            r = await call(i)
            latencies.append(time.perf_counter() - t0)
            if r.status_code >= 300:
                errors += 1

    start = time.perf_counter()
    await asyncio.gather(*(worker() for _ in range(concurrency)))
    return time.perf_counter() - start, latencies, errors


def pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1000


async def bench(url: str, database_url: str, n: int, concurrency: int) -> None:
    order = json.loads(FIXTURE.read_text())
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
    async with httpx.AsyncClient(base_url=url, limits=limits, timeout=30) as client:
        r = await client.post(
            "/admin/tenants",
            headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
            json={
                "tenant_id": TENANT,
                "name": "bench",
                "shopify_shop_domain": SHOP,
                "platforms": ["shopify"],
            },
        )
        r.raise_for_status()
        secret = r.json()["secrets"]["shopify"]
        bodies = [signed(secret, order, i) for i in range(n + 100)]

        async def webhook(i: int) -> httpx.Response:
            raw, headers = bodies[i]
            return await client.post("/webhooks/shopify", content=raw, headers=headers)

        async def warm(i: int) -> httpx.Response:
            return await webhook(n + i)

        async def healthz(_: int) -> httpx.Response:
            return await client.get("/healthz")

        await load(100, concurrency, warm)
        await load(200, concurrency, healthz)
        # Floor first: afterwards the relay is still draining the webhooks' events and
        # would slow the floor down.
        floor_wall, floor_lat, _ = await load(n, concurrency, healthz)
        wall, lat, errors = await load(n, concurrency, webhook)
        sent_done = time.perf_counter()

    engine = create_async_engine(database_url)
    drain_s = None
    async with engine.connect() as conn:
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            unsent = (
                await conn.execute(
                    text(
                        "SELECT count(*) FROM ingest.outbox WHERE sent_at IS NULL AND key LIKE :k"
                    ),
                    {"k": f"{TENANT}:%"},
                )
            ).scalar_one()
            await conn.commit()
            if unsent == 0:
                drain_s = time.perf_counter() - sent_done
                break
            await asyncio.sleep(0.1)
    await engine.dispose()

    rate, floor_rate = n / wall, n / floor_wall
    print(f"orders-ingest bench: {n} requests, concurrency {concurrency}, 1 uvicorn worker")
    print(
        f"  signed Shopify webhooks: {rate:8.0f} deliveries/s  "
        f"p50 {pct(lat, 0.50):6.1f} ms  p99 {pct(lat, 0.99):6.1f} ms  errors {errors}"
    )
    print(
        f"  floor GET /healthz:      {floor_rate:8.0f} requests/s    "
        f"p50 {pct(floor_lat, 0.50):6.1f} ms  p99 {pct(floor_lat, 0.99):6.1f} ms"
    )
    print(f"  ratio webhook/floor throughput: {rate / floor_rate:.2f}")
    print(f"  mean webhook latency {statistics.mean(lat) * 1000:.1f} ms")
    if drain_s is not None:
        print(f"  outbox drained to the broker {drain_s:.2f} s after the last 2xx")
    else:
        print("  outbox NOT drained within 120 s")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--requests", type=int, default=2000)
    parser.add_argument("--concurrency", type=int, default=50)
    args = parser.parse_args()
    os.environ.setdefault("AFTERGLOW_ONLY_SERVICES", "ingest")
    with tempfile.TemporaryDirectory() as tmp, running_stack(Path(tmp), ephemeral=True) as stack:
        env = {
            **stack.env(),
            "INGEST_ADMIN_TOKEN": ADMIN_TOKEN,
            "LOG_LEVEL": "WARNING",
            "RELAY_POLL_INTERVAL_S": "0.2",
        }
        with service(env, free_port()) as url:
            asyncio.run(bench(url, stack.database_url, args.requests, args.concurrency))


if __name__ == "__main__":
    main()
