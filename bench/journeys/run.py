"""Journey engine throughput on the embedded stack: timers fired per second and events
consumed per second by ONE orchestrator instance, each next to a floor measured in the
same run.

* timers/s: N customers wait for their check-in (timers seeded through the engine's own
  write path), the ManualClock jumps 4 days, and the app's timer loop fires them all
  (claim with SKIP LOCKED, engine step, state + transitions + outbox + next timer, in
  one transaction per batch). Floor: the same claim query plus marking the rows fired,
  nothing else, over as many rows.
* events/s: M order.placed events (M customers) published to the broker; the clock
  stops when M instances exist. Floor: a bare aiokafka consumer reading the same M
  records from the topic.

    uv run python bench/journeys/run.py [--timers 3000] [--events 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import tempfile
import time
import uuid
from datetime import timedelta
from pathlib import Path

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition
from sqlalchemy import func, insert, select, update

from afterglow.devstack.pytest_plugin import serve_app
from afterglow.devstack.stack import running_stack
from afterglow.events import CloudEvent, KafkaConfig, build_producer, to_record
from afterglow.events import catalog as c
from afterglow.events.testing import eventually
from afterglow.journeys import domain as d
from afterglow.journeys import store
from afterglow.journeys.app import create_app
from afterglow.journeys.models import CustomerProfile, JourneyInstance, JourneyTimer
from afterglow.journeys.settings import Settings
from afterglow.journeys.workers import claim_due
from afterglow.kit.app import Runtime
from afterglow.kit.clock import ManualClock


async def seed_waiting(rt: Runtime, clock: ManualClock, tenant: str, n: int) -> None:
    now = clock.now()
    j = d.DEFAULT_JOURNEY
    async with rt.sessionmaker.begin() as s:
        await store.ensure_default(s, tenant, now)
    for start in range(0, n, 500):
        async with rt.sessionmaker.begin() as s:
            for i in range(start, min(n, start + 500)):
                cust, order = f"c{i}", f"o{i}"
                prof = d.Profile(orders={order: {d.DELIVERED: now}})
                occ = d.Occurrence(f"seed-{i}", d.PLACED, now, {"order_id": order})
                prof = d.project(prof, occ)
                res = d.start(j, 1, d.instance_id_for("default", occ.id), occ, prof, now)
                await s.execute(
                    insert(CustomerProfile).values(
                        tenant_id=tenant,
                        customer_id=cust,
                        state=prof.model_dump(mode="json"),
                        updated_at=now,
                    )
                )
                await store.Writer(s, rt.outbox, tenant, cust, now).apply(j, res, prof)


async def timers_floor(rt: Runtime, n: int, batch: int) -> float:
    tenant = f"floor-{uuid.uuid4().hex[:6]}"
    now = rt.clock.now()
    far = now + timedelta(days=3650)
    async with rt.sessionmaker.begin() as s:
        await s.execute(
            insert(JourneyTimer),
            [
                dict(
                    id=f"f{i}-{tenant}",
                    tenant_id=tenant,
                    customer_id=f"c{i}",
                    instance_id=f"i{i}",
                    kind="stage_due",
                    key="1:due",
                    due_at=far,
                    payload={},
                    state="pending",
                    created_at=now,
                )
                for i in range(n)
            ],
        )
    t0 = time.perf_counter()
    done = 0
    while done < n:
        async with rt.sessionmaker.begin() as s:
            rows = await claim_due(s, far, batch, tenant)
            await s.execute(
                update(JourneyTimer)
                .where(JourneyTimer.id.in_([r.id for r in rows]))
                .values(state="fired", fired_at=now)
            )
            done += len(rows)
    return n / (time.perf_counter() - t0)


async def roundtrip_floor(rt: Runtime, n: int = 300) -> float:
    """One-statement transactions per second: what the database gives any per-item
    work on this machine right now (the engine does ~10 statements per item)."""
    t0 = time.perf_counter()
    for _ in range(n):
        async with rt.sessionmaker.begin() as s:
            await s.execute(select(1))
    return n / (time.perf_counter() - t0)


async def count(rt: Runtime, q: object) -> int:
    async with rt.sessionmaker() as s:
        return int(await s.scalar(q) or 0)  # type: ignore[call-overload]


async def bench(n_timers: int, n_events: int, bootstrap: str, idempotence: bool) -> None:
    clock = ManualClock()
    settings = Settings(
        log_json=False,
        log_level="WARNING",
        journeys_timer_poll_interval_s=0.05,
        relay_poll_interval_s=0.2,
    )
    app = create_app(settings, clock)
    async with serve_app(app) as client:
        await eventually(lambda: client.get("/readyz"), lambda r: r.status_code == 200, timeout=90)
        rt: Runtime = app.state.runtime
        batch = settings.journeys_timer_batch

        floor = await timers_floor(rt, n_timers, batch)
        tenant = f"bench-{uuid.uuid4().hex[:6]}"
        await seed_waiting(rt, clock, tenant, n_timers)
        fired_q = (
            select(func.count())
            .select_from(JourneyTimer)
            .where(JourneyTimer.tenant_id == tenant, JourneyTimer.state == "fired")
        )
        t0 = time.perf_counter()
        clock.advance(timedelta(days=4))
        await eventually(
            lambda: count(rt, fired_q), lambda v: v >= n_timers, timeout=600, interval=0.05
        )
        rate = n_timers / (time.perf_counter() - t0)
        print(f"timers: {n_timers} fired by one instance (batch {batch})")
        print(f"  engine      {rate:8.0f} timers/s")
        print(f"  floor       {floor:8.0f} timers/s  (claim SKIP LOCKED + mark fired, no engine)")
        print(f"  ratio engine/floor: {rate / floor:.4f}")
        rtt = await roundtrip_floor(rt)
        print(f"  round trips {rtt:8.0f} one-statement transactions/s (per-item floor)")
        print(f"  ratio engine/round-trip: {rate / rtt:.3f}")

        producer = build_producer(KafkaConfig(bootstrap, enable_idempotence=idempotence))
        await producer.start()
        try:
            tenant = f"bench-{uuid.uuid4().hex[:6]}"
            inst_q = (
                select(func.count())
                .select_from(JourneyInstance)
                .where(JourneyInstance.tenant_id == tenant)
            )
            records = []
            for i in range(n_events):
                ev = CloudEvent.new(
                    c.OrderPlaced(
                        order_id=f"o{i}",
                        platform="api",
                        placed_at=clock.now(),
                        customer=c.CustomerInfo(),
                        total=c.Money(amount=1000, currency="USD"),
                    ),
                    tenant_id=tenant,
                    subject=f"c{i}",
                    source="bench",
                )
                records.append(to_record(ev))
            t0 = time.perf_counter()
            futures = [
                await producer.send(r.topic, r.value, key=r.key, headers=r.headers) for r in records
            ]
            await asyncio.gather(*futures)
            await eventually(
                lambda: count(rt, inst_q), lambda v: v >= n_events, timeout=600, interval=0.1
            )
            ev_rate = n_events / (time.perf_counter() - t0)
        finally:
            await producer.stop()

        # Floor: read the same records back with a bare consumer (no DB, no handler).
        consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap, group_id=None, enable_auto_commit=False
        )
        await consumer.start()
        try:
            parts = [
                TopicPartition("afterglow.orders", p)
                for p in sorted(consumer.partitions_for_topic("afterglow.orders") or [])
            ]
            consumer.assign(parts)
            await consumer.seek_to_beginning(*parts)
            seen = 0
            t0 = time.perf_counter()
            while seen < n_events:
                batch_ = await consumer.getmany(timeout_ms=500, max_records=1000)
                for recs in batch_.values():
                    seen += sum(
                        1 for r in recs if r.key and r.key.decode().startswith(tenant + ":")
                    )
            raw_rate = n_events / (time.perf_counter() - t0)
        finally:
            await consumer.stop()
        print(
            f"events: {n_events} order.placed consumed by one instance (publish to instance rows)"
        )
        print(f"  engine      {ev_rate:8.0f} events/s")
        print(f"  floor       {raw_rate:8.0f} events/s  (bare consumer reading the topic)")
        print(f"  ratio engine/floor: {ev_rate / raw_rate:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--timers", type=int, default=3000)
    parser.add_argument("--events", type=int, default=2000)
    args = parser.parse_args()
    os.environ.setdefault("AFTERGLOW_ONLY_SERVICES", "journeys")
    with tempfile.TemporaryDirectory() as tmp, running_stack(Path(tmp), ephemeral=True) as stack:
        os.environ.update(stack.env())
        asyncio.run(
            bench(
                args.timers,
                args.events,
                stack.kafka_bootstrap_servers,
                stack.kafka_enable_idempotence,
            )
        )


if __name__ == "__main__":
    main()
