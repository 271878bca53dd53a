"""order.placed through the ledger group's own batch handler: statements per order and
orders/s, without the broker (the consumer's transaction, as the consumer runs it).

Real stack (embedded PostgreSQL via running_stack), the app's runtime with its lifespan.
Each batch of ``--batch`` orders (``--customers`` customers, so a customer has several
orders in one batch) goes through ``apply_in_one_transaction`` with the group's handlers;
the statements are counted with SQLAlchemy's ``before_cursor_execute`` (an
``executemany`` counts once: it is one round trip with asyncpg's pipelining).
Usage: uv run python bench/loyalty/placed.py [--orders 2000] [--batch 200] [--customers 300]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import event

from afterglow.devstack.stack import running_stack
from afterglow.events import CloudEvent
from afterglow.events.batch import apply_in_one_transaction, inbox_claim
from afterglow.events.catalog import CustomerInfo, Money, OrderPlaced


def orders(tenant: str, n: int, customers: int) -> list[CloudEvent[Any]]:
    now = datetime.now(UTC)
    return [
        CloudEvent.new(
            OrderPlaced(
                order_id=f"o{i}",
                platform="api",
                placed_at=now,
                customer=CustomerInfo(email=f"c{i % customers}@example.com"),
                total=Money(amount=5000, currency="USD"),
            ),
            tenant_id=tenant,
            subject=f"c{i % customers}",
            source="bench",
        )
        for i in range(n)
    ]


async def main(n: int, batch: int, customers: int) -> None:
    from afterglow.loyalty.app import create_app
    from afterglow.loyalty.handlers import CONSUMERS
    from afterglow.loyalty.settings import LoyaltySettings

    app = create_app(LoyaltySettings(log_level="WARNING"))
    async with app.router.lifespan_context(app):
        rt = app.state.runtime
        handlers = CONSUMERS[0].handlers(rt)
        claim = inbox_claim(rt.tables.inbox)
        statements = 0

        def count(*_: Any) -> None:
            nonlocal statements
            statements += 1

        async def run(events: list[CloudEvent[Any]]) -> float:
            t0 = time.perf_counter()
            for i in range(0, len(events), batch):
                part = events[i : i + batch]
                async with rt.sessionmaker.begin() as s:
                    await apply_in_one_transaction(
                        s, claim, "bench.placed", [(e, handlers[e.type]) for e in part]
                    )
            return time.perf_counter() - t0

        await run(orders(f"warm-{uuid.uuid4().hex[:8]}", min(n, 2 * batch), customers))
        event.listen(rt.engine.sync_engine, "before_cursor_execute", count)
        elapsed = await run(orders(f"bench-{uuid.uuid4().hex[:8]}", n, customers))
        event.remove(rt.engine.sync_engine, "before_cursor_execute", count)
    print(f"orders={n} batch={batch} customers={customers} cpus={os.cpu_count()}")
    print(f"statements per order (inbox claim and BEGIN/COMMIT included): {statements / n:.2f}")
    print(f"orders/s through the group's batch handler: {n / elapsed:.1f}")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--orders", type=int, default=2000)
    p.add_argument("--batch", type=int, default=200)
    p.add_argument("--customers", type=int, default=300)
    args = p.parse_args()
    os.environ.setdefault("AFTERGLOW_ONLY_SERVICES", "loyalty")
    with running_stack(Path(".afterglow/bench-loyalty"), ephemeral=True, services={"loyalty"}) as s:
        os.environ.update(s.env())
        asyncio.run(main(args.orders, args.batch, args.customers))
