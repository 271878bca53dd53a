"""The whole stack as ``make dev`` runs it: signed orders in, welcome messages out.

Every service runs as its own process with its default settings (poll intervals,
pools, batch sizes), on the embedded PostgreSQL and broker unless DATABASE_URL /
KAFKA_BOOTSTRAP_SERVERS are set. One tenant, its messaging endpoint a local receiver
that checks each message's Standard Webhooks signature and notes when the welcome
arrived. Signed Shopify ``orders/create`` webhooks come from ``wrk`` (``bench/wrkload.py``),
each order a new customer, so each must become exactly one welcome message.

Printed, each phase in one table:

1. floor: the bare HMAC endpoint under the same uvicorn settings and the same wrk load
   (what one core answers when nothing is stored);
2. steady offered rates (``--rates``, paced by wrk): the end-to-end rate (welcomes
   received per second from the first request to the last welcome), the rate held
   while loaded (welcomes received per second from ``SETTLE_S`` after the first request
   to the last request) and how long the last orders took to drain, welcome latency
   p50/p99/max (the delivery's ``received_at`` in ingest to the receiver's clock), and
   whether the stack kept up. Sustained: the best steady phase that drained within
   ``KEPT_UP_DRAIN_S``, at the rate it held while loaded;
3. a burst of ``--burst`` orders as fast as wrk sends them: the seconds until the last
   welcome was received;
4. per phase, CPU milliseconds per order of each service's processes, PostgreSQL and
   the broker (from /proc), net of what each burns idle (measured for 10 s first), and
   the sum;
5. per phase, where a welcome's latency goes, hop by hop (p50/p99 of each hop over the
   phase's rows, from the timestamps the stack already keeps): a delivery waiting for
   ingest's processing worker, each outbox row waiting for its relay (``created_at`` to
   ``sent_at``), each event waiting in the broker and the consumer's queue (the outbox's
   ``sent_at`` to the inbox's ``received_at`` of each consumer group), a message waiting
   for the dispatcher and its send.

Targets (issue: Throughput), printed next to the figures, never asserted: >= 200 orders/s
sustained end to end; welcome p99 < 1 s at 50 orders/s; a 1,000-order burst absorbed in
15 s; <= 10 ms of CPU per order over every service.

    uv run python bench/system/run.py [--rates 50,100,200] [--duration 20] [--burst 1000]
"""

from __future__ import annotations

import argparse
import asyncio
import bisect
import functools
import os
import statistics
import sys
import tempfile
import threading
import time
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from afterglow.devstack import served_loop
from afterglow.devstack.demo import SERVICES, Received, Receiver, Scenario
from afterglow.devstack.services import RunningServices, running_services
from afterglow.devstack.stack import running_stack

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from wrkload import WrkResult, floor, require_wrk, write_pool, wrk

ADMIN_TOKEN = uuid.uuid4().hex  # a throwaway admin token for this run
TICK = os.sysconf("SC_CLK_TCK")
DRAIN_TIMEOUT_S = 300.0
# A paced phase's steady state starts this long after its first request (the pipeline
# fills: a welcome takes ~0.5 s at 50/s); its welcomes/s from then to the last request
# is the rate it held.
SETTLE_S = 5.0
# A phase the stack kept up with drains its last orders in about one welcome latency;
# one that fell behind drains a backlog for longer.
KEPT_UP_DRAIN_S = 2.0


# --- CPU from /proc --------------------------------------------------------------------


def _stat(pid: int) -> tuple[int, str, float] | None:
    """(parent pid, command name, CPU seconds used) of a process, None once it is gone."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    name = raw[raw.index("(") + 1 : raw.rindex(")")]
    fields = raw[raw.rindex(")") + 2 :].split()
    # fields[1] is ppid; utime and stime are fields 14 and 15 of stat (1-based).
    return int(fields[1]), name, (int(fields[11]) + int(fields[12])) / TICK


def _cmdline(pid: int) -> str:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ").decode()
    except OSError:
        return ""


def cpu_by_owner(services: RunningServices, state: Path) -> dict[str, float]:
    """CPU seconds used so far by each service (its process and descendants, e.g.
    uvicorn workers), by the PostgreSQL this bench started (pg_ctl daemonizes it: found
    by its data folder under ``state``) and by the broker (a child of this process). The
    machine may run other brokers and databases; they are not counted."""
    procs = {}
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit() and (s := _stat(int(entry.name))) is not None:
            procs[int(entry.name)] = s
    owner = {p.proc.pid: name for name, ps in services.processes.items() for p in ps}
    for pid, (_, comm, _) in procs.items():
        if comm.startswith("postgres") and str(state) in _cmdline(pid):
            owner[pid] = "postgresql"
    me = os.getpid()

    def owner_of(pid: int, comm: str) -> str | None:
        for _ in range(64):
            if pid in owner:
                return owner[pid]
            if pid == me:
                if "tansu" in comm or comm == "java":
                    return "broker"
                return None
            if pid not in procs:
                return None
            pid = procs[pid][0]
        return None

    out: dict[str, float] = {}
    for pid, (_, comm, cpu) in procs.items():
        if (who := owner_of(pid, comm)) is not None:
            out[who] = out.get(who, 0.0) + cpu
    return out


# --- the receiver's clock --------------------------------------------------------------


@dataclass
class Welcomes:
    """When the first welcome of each customer arrived (wall clock, as ingest's
    ``received_at``)."""

    at: dict[str, float] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __call__(self, message: Received) -> None:
        if message.kind == "welcome":
            with self.lock:
                self.at.setdefault(message.customer, time.time())

    def of(self, customers: set[str]) -> dict[str, float]:
        with self.lock:
            return {c: self.at[c] for c in customers if c in self.at}


# --- one phase -------------------------------------------------------------------------


@dataclass
class Phase:
    label: str
    load: WrkResult
    started: float
    accepted: int
    welcomed: int
    last_welcome: float | None
    latencies_ms: list[float]
    welcome_times: list[float]  # the receiver's clock, sorted
    sending_ended: float  # when wrk returned
    paced: bool  # a steady offered rate (not a burst, which wrk sends once, then idles)
    cpu_ms_per_order: dict[str, float]  # net of what each process burns idle
    hops: list[tuple[str, list[float]]]

    @property
    def end_to_end_rate(self) -> float:
        if not self.last_welcome:
            return 0.0
        return self.welcomed / max(self.last_welcome - self.started, 1e-9)

    @property
    def in_load_rate(self) -> float | None:
        """Welcomes received per second while the load ran, from ``SETTLE_S`` after its
        first request to its last: the rate the stack holds in its steady state. The
        end-to-end rate above also counts the last order's own latency (the drain), so a
        stack that keeps up with 200/s for 20 s reads ~190/s there. None for a phase
        too short to have a steady state (under ``SETTLE_S`` + 1 s)."""
        lo, hi = self.started + SETTLE_S, self.sending_ended
        if hi - lo < 1.0:
            return None
        times = self.welcome_times
        return (bisect.bisect_right(times, hi) - bisect.bisect_left(times, lo)) / (hi - lo)

    @property
    def drain_s(self) -> float:
        """From the last request to the last welcome: a stack that kept up drains in
        about one welcome latency; one that fell behind, in its backlog."""
        return (self.last_welcome or self.sending_ended) - self.sending_ended

    def pct(self, q: float) -> float:
        if not self.latencies_ms:
            return float("nan")
        if len(self.latencies_ms) == 1:
            return self.latencies_ms[0]
        return statistics.quantiles(self.latencies_ms, n=1000, method="inclusive")[
            min(int(q * 1000) - 1, 998)
        ]


async def received_at(database_url: str, lo: int, hi: int) -> dict[str, float]:
    """Customer id -> when ingest stored the delivery of their order, for the customers
    ``lo``..``hi`` (one query: the bench's orders have one customer each)."""
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            rows = await conn.execute(
                text(
                    "SELECT c, extract(epoch FROM min(received_at)) FROM ("
                    "  SELECT (convert_from(body, 'UTF8')::jsonb -> 'customer' ->> 'id')::bigint"
                    "         AS c, received_at FROM ingest.deliveries"
                    "   WHERE platform = 'shopify' AND topic = 'orders/create') d"
                    " WHERE c BETWEEN :lo AND :hi GROUP BY c"
                ),
                {"lo": lo, "hi": hi},
            )
            return {str(c): float(t) for c, t in rows}
    finally:
        await engine.dispose()


async def run_phase(
    label: str,
    *,
    url: str,
    shop: str,
    secret: str,
    work: Path,
    offset: int,
    size: int,
    connections: int,
    duration: int,
    rate: int,
    once: bool,
    database_url: str,
    services: RunningServices,
    welcomes: Welcomes,
    idle: dict[str, float],
) -> Phase:
    # One new customer per order: each order must become one welcome.
    tag = label.replace(" ", "-").replace("/", "")
    pool = write_pool(work, tag, secret, size, offset, lambda i: offset + i, first_orders=True)
    cpu0, t0 = cpu_by_owner(services, work), time.monotonic()
    started = time.time()
    load = await asyncio.to_thread(
        wrk,
        url,
        pool,
        work,
        shop=shop,
        connections=connections,
        duration=duration,
        rate=rate,
        once=once,
    )
    sending_ended = time.time()
    stored = await received_at(database_url, offset, offset + size - 1)
    customers = set(stored)
    deadline = time.monotonic() + DRAIN_TIMEOUT_S
    seen = welcomes.of(customers)
    while len(seen) < len(customers) and time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        seen = welcomes.of(customers)
    cpu1, seconds = cpu_by_owner(services, work), time.monotonic() - t0
    accepted = max(len(customers), 1)
    hops = await hop_latencies(database_url, started - 1.0, time.time())
    return Phase(
        label=label,
        load=load,
        started=started,
        accepted=len(customers),
        welcomed=len(seen),
        last_welcome=max(seen.values()) if seen else None,
        latencies_ms=sorted((seen[c] - stored[c]) * 1000 for c in seen),
        welcome_times=sorted(seen.values()),
        sending_ended=sending_ended,
        paced=rate > 0,
        cpu_ms_per_order={
            who: (cpu1.get(who, 0.0) - cpu0.get(who, 0.0) - idle.get(who, 0.0) * seconds)
            * 1000
            / accepted
            for who in sorted(cpu1)
        },
        hops=hops,
    )


# The hops of a welcome that are not outbox-to-inbox, as SQL over the timestamps the
# stack keeps. Each yields one row per item that made the hop inside the phase's
# window, in milliseconds. The timestamps are each transaction's now(), so a hop ends
# when the next step's transaction began (a batch's apply time shows in the hop after).
FIXED_HOPS: list[tuple[str, str]] = [
    (
        "ingest: delivery stored -> processed (order.placed in outbox)",
        "SELECT (extract(epoch FROM o.created_at - d.received_at) * 1000) AS ms"
        "  FROM ingest.deliveries d JOIN ingest.outbox o ON o.event_id = ANY(d.event_ids)"
        " WHERE d.received_at BETWEEN :t0 AND :t1 AND o.event_type LIKE '%.order.placed.%'",
    ),
    (
        "messaging: message created -> claimed by the dispatcher",
        "SELECT (extract(epoch FROM last_attempt_at - created_at) * 1000) AS ms"
        "  FROM journeys.messages"
        " WHERE created_at BETWEEN :t0 AND :t1 AND sent_at IS NOT NULL",
    ),
    (
        "messaging: claimed -> the send's outcome settling (sent_at)",
        "SELECT (extract(epoch FROM sent_at - last_attempt_at) * 1000) AS ms"
        "  FROM journeys.messages"
        " WHERE created_at BETWEEN :t0 AND :t1 AND sent_at IS NOT NULL",
    ),
]


async def hop_latencies(database_url: str, t0: float, t1: float) -> list[tuple[str, list[float]]]:
    """(hop, sorted milliseconds) for every hop a row made between ``t0`` and ``t1``
    (epoch seconds). Outboxes and inboxes are found in every schema that has them, so a
    consumer group added later shows up without touching this."""
    engine = create_async_engine(database_url)
    window = {"t0": datetime.fromtimestamp(t0, UTC), "t1": datetime.fromtimestamp(t1, UTC)}
    out: dict[str, list[float]] = {}
    try:
        async with engine.connect() as conn:
            schemas = [
                r[0]
                for r in await conn.execute(
                    text(
                        "SELECT table_schema FROM information_schema.tables"
                        " WHERE table_name = 'outbox' ORDER BY 1"
                    )
                )
            ]
            for label, sql in FIXED_HOPS:
                rows = await conn.execute(text(sql), window)
                out[label] = [float(r[0]) for r in rows]
            for schema in schemas:  # names from the catalogue, not from input
                rows = await conn.execute(
                    text(
                        f"SELECT event_type, extract(epoch FROM sent_at - created_at) * 1000"  # noqa: S608
                        f"  FROM {schema}.outbox WHERE created_at BETWEEN :t0 AND :t1"
                        f"   AND sent_at IS NOT NULL"
                    ),
                    window,
                )
                for event_type, ms in rows:
                    key = f"{schema}: outbox {event_type} created -> relayed"
                    out.setdefault(key, []).append(float(ms))
                for inbox_schema in schemas:
                    rows = await conn.execute(
                        text(
                            f"SELECT i.consumer, o.event_type,"  # noqa: S608
                            f"       extract(epoch FROM i.received_at - o.sent_at) * 1000"
                            f"  FROM {schema}.outbox o JOIN {inbox_schema}.inbox i"
                            f"    ON i.event_id = o.event_id"
                            f" WHERE o.created_at BETWEEN :t0 AND :t1"
                        ),
                        window,
                    )
                    for consumer, event_type, ms in rows:
                        key = f"{schema} {event_type} -> {consumer}: relayed -> batch began"
                        out.setdefault(key, []).append(float(ms))
    finally:
        await engine.dispose()
    return [(k, sorted(v)) for k, v in out.items() if v]


def print_hops(hops: list[tuple[str, list[float]]]) -> None:
    def pct(v: list[float], q: float) -> float:
        return v[min(int(q * len(v)), len(v) - 1)]

    print(f"  {'':<22} where the time goes (p50 / p99 ms, rows):")
    for label, v in hops:
        print(f"  {'':<24} {pct(v, 0.5):8.0f} {pct(v, 0.99):8.0f} {len(v):7d}  {label}")


def print_phase(p: Phase, floor_rate: float) -> None:
    lost = p.accepted - p.welcomed
    print(
        f"  {p.label:<22} offered {p.load.rate:6.0f}/s  answered 2xx {p.load.ok:5d}  "
        f"welcomed {p.welcomed:5d}{f' (MISSING {lost})' if lost else ''}  "
        f"end to end {p.end_to_end_rate:6.1f}/s ({p.end_to_end_rate / floor_rate:.4f} of floor)"
    )
    print(
        f"  {'':<22} welcome latency p50 {p.pct(0.5):8.0f} ms  p99 {p.pct(0.99):8.0f} ms  "
        f"max {max(p.latencies_ms, default=float('nan')):8.0f} ms"
        + (
            f"  last welcome {p.last_welcome - p.started:6.1f} s after the first request"
            if p.last_welcome
            else ""
        )
    )
    if p.paced:
        in_load = p.in_load_rate
        held = "   n/a" if in_load is None else f"{in_load:6.1f}"
        print(
            f"  {'':<22} while loaded {held} welcomes/s "
            f"(from {SETTLE_S:.0f} s after the first request to the last)  "
            f"drained {p.drain_s:5.1f} s after the last request"
        )
    # The senders' side: how long a webhook waited for its answer (a 2xx means stored).
    print(
        f"  {'':<22} answer latency  p50 {p.load.p50_ms:8.0f} ms  p99 {p.load.p99_ms:8.0f} ms  "
        f"max {p.load.max_ms:8.0f} ms"
    )
    cpu = "  ".join(f"{k} {v:.1f}" for k, v in p.cpu_ms_per_order.items())
    total = sum(p.cpu_ms_per_order.values())
    print(f"  {'':<22} CPU ms/order, net of idle: {cpu}  = {total:.1f} (target <= 10)")
    print_hops(p.hops)


async def idle_cpu(services: RunningServices, work: Path, seconds: float) -> dict[str, float]:
    """CPU seconds per second each process burns with no load (pollers, timers, the
    broker's own housekeeping): subtracted from each phase, so that a slow phase is not
    charged for the time it took."""
    cpu0, t0 = cpu_by_owner(services, work), time.monotonic()
    await asyncio.sleep(seconds)
    cpu1, elapsed = cpu_by_owner(services, work), time.monotonic() - t0
    return {who: max(cpu1[who] - cpu0.get(who, 0.0), 0.0) / elapsed for who in cpu1}


async def story(
    args: argparse.Namespace,
    urls: dict[str, list[str]],
    database_url: str,
    services: RunningServices,
    work: Path,
) -> None:
    welcomes = Welcomes()
    with Receiver(on_message=welcomes).running() as receiver:
        async with Scenario(urls, ADMIN_TOKEN, receiver, timeout=120) as sc:
            await sc.register_tenant()
            await sc.call(
                "PUT",
                "journeys",
                "/v1/messaging/endpoint",
                json={"url": receiver.url, "secret": receiver.secret},
            )
            # Welcome messages at any hour: quiet hours would defer them and measure the
            # clock, not the stack. The default journey is left as it is.
            await sc.call(
                "PUT",
                "journeys",
                "/v1/messaging/settings",
                json={"quiet_hours_start": "00:00", "quiet_hours_end": "00:00"},
            )
            secret, shop, ingest = sc.shopify_secret, sc.shop_domain, sc.url("ingest")
            idle = await idle_cpu(services, work, 10.0)
            print(
                "  idle CPU ms/s: "
                + "  ".join(f"{k} {v * 1000:.1f}" for k, v in sorted(idle.items()))
            )
            with floor(secret) as furl:
                pool = write_pool(work, "floor", secret, 60_000, 1)
                fl = await asyncio.to_thread(
                    wrk,
                    furl,
                    pool,
                    work,
                    shop=shop,
                    connections=args.connections,
                    duration=10,
                )
            print(fl.line("floor (bare HMAC endpoint)"))
            offset = 70_000_000
            phases = []
            phase = functools.partial(
                run_phase,
                url=ingest,
                shop=shop,
                secret=secret,
                work=work,
                database_url=database_url,
                services=services,
                welcomes=welcomes,
                idle=idle,
            )
            for rate in args.rates:
                size = int(rate * args.duration * 1.1) + 10
                p = await phase(
                    f"steady {rate}/s",
                    offset=offset,
                    size=size,
                    # Enough connections that the pace does not hang on the answers:
                    # wrk sends a connection's next request only once its last one
                    # was answered, so 10 at 200/s capped the offered rate at
                    # 10 / answer time (172-178/s offered once answers took ~0.4 s).
                    connections=max(10, rate // 5),
                    duration=args.duration,
                    rate=rate,
                    once=False,
                )
                offset += size
                print_phase(p, fl.rate)
                phases.append(p)
            if args.burst > 0:  # an empty pool is an error to wrk's Lua
                p = await phase(
                    f"burst {args.burst}",
                    offset=offset,
                    size=args.burst,
                    connections=args.connections,
                    duration=60,
                    rate=0,
                    once=True,
                )
                print_phase(p, fl.rate)
                phases.append(p)
            best = max((q.end_to_end_rate for q in phases), default=0.0)
            # Sustained: the best paced phase the stack kept up with (drained within
            # KEPT_UP_DRAIN_S of its last request), at the rate it held while loaded.
            held = [
                r
                for q in phases
                if q.paced and q.drain_s <= KEPT_UP_DRAIN_S and (r := q.in_load_rate) is not None
            ]
            sustained = f"{max(held):.1f} orders/s" if held else "n/a (no phase long enough)"
            print(
                f"  end to end (best phase, drain included): {best:.1f} orders/s "
                f"({best / fl.rate:.4f} of the floor's {fl.rate:.0f}/s)"
            )
            print(
                f"  sustained (best steady phase drained within {KEPT_UP_DRAIN_S:.0f} s, "
                f"welcomes/s while loaded): {sustained}; target >= 200/s; "
                f"welcome p99 at 50/s target < 1,000 ms; burst target <= 15 s"
            )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rates", default="50,100,200", help="steady offered rates (orders/s)")
    parser.add_argument("--duration", type=int, default=20, help="seconds per steady phase")
    parser.add_argument("--burst", type=int, default=1000, help="orders in the burst (0: none)")
    parser.add_argument("--connections", type=int, default=50)
    args = parser.parse_args()
    args.rates = [int(r) for r in args.rates.split(",") if r]
    require_wrk()
    print(
        f"system bench: every service as a process with its defaults, one tenant, "
        f"{os.cpu_count()} cores; wrk-driven signed orders/create, one customer per order"
    )
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        with (
            running_stack(work / "stack", ephemeral=True) as stack,
            running_services(
                stack,
                work / "logs",
                names=list(SERVICES),
                extra_env={"INGEST_ADMIN_TOKEN": ADMIN_TOKEN, "LOG_LEVEL": "WARNING"},
                ready_timeout=300,
            ) as services,
        ):
            urls = {n: [p.url for p in procs] for n, procs in services.processes.items()}
            served_loop.run(story(args, urls, stack.database_url, services, work))


if __name__ == "__main__":
    main()
