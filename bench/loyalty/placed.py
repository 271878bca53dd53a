"""One kind of order event through the ledger group's own batch handler: statements per
event and events/s, without the broker (the consumer's transaction, as the consumer runs
it).

Real stack (embedded PostgreSQL via running_stack), the app's runtime with its lifespan.
Each batch of ``--batch`` events (``--customers`` customers, so a customer has several
orders in one batch) goes through ``apply_in_one_transaction`` with the group's handlers;
the statements are counted with SQLAlchemy's ``before_cursor_execute`` (an
``executemany`` counts once: it is one round trip with asyncpg's pipelining).

``--kind placed`` (the default) times the orders being placed. Any other kind first
places the same orders (not timed, not counted), then times that event for each of them:
``fulfilled`` and ``delivered`` schedule the pending points (released at once with
``--return-window 0``), ``refunded`` (half of each order) and ``cancelled`` claw back.
``--profile`` prints cProfile's top entries for the timed part.
Usage: uv run python bench/loyalty/placed.py [--kind placed] [--orders 2000] [--batch 200]
       [--customers 300] [--return-window 30] [--profile]
"""

from __future__ import annotations

import argparse
import cProfile
import os
import pstats
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import event

from afterglow.devstack import served_loop
from afterglow.devstack.stack import running_stack
from afterglow.events import CloudEvent
from afterglow.events.batch import apply_in_one_transaction, inbox_claim
from afterglow.events.catalog import (
    CustomerInfo,
    Money,
    OrderCancelled,
    OrderDelivered,
    OrderFulfilled,
    OrderPlaced,
    OrderRefunded,
)

KINDS = ("placed", "fulfilled", "delivered", "refunded", "cancelled")
TOTAL = 5000


def order_event(kind: str, i: int, now: datetime) -> Any:
    """The data of event ``kind`` about order ``o{i}``."""
    oid = f"o{i}"
    if kind == "fulfilled":
        return OrderFulfilled(order_id=oid, fulfilled_at=now)
    if kind == "delivered":
        return OrderDelivered(order_id=oid, delivered_at=now, reported_by="api")
    if kind == "refunded":
        return OrderRefunded(
            order_id=oid,
            refund_id=f"r{i}",
            refunded_at=now,
            amount=Money(amount=TOTAL // 2, currency="USD"),
            full=False,
        )
    if kind == "cancelled":
        return OrderCancelled(order_id=oid, cancelled_at=now)
    return OrderPlaced(
        order_id=oid,
        platform="api",
        placed_at=now,
        customer=CustomerInfo(email=f"c{i}@example.com"),
        total=Money(amount=TOTAL, currency="USD"),
    )


def events(kind: str, tenant: str, n: int, customers: int) -> list[CloudEvent[Any]]:
    now = datetime.now(UTC)
    return [
        CloudEvent.new(
            order_event(kind, i, now),
            tenant_id=tenant,
            subject=f"c{i % customers}",
            source="bench",
        )
        for i in range(n)
    ]


async def main(
    kind: str, n: int, batch: int, customers: int, return_window: int, profile: bool
) -> None:
    from afterglow.loyalty import domain
    from afterglow.loyalty.app import create_app
    from afterglow.loyalty.handlers import CONSUMERS
    from afterglow.loyalty.settings import LoyaltySettings
    from afterglow.loyalty.store import save_rules

    app = create_app(LoyaltySettings(log_level="WARNING"))
    async with app.router.lifespan_context(app):
        rt = app.state.runtime
        handlers = CONSUMERS[0].handlers(rt)
        claim = inbox_claim(rt.tables.inbox)
        statements = 0

        def count(*_: Any) -> None:
            nonlocal statements
            statements += 1

        async def run(part_events: list[CloudEvent[Any]]) -> float:
            t0 = time.perf_counter()
            for i in range(0, len(part_events), batch):
                part = part_events[i : i + batch]
                async with rt.sessionmaker.begin() as s:
                    await apply_in_one_transaction(
                        s, claim, "bench.placed", [(e, handlers[e.type]) for e in part]
                    )
            return time.perf_counter() - t0

        async def tenant(prefix: str) -> str:
            name = f"{prefix}-{uuid.uuid4().hex[:8]}"
            rules = domain.ProgramRules(return_window_days=return_window)
            async with rt.sessionmaker.begin() as s:
                await save_rules(s, name, rules, datetime.now(UTC))
            if kind != "placed":
                await run(events("placed", name, n, customers))
            return name

        warm = await tenant("warm")
        await run(events(kind, warm, min(n, 2 * batch), customers))
        bench = await tenant("bench")
        timed = events(kind, bench, n, customers)
        profiler = cProfile.Profile() if profile else None
        event.listen(rt.engine.sync_engine, "before_cursor_execute", count)
        if profiler:
            profiler.enable()
        elapsed = await run(timed)
        if profiler:
            profiler.disable()
        event.remove(rt.engine.sync_engine, "before_cursor_execute", count)
    print(
        f"kind={kind} events={n} batch={batch} customers={customers} "
        f"return_window={return_window} cpus={os.cpu_count()}"
    )
    print(f"statements per event (inbox claim and BEGIN/COMMIT included): {statements / n:.2f}")
    print(f"order.{kind} events/s through the group's batch handler: {n / elapsed:.1f}")
    if profiler:
        # The timed part only (the relay and the worker run in the same loop meanwhile).
        pstats.Stats(profiler).sort_stats("tottime").print_stats(25)


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--kind", choices=KINDS, default="placed")
    p.add_argument("--orders", type=int, default=2000)
    p.add_argument("--batch", type=int, default=200)
    p.add_argument("--customers", type=int, default=300)
    p.add_argument("--return-window", type=int, default=30, help="days; 0: released at once")
    p.add_argument("--profile", action="store_true", help="cProfile the timed part")
    args = p.parse_args()
    os.environ.setdefault("AFTERGLOW_ONLY_SERVICES", "loyalty")
    with running_stack(Path(".afterglow/bench-loyalty"), ephemeral=True, services={"loyalty"}) as s:
        os.environ.update(s.env())
        served_loop.run(
            main(
                args.kind, args.orders, args.batch, args.customers, args.return_window, args.profile
            )
        )
