"""Throughput of the event runtime on the embedded stack, each against a floor in the
same run (the machines are shared and noisy: the ratio is the figure that travels).

* consumer: EventConsumer applying N events (one transaction per partition per getmany:
  one multi-row inbox claim + the handler for each new event, offsets after commit) vs
  a bare aiokafka consumer reading the same N records;
* relay: OutboxRelay publishing N committed outbox rows and marking them sent vs a bare
  producer sending the same N records.

    uv run python bench/events/run.py [N]
"""

from __future__ import annotations

import asyncio
import sys
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path

from aiokafka import AIOKafkaConsumer
from sqlalchemy import MetaData, text
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine

from afterglow.devstack import served_loop
from afterglow.devstack.stack import running_stack
from afterglow.events import (
    CloudEvent,
    EventConsumer,
    KafkaConfig,
    Outbox,
    OutboxRelay,
    build_producer,
    event_tables,
    to_record,
)
from afterglow.events.catalog import TicketUpdated
from afterglow.events.migrations import create_event_tables

SCHEMA = "benchevents"
TABLES = event_tables(MetaData(schema=SCHEMA))
TOPIC = "afterglow.tickets"


def events(tenant: str, n: int) -> list[CloudEvent[TicketUpdated]]:
    now = datetime.now(UTC)
    return [
        CloudEvent.new(
            TicketUpdated(ticket_id=f"t{i}", updated_at=now, status="open"),
            tenant_id=tenant,
            subject=f"c{i % 50}",
            source="bench",
        )
        for i in range(n)
    ]


async def bench(database_url: str, kafka: KafkaConfig, n: int) -> None:
    engine = create_async_engine(database_url, pool_size=10)
    async with engine.begin() as conn:
        await conn.execute(text(f"DROP SCHEMA IF EXISTS {SCHEMA} CASCADE"))
        await conn.execute(text(f"CREATE SCHEMA {SCHEMA}"))
        await conn.run_sync(lambda c: create_event_tables(c, TABLES))
    sessionmaker = async_sessionmaker(engine, expire_on_commit=False)
    producer = build_producer(kafka)
    await producer.start()

    # --- relay vs bare producer -----------------------------------------------------
    tenant = f"bench-{uuid.uuid4().hex[:8]}"
    batch = events(tenant, n)
    t0 = time.perf_counter()
    for e in batch:
        r = to_record(e)
        await producer.send(r.topic, r.value, key=r.key, headers=r.headers)
    await producer.flush()
    bare_send = n / (time.perf_counter() - t0)
    async with sessionmaker.begin() as s:
        await Outbox(TABLES).add(s, *events(tenant, n))
    relay = OutboxRelay(engine, TABLES, producer)
    t0 = time.perf_counter()
    sent = 0
    while sent < n:
        sent += await relay.publish_once()
    relayed = n / (time.perf_counter() - t0)

    # --- consumer runtime vs bare consumer ----------------------------------------------
    bare = AIOKafkaConsumer(
        TOPIC,
        bootstrap_servers=kafka.bootstrap_servers,
        group_id=f"bench-bare-{uuid.uuid4().hex[:6]}",
        auto_offset_reset="earliest",
        enable_auto_commit=False,
    )
    await bare.start()
    seen, t0 = 0, None
    # The topic holds the sends above and the relayed rows: 2N records. The clock starts
    # at the first records (the group join is not the throughput) and stops at the last
    # (waiting for a poll to come back empty timed the poll timeout, not the reading).
    while seen < 2 * n:
        got = await bare.getmany(timeout_ms=1000, max_records=500)
        if got and t0 is None:
            t0 = time.perf_counter()
        seen += sum(len(v) for v in got.values() if v)
    bare_read = seen / (time.perf_counter() - (t0 or time.perf_counter()))
    await bare.stop()

    applied = 0
    done = asyncio.Event()

    async def handle(session, event):  # type: ignore[no-untyped-def]
        nonlocal applied
        if event.tenantid == tenant:
            applied += 1
            if applied >= 2 * n:
                done.set()

    consumer = EventConsumer(
        name=f"bench-{uuid.uuid4().hex[:6]}",
        kafka=kafka,
        sessionmaker=sessionmaker,
        tables=TABLES,
        handlers={"afterglow.ticket.updated.v1": handle},
        dlq_producer=producer,
    )
    await consumer.start()
    task = asyncio.create_task(consumer.run())
    while consumer.last_poll is None:  # noqa: ASYNC110 - the join is not the throughput
        await asyncio.sleep(0.05)
    t0 = time.perf_counter()
    await asyncio.wait_for(done.wait(), timeout=600)
    runtime_rate = applied / (time.perf_counter() - t0)
    task.cancel()
    await asyncio.gather(task, return_exceptions=True)
    await producer.stop()
    await engine.dispose()

    print(f"events: N={n} per path, embedded PostgreSQL + Tansu")
    print(
        f"relay    {relayed:8.0f} events/s   floor bare producer {bare_send:8.0f}/s"
        f"   ratio {relayed / bare_send:.3f}"
    )
    print(
        f"consumer {runtime_rate:8.0f} events/s   floor bare consumer {bare_read:8.0f}/s"
        f"   ratio {runtime_rate / bare_read:.3f}"
        "   (one transaction per partition per getmany, one inbox claim per batch)"
    )


def main() -> None:
    n = int(sys.argv[1]) if len(sys.argv) > 1 else 2000
    with running_stack(Path(".afterglow/bench-events"), ephemeral=True, migrate=False) as stack:
        kafka = KafkaConfig(
            stack.kafka_bootstrap_servers, enable_idempotence=stack.kafka_enable_idempotence
        )
        served_loop.run(bench(stack.database_url, kafka, n))


if __name__ == "__main__":
    main()
