"""Redemptions per second one loyalty instance sustains, against floors in the same run.

Real stack (embedded PostgreSQL + broker via running_stack), the app in-process over
ASGI with its full lifespan (relay publishing the redemption events, consumers, worker).
Prints:
  * events/s the ledger consumer applies (order.placed then order.fulfilled of many
    customers), next to the bare batch-consumer floor on the same records
    (bench/consumer_rate.py);
  * redemptions/s spread over many accounts, and on one hot account (row lock serializes);
  * floor 1: GET /healthz through the same client and concurrency (framework overhead);
  * floor 2: a bare "BEGIN; SELECT ... FOR UPDATE; UPDATE; COMMIT" loop on the same DB;
  * the ratios.
Usage: uv run python bench/loyalty/run.py [--events 4000] [--requests 2000] [--concurrency 20]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

import httpx
from sqlalchemy import text

from afterglow.devstack.stack import running_stack
from afterglow.events import CloudEvent, KafkaConfig
from afterglow.events.catalog import CustomerInfo, Money, OrderFulfilled, OrderPlaced

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from consumer_rate import floor_rate, report, service_consumer, service_rate


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


async def timed(n: int, concurrency: int, make) -> float:
    sem = asyncio.Semaphore(concurrency)

    async def one(i: int) -> None:
        async with sem:
            await make(i)

    t0 = time.perf_counter()
    await asyncio.gather(*(one(i) for i in range(n)))
    return n / (time.perf_counter() - t0)


async def main(events: int, requests: int, concurrency: int) -> None:
    from afterglow.loyalty.app import create_app
    from afterglow.loyalty.settings import LoyaltySettings

    app = create_app(LoyaltySettings(log_level="WARNING", db_pool_size=concurrency + 5))
    tenant = f"bench-{uuid.uuid4().hex[:8]}"
    accounts = 200
    async with app.router.lifespan_context(app):
        rt = app.state.runtime
        if events:
            settings = rt.settings
            kafka = KafkaConfig(settings.kafka_bootstrap_servers, settings.kafka_enable_idempotence)
            ledger = service_consumer(rt, "ledger")
            # Warm-up: plans, pool, the group's assignment.
            await service_rate(rt, ledger, ledger_events(f"warm-{tenant}", 200))
            rate = await service_rate(rt, ledger, ledger_events(f"ev-{tenant}", events))
            floor = await floor_rate(rt, kafka, ledger_events(f"floor-{tenant}", events))
            report("loyalty ledger consumer (order.placed + order.fulfilled)", events, rate, floor)
        if not requests:
            return
        async with rt.sessionmaker.begin() as s:
            key = await rt.api_keys.create(s, tenant, ["loyalty:read", "loyalty:write"])
        h = {"Authorization": f"Bearer {key}"}
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://bench") as client:
            per = (requests // accounts + 2) * 500 * 2
            for a in range(accounts):
                r = await client.post(
                    f"/v1/accounts/c{a}/adjustments",
                    json={"points": per, "reason": "bench"},
                    headers=h,
                )
                assert r.status_code == 201, r.text
            r = await client.post(
                "/v1/accounts/hot/adjustments",
                json={"points": 500 * requests, "reason": "bench"},
                headers=h,
            )

            async def redeem(i: int, customer: str | None = None) -> None:
                r = await client.post(
                    f"/v1/accounts/{customer or f'c{i % accounts}'}/redemptions",
                    json={"reward_id": "five-off"},
                    headers={**h, "Idempotency-Key": f"b-{uuid.uuid4().hex}"},
                )
                assert r.status_code == 201, r.text

            async def healthz(i: int) -> None:
                assert (await client.get("/healthz")).status_code == 200

            await timed(200, concurrency, redeem)  # warm-up: pool, plans
            spread = await timed(requests, concurrency, redeem)
            hot = await timed(requests // 2, concurrency, lambda i: redeem(i, "hot"))
            floor_http = await timed(requests * 2, concurrency, healthz)

        async def bare(i: int) -> None:
            async with rt.engine.begin() as conn:
                await conn.execute(
                    text(
                        "SELECT available FROM loyalty.accounts WHERE tenant_id=:t AND "
                        "customer_id=:c FOR UPDATE"
                    ),
                    {"t": tenant, "c": f"c{i % accounts}"},
                )
                await conn.execute(
                    text(
                        "UPDATE loyalty.accounts SET updated_at=now() WHERE tenant_id=:t "
                        "AND customer_id=:c"
                    ),
                    {"t": tenant, "c": f"c{i % accounts}"},
                )

        floor_db = await timed(requests, concurrency, bare)

    print(
        f"requests={requests} concurrency={concurrency} accounts={accounts} cpus={os.cpu_count()}"
    )
    print(f"redemptions/s (spread over {accounts} accounts): {spread:8.1f}")
    print(f"redemptions/s (one hot account):              {hot:8.1f}")
    print(f"floor: GET /healthz/s:                        {floor_http:8.1f}")
    print(f"floor: bare lock+update transactions/s:       {floor_db:8.1f}")
    print(f"ratio redemptions / healthz:   {spread / floor_http:6.3f}")
    print(f"ratio redemptions / bare DB:   {spread / floor_db:6.3f}")


if __name__ == "__main__":
    p = argparse.ArgumentParser()
    p.add_argument("--events", type=int, default=4000, help="0: skip the consumer figure")
    p.add_argument("--requests", type=int, default=2000, help="0: skip the redemptions")
    p.add_argument("--concurrency", type=int, default=20)
    args = p.parse_args()
    os.environ.setdefault("AFTERGLOW_ONLY_SERVICES", "loyalty")
    with running_stack(Path(".afterglow/bench-loyalty"), ephemeral=True, services={"loyalty"}) as s:
        os.environ.update(s.env())
        asyncio.run(main(args.events, args.requests, args.concurrency))
