"""Loyalty's throughput on the real stack, each figure next to its floor in the same run.

Real stack (embedded PostgreSQL + broker via running_stack). Prints:

* events/s the ledger consumer applies (order.placed then order.fulfilled of many
  customers), the app in-process with its full lifespan, next to the bare
  batch-consumer floor on the same records (bench/consumer_rate.py);
* redemptions/s under ``wrk`` (a compiled load generator: a Python client saturates
  near a few hundred requests/s and then measures itself; ``apt-get install wrk``)
  against loyalty under uvicorn (``afterglow serve loyalty``), every request a distinct
  redemption with its own Idempotency-Key (bench/loyalty/redemptions.lua), spread over
  ``--accounts`` accounts and then all on one hot account (its row lock serializes
  them), for ``--duration`` seconds at ``--connections`` connections:
  - before: ``LOYALTY_REDEEM_GROUP_COMMIT=false``, one transaction per request (the
    path before the group commit);
  - after: the group commit (afterglow.loyalty.redemptions), under ``--workers 1``
    and then ``--workers 2`` (two uvicorn processes behind one port; the summary
    prints what the second adds);
  after each phase: the 201s answered against the redemptions stored, and the ledger
  checked (no account below zero, every balance the sum of its entries);
* floor 1: a bare endpoint at the same path (parses the same body, answers 201; no
  auth lookup, no database: bench/loyalty/floor.py) under the same uvicorn settings and
  the same wrk load;
* floor 2: a bare "BEGIN; SELECT ... FOR UPDATE; UPDATE; COMMIT" loop on the same DB,
  spread over the same accounts.

Targets (issue 18): >= 1,500 redemptions/s spread, >= 500/s on one hot account, never
overdrawn. Printed, never asserted.

Usage: uv run python bench/loyalty/run.py [--events 4000] [--duration 10]
       [--connections 50] [--accounts 200] [--no-before] [--workers 1 2]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import re
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, create_async_engine

from afterglow.devstack import served_loop
from afterglow.devstack.stack import running_stack
from afterglow.events import CloudEvent, KafkaConfig
from afterglow.events.catalog import CustomerInfo, Money, OrderFulfilled, OrderPlaced

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from consumer_rate import floor_rate, report, service_consumer, service_rate
from wrkload import (
    PIDS,
    THREADS,
    WrkResult,
    cpu_seconds,
    free_port,
    process,
    require_wrk,
    wrk_script,
)

HERE = Path(__file__).parent
LUA = HERE / "redemptions.lua"
PRICE = 500  # five-off, the reward every request redeems


def ledger_events(tenant: str, n: int, customers: int = 1000) -> list[CloudEvent]:
    """n/2 orders placed, then the same orders fulfilled (earn, then release)."""
    now = datetime.now(UTC)
    orders = n // 2

    def ev(data, i):  # type: ignore[no-untyped-def]
        return CloudEvent.new(data, tenant_id=tenant, subject=f"c{i % customers}", source="bench")

    placed = [
        ev(
            OrderPlaced(
                order_id=f"o{i}",
                platform="api",
                placed_at=now,
                customer=CustomerInfo(email=f"c{i % customers}@example.com"),
                total=Money(amount=5000, currency="USD"),
            ),
            i,
        )
        for i in range(orders)
    ]
    fulfilled = [ev(OrderFulfilled(order_id=f"o{i}", fulfilled_at=now), i) for i in range(orders)]
    return placed + fulfilled


async def timed(n: int, concurrency: int, make) -> float:  # type: ignore[no-untyped-def]
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem:
            await make(i)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return n / (time.perf_counter() - t0)


async def consumer_figure(events: int) -> None:
    """The ledger consumer in-process (its full lifespan), next to the bare consumer."""
    from afterglow.loyalty.app import create_app
    from afterglow.loyalty.settings import LoyaltySettings

    app = create_app(LoyaltySettings(log_level="WARNING"))
    tenant = f"bench-{uuid.uuid4().hex[:8]}"
    async with app.router.lifespan_context(app):
        rt = app.state.runtime
        settings = rt.settings
        kafka = KafkaConfig(settings.kafka_bootstrap_servers, settings.kafka_enable_idempotence)
        ledger = service_consumer(rt, "ledger")
        # Warm-up: plans, pool, the group's assignment.
        await service_rate(rt, ledger, ledger_events(f"warm-{tenant}", 200))
        rate = await service_rate(rt, ledger, ledger_events(f"ev-{tenant}", events))
        floor = await floor_rate(rt, kafka, ledger_events(f"floor-{tenant}", events))
        report("loyalty ledger consumer (order.placed + order.fulfilled)", events, rate, floor)


@contextlib.contextmanager
def loyalty(env: dict[str, str], grouped: bool, workers: int = 1) -> Iterator[str]:
    port = free_port()
    cmd = [sys.executable, "-m", "afterglow.kit.cli", "serve", "loyalty", "--port", str(port)]
    cmd += ["--host", "127.0.0.1", "--workers", str(workers)]
    flag = {"LOYALTY_REDEEM_GROUP_COMMIT": "true" if grouped else "false"}
    with process(cmd, {**env, **flag}, port, "loyalty") as url:
        wait_for_workers(url, workers)
        yield url


def wait_for_workers(url: str, workers: int) -> None:
    """Until ``workers`` processes answer: /healthz answers as soon as the first has
    started, and a worker still in its start-up accepts no connection, so a phase
    begun then would measure one worker. Each process counts the /metrics requests it
    answered before (its own registry): one process never reports the same count
    twice, so a count seen ``workers`` times means as many processes answer (their
    start times are no help: workers spawned together share one)."""
    seen: dict[float, int] = {}
    deadline = time.monotonic() + 180
    while max(seen.values(), default=0) < workers:
        if time.monotonic() > deadline:
            raise RuntimeError(f"fewer than {workers} loyalty workers answered")
        body = httpx.get(f"{url}/metrics", timeout=5).text  # a new connection each time
        count = re.search(_METRICS_SERVED, body, re.MULTILINE)
        n = float(count.group(1)) if count else 0.0
        seen[n] = seen.get(n, 0) + 1
        time.sleep(0.05)


_METRICS_SERVED = (
    r'^afterglow_http_request_duration_seconds_count\{[^}]*route="/metrics"[^}]*\} (\S+)$'
)


def floor_endpoint() -> contextlib.AbstractContextManager[str]:
    """bench/loyalty/floor.py under the uvicorn settings ``afterglow serve`` uses."""
    port = free_port()
    cmd = [sys.executable, "-m", "uvicorn", "floor:create_app", "--factory"]
    cmd += ["--app-dir", str(HERE), "--host", "127.0.0.1", "--port", str(port)]
    cmd += ["--log-level", "warning", "--no-access-log", "--timeout-graceful-shutdown", "20"]
    return process(cmd, {}, port, "floor endpoint")


async def new_key(database_url: str, tenant: str) -> str:
    from afterglow.kit.auth import ApiKeyStore
    from afterglow.loyalty.models import api_keys

    engine = create_async_engine(database_url)
    try:
        async with AsyncSession(engine) as session, session.begin():
            key = await ApiKeyStore(api_keys).create(
                session, tenant, ["loyalty:read", "loyalty:write"]
            )
    finally:
        await engine.dispose()
    return key


def credit(url: str, key: str, points: dict[str, int]) -> None:
    h = {"Authorization": f"Bearer {key}"}
    with httpx.Client(base_url=url, headers=h, timeout=30) as client:
        for customer, amount in points.items():
            r = client.post(
                f"/v1/accounts/{customer}/adjustments", json={"points": amount, "reason": "bench"}
            )
            r.raise_for_status()


async def ledger_check(database_url: str, tenant: str) -> tuple[int, int, int]:
    """(redemptions stored, accounts below zero, accounts whose balance is not the sum
    of their entries) of the tenant."""
    engine = create_async_engine(database_url)
    try:
        async with engine.connect() as conn:
            # One statement for the three counts (once per phase, after the load).
            stored, negative, wrong = (
                await conn.execute(
                    text(
                        "SELECT (SELECT count(*) FROM loyalty.redemptions WHERE tenant_id = :t),"
                        " (SELECT count(*) FROM loyalty.accounts WHERE tenant_id = :t"
                        "  AND available < 0),"
                        " (SELECT count(*) FROM loyalty.accounts a WHERE a.tenant_id = :t"
                        "  AND a.available <> (SELECT coalesce(sum(e.available_delta), 0)"
                        "  FROM loyalty.entries e WHERE e.tenant_id = a.tenant_id"
                        "  AND e.customer_id = a.customer_id))"
                    ),
                    {"t": tenant},
                )
            ).one()
    finally:
        await engine.dispose()
    return int(stored), int(negative), int(wrong)


def redemption_phase(
    url: str,
    database_url: str,
    work: Path,
    label: str,
    *,
    accounts: int,
    hot: bool,
    connections: int,
    duration: int,
) -> WrkResult:
    """One wrk run against a fresh tenant whose accounts hold more than the run can
    spend, then the stored redemptions and the ledger checked."""
    tenant = f"bench-{uuid.uuid4().hex[:8]}"
    key = served_loop.run(new_key(database_url, tenant))
    budget = 5_000 * duration * PRICE  # beyond what this machine redeems in the run
    credit(
        url, key, {"hot": budget} if hot else {f"c{a}": budget // accounts for a in range(accounts)}
    )
    env = {
        "WRK_AUTH": f"Bearer {key}",
        "WRK_TAG": uuid.uuid4().hex[:8],
        "WRK_CUSTOMER": "hot" if hot else "",
        "WRK_ACCOUNTS": str(accounts),
    }
    cpu = cpu_seconds(PIDS[url])
    r = wrk_script(url, LUA, work, env, connections=connections, duration=duration)
    cpu = cpu_seconds(PIDS[url]) - cpu
    stored, negative, wrong = served_loop.run(ledger_check(database_url, tenant))
    print(r.line(label))
    made = r.statuses.get(201, 0)
    print(
        f"  {'':<34} {made / r.seconds:7.0f} redemptions/s; answered 201 {made}, stored"
        f" {stored}; accounts below zero {negative}, balance != sum of entries {wrong}"
    )
    # The service's CPU per answer: less sensitive to other load on the machine than
    # the rate (which is what that load takes away).
    print(f"  {'':<34} service CPU {1000 * cpu / max(r.requests, 1):.2f} ms per request")
    return r


async def bare_db_rate(database_url: str, accounts: int, n: int, concurrency: int) -> float:
    """The floor under any redemption: lock an account, update it, commit."""
    engine: AsyncEngine = create_async_engine(database_url, pool_size=concurrency)
    tenant = f"bench-db-{uuid.uuid4().hex[:8]}"
    try:
        async with engine.begin() as conn:
            await conn.execute(
                text(
                    "INSERT INTO loyalty.accounts (tenant_id, customer_id, available, pending,"
                    " lifetime_earned, tier, orders_count, erased, created_at, updated_at)"
                    " SELECT :t, 'c' || g, 0, 0, 0, 'bronze', 0, false, now(), now()"
                    " FROM generate_series(0, :n - 1) g"
                ),
                {"t": tenant, "n": accounts},
            )

        async def bare(i: int) -> None:
            async with engine.begin() as conn:
                c = f"c{i % accounts}"
                await conn.execute(
                    text(
                        "SELECT available FROM loyalty.accounts WHERE tenant_id=:t AND "
                        "customer_id=:c FOR UPDATE"
                    ),
                    {"t": tenant, "c": c},
                )
                await conn.execute(
                    text(
                        "UPDATE loyalty.accounts SET updated_at=now() WHERE tenant_id=:t "
                        "AND customer_id=:c"
                    ),
                    {"t": tenant, "c": c},
                )

        await timed(200, concurrency, bare)  # warm-up
        return await timed(n, concurrency, bare)
    finally:
        await engine.dispose()


def main() -> None:
    p = argparse.ArgumentParser()
    p.add_argument("--events", type=int, default=4000, help="0: skip the consumer figure")
    p.add_argument("--duration", type=int, default=10, help="s per wrk phase; 0: no redemptions")
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--accounts", type=int, default=200)
    p.add_argument(
        "--before",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="also measure one transaction per request (the group commit off)",
    )
    p.add_argument(
        "--workers",
        type=int,
        nargs="+",
        default=[1, 2],
        help="uvicorn worker processes of the group commit's runs, one run each",
    )
    args = p.parse_args()
    if args.duration:
        require_wrk()
    os.environ.setdefault("AFTERGLOW_ONLY_SERVICES", "loyalty")
    with (
        tempfile.TemporaryDirectory() as tmp,
        running_stack(Path(tmp), ephemeral=True, services={"loyalty"}) as stack,
    ):
        os.environ.update(stack.env())
        if args.events:
            served_loop.run(consumer_figure(args.events))
        if not args.duration:
            return
        work = Path(tmp)
        env = {**stack.env(), "LOG_LEVEL": "WARNING", "RELAY_POLL_INTERVAL_S": "0.2"}
        conns, secs, accounts = args.connections, args.duration, args.accounts
        print(
            f"redemptions: wrk -t{THREADS} -c{conns} -d{secs}s, {accounts} accounts or one"
            f" hot account, {os.cpu_count()} cores"
        )
        with floor_endpoint() as url:
            floor = wrk_script(
                url,
                LUA,
                work,
                {"WRK_AUTH": "-", "WRK_TAG": "floor", "WRK_CUSTOMER": "", "WRK_ACCOUNTS": "200"},
                connections=conns,
                duration=secs,
            )
        print(floor.line("floor (bare endpoint)"))
        rates: dict[tuple[str, bool], float] = {}
        runs = [(False, 1)] if args.before else []
        runs += [(True, w) for w in args.workers]
        for grouped, workers in runs:
            name = f"group commit, {workers} worker" if grouped else "txn per request"
            name += "s" if workers > 1 else ""
            with loyalty(env, grouped, workers) as url:
                for hot in (False, True):
                    label = f"{name}, {'hot' if hot else 'spread'}"
                    r = redemption_phase(
                        url,
                        stack.database_url,
                        work,
                        label,
                        accounts=accounts,
                        hot=hot,
                        connections=conns,
                        duration=secs,
                    )
                    rates[(name, hot)] = r.statuses.get(201, 0) / r.seconds
        bare = served_loop.run(bare_db_rate(stack.database_url, accounts, 4000, 20))
        print(f"  {'floor (bare lock+update txns)':<34} {bare:7.0f} txn/s")
        print("summary (redemptions/s; targets >= 1,500 spread, >= 500 hot):")
        for (name, hot), rate in rates.items():
            what = "hot   " if hot else "spread"
            print(
                f"  {name + ',':<30} {what} {rate:7.0f}   / bare endpoint"
                f" {rate / floor.rate:5.3f}   / bare DB {rate / bare:5.3f}"
            )
        one, two = "group commit, 1 worker", "group commit, 2 workers"
        for hot in (False, True):
            if (one, hot) in rates and (two, hot) in rates:
                added = rates[(two, hot)] - rates[(one, hot)]
                print(
                    f"  the second worker adds {added:+7.0f}/s {'hot' if hot else 'spread'}"
                    f" ({added / rates[(one, hot)]:+.0%})"
                )


if __name__ == "__main__":
    main()
