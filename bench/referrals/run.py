"""Referred orders per second one referrals instance attributes, against a floor.

Real stack (embedded PostgreSQL + broker via running_stack), the app in-process with
its full lifespan. N ``order.placed`` events carrying referral codes are produced to
the broker; the figure is N / (time until all N referrals are recorded), i.e. broker ->
consumer -> fraud checks -> referral row + outbox, committed. Then an ``order.fulfilled``
for each of those orders (each referral's return window starts), timed until the
service's inbox holds them all.

Floors: the same N records produced to a topic nobody here consumes and
  * applied by the bare batch consumer (no-op handlers: poll, parse, inbox claim,
    commit; bench/consumer_rate.py), the events/s floor the consumer is judged against;
  * read back by a bare aiokafka consumer (no database, no parsing): the broker's own
    round trip.
Usage: uv run python bench/referrals/run.py [--orders 2000] [--codes 200]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path

from aiokafka import AIOKafkaConsumer
from sqlalchemy import text

from afterglow.devstack import served_loop
from afterglow.devstack.stack import running_stack
from afterglow.events import CloudEvent, KafkaConfig, build_producer, to_record
from afterglow.events.catalog import CustomerInfo, Money, OrderFulfilled, OrderPlaced

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from consumer_rate import (
    BENCH_TAG,
    floor_rate,
    print_statements,
    service_consumer,
    service_rate,
    statements_of,
)
from publisher import publishing

FLOOR_TOPIC = "afterglow.support"  # not consumed by referrals


async def main(orders: int, codes: int) -> None:
    from afterglow.referrals.app import create_app
    from afterglow.referrals.deps import deps_of
    from afterglow.referrals.settings import ReferralsSettings

    settings = ReferralsSettings(log_level="WARNING", relay_poll_interval_s=0.2)
    app = create_app(settings)
    tenant = f"bench-{uuid.uuid4().hex[:8]}"
    async with app.router.lifespan_context(app):
        rt = app.state.runtime
        svc = deps_of(rt).referrals
        now = datetime.now(UTC)
        code_list = []
        async with rt.sessionmaker.begin() as s:
            for i in range(codes):
                code, _ = await svc.issue_code(
                    s,
                    tenant,
                    f"adv-{i}",
                    invited_at=now,
                    source="api",
                    cause_id=f"b{i}",
                    send_invite=False,
                )
                code_list.append(code.code)
        events = []
        for i in range(orders):
            data = OrderPlaced(
                order_id=f"o-{i}",
                platform="api",
                # 2 h apart per code: clear of the velocity rule, a realistic spread.
                placed_at=now + timedelta(hours=2 * (i // codes), seconds=i % codes),
                customer=CustomerInfo(email=f"r{i}@example.com"),
                total=Money(amount=5000, currency="USD"),
                referral_code=code_list[i % codes],
                shipping_address_hash=uuid.uuid4().hex,
                customer_orders_count=1,
            )
            events.append(
                CloudEvent.new(data, tenant_id=tenant, subject=f"ref-{i}", source="bench")
            )
        records = [to_record(ev) for ev in events]

        kafka = KafkaConfig(settings.kafka_bootstrap_servers, settings.kafka_enable_idempotence)
        producer = build_producer(kafka)
        await producer.start()
        try:
            # The bench's own progress poll (named BENCH_TAG: not counted as the consumer's work).
            progress = text(
                f"SELECT count(*) AS {BENCH_TAG} FROM referrals.referrals WHERE tenant_id = :t"  # noqa: S608
            )
            # Sent by a child process, as the orders service would (bench/publisher.py).
            async with publishing(kafka, records) as go:
                with statements_of(rt) as statements:
                    t0 = time.perf_counter()
                    await go()
                    while True:
                        async with rt.engine.connect() as conn:
                            done = (await conn.execute(progress, {"t": tenant})).scalar_one()
                        if done >= orders:
                            break
                        await asyncio.sleep(0.05)
                    service_s = time.perf_counter() - t0
            # Then each referred order fulfilled: the lifecycle events' run (the return
            # window of each referral starts), timed until the inbox holds them all.
            fulfilled = [
                CloudEvent.new(
                    OrderFulfilled(order_id=e.data.order_id, fulfilled_at=now + timedelta(days=1)),
                    tenant_id=tenant,
                    subject=e.subject,
                    source="bench",
                )
                for e in events
            ]
            with statements_of(rt) as fulfilled_statements:
                fulfilled_rate = await service_rate(rt, service_consumer(rt, "events"), fulfilled)

            # Floor: the broker round trip for the same records, nothing else.
            consumer = AIOKafkaConsumer(
                FLOOR_TOPIC,
                bootstrap_servers=settings.kafka_bootstrap_servers,
                group_id=f"bench-floor-{uuid.uuid4().hex[:6]}",
                auto_offset_reset="latest",
                enable_auto_commit=False,
            )
            await consumer.start()
            while not consumer.assignment():
                await consumer.getmany(timeout_ms=200)
            for tp in consumer.assignment():
                await consumer.position(tp)
            t0 = time.perf_counter()
            futures = [
                await producer.send(FLOOR_TOPIC, value=r.value, key=r.key, headers=r.headers)
                for r in records
            ]
            await asyncio.gather(*futures)
            seen = 0
            while seen < orders:
                batch = await consumer.getmany(timeout_ms=200)
                seen += sum(len(v) for v in batch.values())
            floor_s = time.perf_counter() - t0
            await consumer.stop()
            # Fresh ids: the floor consumer's inbox is its own, but keep the runs apart.
            batch_floor = await floor_rate(
                rt,
                kafka,
                [
                    CloudEvent.new(e.data, tenant_id=e.tenantid, subject=e.subject, source="bench")
                    for e in events
                ],
            )
        finally:
            await producer.stop()

    svc_rate, broker_rate = orders / service_s, orders / floor_s
    print(f"referred orders attributed: {orders} in {service_s:.2f}s = {svc_rate:,.0f}/s")
    print(f"floor (broker produce+consume only): {orders} in {floor_s:.2f}s = {broker_rate:,.0f}/s")
    print(f"ratio service/floor: {svc_rate / broker_rate:.2f}")
    print(f"floor (bare batch consumer, no-op handlers, same records): {batch_floor:,.0f} events/s")
    print(f"ratio service/batch-consumer floor: {svc_rate / batch_floor:.3f}")
    print(f"target >= 2,000 events/s: {'met' if svc_rate >= 2000 else 'NOT met'}")
    print_statements(statements, orders, top=20)
    print(f"order.fulfilled applied: {orders} at {fulfilled_rate:,.0f}/s")
    print(f"ratio fulfilled/batch-consumer floor: {fulfilled_rate / batch_floor:.3f}")
    print(f"target >= 2,000 events/s: {'met' if fulfilled_rate >= 2000 else 'NOT met'}")
    print_statements(fulfilled_statements, orders, top=20)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--orders", type=int, default=2000)
    parser.add_argument("--codes", type=int, default=200)
    args = parser.parse_args()
    os.environ.setdefault("AFTERGLOW_ONLY_SERVICES", "referrals")
    state = Path(os.environ.get("AFTERGLOW_BENCH_STATE", ".afterglow/bench-referrals"))
    with running_stack(state, ephemeral=True) as stack:
        os.environ.update(stack.env())
        served_loop.run(main(args.orders, args.codes))
