"""Signed Shopify webhooks per second through orders-ingest, against a bare HMAC endpoint.

The load comes from ``wrk`` (a compiled load generator: a Python client saturates long
before the service does and then measures itself). Install it with ``apt-get install
wrk``. Every request is a distinct orders/create webhook (its own order id and webhook
id), pre-signed and replayed by ``bench/webhooks.lua`` (``bench/wrkload.py``).

Starts the real stack (embedded PostgreSQL and broker unless DATABASE_URL /
KAFKA_BOOTSTRAP_SERVERS are set), runs orders-ingest under uvicorn in its own process,
registers a tenant, then, in one run:

1. floor: the same load against ``floor.py`` (reads the body, checks the same HMAC,
   answers 200) under the same uvicorn settings;
2. orders-ingest, as fast as C connections allow: throughput, p50/p99/max, and then the
   deliveries stored against wrk's count of 2xx answers (every delivery id answered
   2xx is looked up: "lost" must be 0);
3. orders-ingest at a constant offered rate (wrk's delay() hook paces each thread):
   1,000/s (target p99 < 50 ms, no error) and 3,000/s (target: no 500; 503 with
   Retry-After allowed);
4. (run last, see the end of main) orders-ingest again with ``--workers 2`` (what a
   second process adds on this machine);
5. orders-ingest as deployed (``--split``, on by default): an api process answering the
   webhooks and a worker process normalizing, as fast as possible and at the constant
   rates;
6. the drain (``--drain N``, 5,000 by default): N webhooks stored while the bench holds
   the applier's advisory lock (the service answers and stores, but applies nothing),
   then the lock released and the time until every one is processed: stored deliveries
   processed per second. Its floor, in the same run: as many deliveries copied to
   another tenant (the lock held again), claimed as the worker claims them (rounds of
   200, ``FOR UPDATE SKIP LOCKED``) and marked processed, nothing else.

After each ingest phase it waits until the stored deliveries are processed and the
outbox is drained, and prints how long that took. Targets are printed, never asserted.

    uv run python bench/ingest/run.py [--duration 15] [--connections 50] [--workers 1,2]
        [--rates 1000,3000] [--no-split] [--drain 5000]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import functools
import os
import sys
import tempfile
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine

from afterglow.devstack import served_loop
from afterglow.devstack.stack import running_stack

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from wrkload import THREADS, WrkResult, floor, free_port, process, require_wrk, write_pool
from wrkload import wrk as run_wrk

HERE = Path(__file__).parent
ADMIN_TOKEN = uuid.uuid4().hex  # a throwaway admin token for this run
TENANT = f"bench-{uuid.uuid4().hex[:6]}"
SHOP = f"{TENANT}.myshopify.com"
wrk = functools.partial(run_wrk, shop=SHOP)


def ingest(
    env: dict[str, str], workers: int, role: str = "all"
) -> contextlib.AbstractContextManager[str]:
    port = free_port()
    cmd = [sys.executable, "-m", "afterglow.kit.cli", "serve", "ingest", "--port", str(port)]
    cmd += ["--host", "127.0.0.1", "--workers", str(workers)]
    return process(cmd, {**env, "SERVICE_ROLE": role}, port, f"orders-ingest ({role})")


@contextlib.contextmanager
def ingest_split(env: dict[str, str]) -> Iterator[str]:
    """As deployed (deploy/README.md): one process answers the webhooks (role api), a
    second one normalizes the stored deliveries (role worker), so the processing no
    longer takes its CPU from the requests' event loop."""
    with ingest(env, 1, "worker"), ingest(env, 1, "api") as url:
        yield url


async def settle(database_url: str, ids: list[str]) -> tuple[int, float | None]:
    """How many of ``ids`` are stored, and how long until every stored delivery of the
    tenant is processed and its events are out of the outbox (None: not within 180 s)."""
    engine = create_async_engine(database_url)
    start = time.perf_counter()
    try:
        async with engine.connect() as conn:
            stored = (
                await conn.execute(
                    text("SELECT count(*) FROM ingest.deliveries WHERE id = ANY(:ids)"),
                    {"ids": ids},
                )
            ).scalar_one()
            await conn.commit()
            while time.perf_counter() - start < 180:
                pending = (
                    await conn.execute(
                        text(
                            "SELECT (SELECT count(*) FROM ingest.deliveries "
                            "        WHERE tenant_id = :t AND status = 'received')"
                            " + (SELECT count(*) FROM ingest.outbox "
                            "    WHERE sent_at IS NULL AND key LIKE :k)"
                        ),
                        {"t": TENANT, "k": f"{TENANT}:%"},
                    )
                ).scalar_one()
                await conn.commit()
                if pending == 0:
                    return int(stored), time.perf_counter() - start
                await asyncio.sleep(0.2)
    finally:
        await engine.dispose()
    return int(stored), None


# What the processing worker's claim costs, with nothing applied: the drain's floor.
_CLAIM_AND_MARK = text(
    """
    UPDATE ingest.deliveries SET status = 'processed'
    WHERE id IN (
        SELECT id FROM ingest.deliveries WHERE status = 'received' AND tenant_id = :t
        ORDER BY received_at, id LIMIT 200 FOR UPDATE SKIP LOCKED
    )
    """
)
_COPY_BACKLOG = text(
    """
    INSERT INTO ingest.deliveries (id, tenant_id, platform, topic, dedupe_key, status,
        received_at, headers, body, event_ids, subjects, replays, attempts)
    SELECT 'floor-' || id, :floor, platform, topic, dedupe_key, 'received', received_at,
        headers, body, event_ids, subjects, 0, 0
    FROM ingest.deliveries WHERE id = ANY(:ids)
    """
)


@contextlib.asynccontextmanager
async def applier_held(database_url: str) -> AsyncIterator[AsyncConnection]:
    """The processing worker's advisory lock held by the bench: every round of the
    service finds another applier and applies nothing until it is released."""
    from afterglow.ingest.processing import APPLIER_LOCK

    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            await conn.execute(select(func.pg_advisory_lock(APPLIER_LOCK)))
            await conn.commit()
            try:
                yield conn
            finally:
                await conn.execute(select(func.pg_advisory_unlock(APPLIER_LOCK)))
                await conn.commit()
    finally:
        await engine.dispose()


async def drained(database_url: str, ids: list[str]) -> tuple[int, float | None]:
    """After the lock is released: how many of ``ids`` were waiting, and the seconds
    until none is ``received`` (None: not within 180 s)."""
    engine = create_async_engine(database_url)
    query = text("SELECT count(*) FROM ingest.deliveries WHERE id = ANY(:ids) AND status = :s")
    try:
        async with engine.connect() as conn:
            start = time.perf_counter()
            while time.perf_counter() - start < 180:
                left = (await conn.execute(query, {"ids": ids, "s": "received"})).scalar_one()
                await conn.commit()
                if left == 0:
                    return len(ids), time.perf_counter() - start
                await asyncio.sleep(0.05)
    finally:
        await engine.dispose()
    return len(ids), None


async def drain_floor(database_url: str, ids: list[str]) -> float:
    """Deliveries/s claimed and marked processed (rounds of 200) on a copy of the
    backlog in another tenant, the service kept away by the lock."""
    floor_tenant = f"{TENANT}-floor"
    async with applier_held(database_url) as conn:
        await conn.execute(_COPY_BACKLOG, {"ids": ids, "floor": floor_tenant})
        await conn.commit()
        start = time.perf_counter()
        while (await conn.execute(_CLAIM_AND_MARK, {"t": floor_tenant})).rowcount:
            await conn.commit()
        await conn.commit()
        return len(ids) / (time.perf_counter() - start)


async def backlog_left(database_url: str) -> int:
    """Deliveries of earlier phases still ``received`` after waiting up to 180 s: the
    drain claims oldest first, so it would be measured behind them."""
    engine = create_async_engine(database_url)
    query = text("SELECT count(*) FROM ingest.deliveries WHERE status = 'received'")
    try:
        async with engine.connect() as conn:
            start = time.perf_counter()
            while (left := (await conn.execute(query)).scalar_one()) and (
                time.perf_counter() - start < 180
            ):
                await conn.commit()
                await asyncio.sleep(0.5)
            return int(left)
    finally:
        await engine.dispose()


def drain_phase(url: str, database_url: str, prefix: str, work: Path, conns: int) -> None:
    left = served_loop.run(backlog_left(database_url))
    if left:
        print(f"  drain: {left} deliveries of earlier phases still waiting; measured behind them")

    async def store_then_drain() -> tuple[WrkResult, int, float | None]:
        async with applier_held(database_url):
            # Each thread stops once its share of the pool is sent (once=True).
            r = await asyncio.to_thread(
                wrk, url, prefix, work, connections=conns, duration=120, once=True
            )
        # Distinct: a connection's last requests may wrap to the pool's start once its
        # thread stops, and are answered as duplicates of what is stored.
        waiting, seconds = await drained(database_url, sorted(set(r.ids)))
        return r, waiting, seconds

    r, waiting, seconds = served_loop.run(store_then_drain())
    floor_rate = served_loop.run(drain_floor(database_url, sorted(set(r.ids))))
    if seconds is None:
        print(f"  drain: {waiting} stored deliveries NOT processed within 180 s")
        return
    rate = waiting / seconds
    print(
        f"  {'drain: stored deliveries processed':<34} {rate:7.0f} /s   ({waiting} in "
        f"{seconds:.1f} s)  floor (claim and mark) {floor_rate:7.0f} /s  "
        f"ratio {rate / floor_rate:.3f}"
    )


def register(url: str) -> str:
    r = httpx.post(
        f"{url}/admin/tenants",
        headers={"Authorization": f"Bearer {ADMIN_TOKEN}"},
        json={
            "tenant_id": TENANT,
            "name": "bench",
            "shopify_shop_domain": SHOP,
            "platforms": ["shopify"],
        },
        timeout=30,
    )
    r.raise_for_status()
    return str(r.json()["secrets"]["shopify"])


def report_ingest(label: str, r: WrkResult, stored: int, settle_s: float | None) -> None:
    print(r.line(label))
    # Distinct: once the pool wraps, a repeated body is answered 2xx "duplicate" and
    # stored once; counting it twice showed stored deliveries as lost.
    answered = len(set(r.ids))
    lost = answered - stored
    drained = (
        f"processed and drained {settle_s:.1f} s after"
        if settle_s is not None
        else ("NOT processed/drained within 180 s")
    )
    print(
        f"  {'':<34} answered 2xx {r.ok} ({answered} distinct deliveries), stored {stored}, "
        f"lost {lost}; {drained}"
    )


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--duration", type=int, default=15, help="seconds per phase")
    parser.add_argument("--connections", type=int, default=50)
    # 4,000/s for 15 s wrapped a pool of 60,000 once the processing stopped taking the CPU.
    parser.add_argument("--pool", type=int, default=90_000, help="signed bodies per phase")
    parser.add_argument("--workers", default="1,2", help="uvicorn worker counts to compare")
    parser.add_argument("--rates", default="1000,3000", help="constant offered rates (req/s)")
    parser.add_argument(
        "--split",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also run orders-ingest as deployed: an api process and a worker process",
    )
    parser.add_argument(
        "--drain", type=int, default=5000, help="stored deliveries to drain (0: no drain phase)"
    )
    args = parser.parse_args()
    require_wrk()
    os.environ.setdefault("AFTERGLOW_ONLY_SERVICES", "ingest")
    workers = [int(w) for w in args.workers.split(",")]
    rates = [int(r) for r in args.rates.split(",") if r]
    conns, secs = args.connections, args.duration
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_stack(Path(tmp), ephemeral=True) as stack,
    ):
        work = Path(tmp)
        env = {
            **stack.env(),
            "INGEST_ADMIN_TOKEN": ADMIN_TOKEN,
            "LOG_LEVEL": "WARNING",
            "RELAY_POLL_INTERVAL_S": "0.2",
        }
        offset = 10_000_000

        def pool(tag: str, size: int) -> str:
            nonlocal offset
            prefix = write_pool(work, tag, secret, size, offset)
            offset += size
            return prefix

        print(
            f"orders-ingest bench: signed Shopify orders/create, wrk -t{THREADS} "
            f"-c{conns} -d{secs}s, {os.cpu_count()} cores"
        )
        with ingest(env, workers[0]) as url:
            secret = register(url)
        with floor(secret) as furl:
            fl = wrk(furl, pool("floor", args.pool), work, connections=conns, duration=secs)
        print(fl.line("floor (bare HMAC endpoint)"))

        def max_rate(url: str, n: int) -> None:
            r = wrk(url, pool(f"w{n}", args.pool), work, connections=conns, duration=secs)
            stored, settle_s = served_loop.run(settle(stack.database_url, r.ids))
            report_ingest(f"orders-ingest, {n} worker(s)", r, stored, settle_s)
            print(
                f"  {'':<34} ratio to floor {r.ok / r.seconds / fl.rate:.3f} "
                "(target >= 0.40, zero lost)"
            )

        with ingest(env, workers[0]) as url:
            max_rate(url, workers[0])
            for rate in rates:
                r = wrk(
                    url,
                    pool(f"r{rate}", int(rate * secs * 1.2)),
                    work,
                    connections=max(conns, rate // 10),
                    duration=secs,
                    rate=rate,
                )
                stored, settle_s = served_loop.run(settle(stack.database_url, r.ids))
                report_ingest(f"orders-ingest at {rate}/s offered", r, stored, settle_s)
                server_errors = sum(c for s, c in r.statuses.items() if s >= 500 and s != 503)
                print(
                    f"  {'':<34} 5xx other than 503: {server_errors}; targets: "
                    + ("p99 < 50 ms, no error" if rate <= 1000 else "no 500")
                )
        if args.drain:
            with ingest(env, 1) as url:
                drain_phase(url, stack.database_url, pool("drain", args.drain), work, conns)
        if args.split:
            with ingest_split(env) as url:
                r = wrk(url, pool("split", args.pool), work, connections=conns, duration=secs)
                stored, settle_s = served_loop.run(settle(stack.database_url, r.ids))
                report_ingest("orders-ingest, api + worker procs", r, stored, settle_s)
                print(
                    f"  {'':<34} ratio to floor {r.ok / r.seconds / fl.rate:.3f} "
                    "(target >= 0.40, zero lost)"
                )
                for rate in rates:
                    r = wrk(
                        url,
                        pool(f"s{rate}", int(rate * secs * 1.2)),
                        work,
                        connections=max(conns, rate // 10),
                        duration=secs,
                        rate=rate,
                    )
                    stored, settle_s = served_loop.run(settle(stack.database_url, r.ids))
                    report_ingest(f"api + worker at {rate}/s offered", r, stored, settle_s)
                    server_errors = sum(c for s, c in r.statuses.items() if s >= 500 and s != 503)
                    print(f"  {'':<34} 5xx other than 503: {server_errors}")
        # More uvicorn workers last: once a `--workers 2` process is stopped, the next
        # ingest process started on the embedded broker waited in its consumer groups'
        # JoinGroup for minutes (past the 90 s start bound, even with a 15 s rebalance
        # timeout): the drain and split phases after it never printed a figure.
        for n in workers[1:]:
            with ingest(env, n) as url:
                max_rate(url, n)


if __name__ == "__main__":
    main()
