"""Events/s one service's consumer applies, next to the bare batch-consumer floor
measured in the same run. Shared by bench/loyalty, bench/referrals and bench/feedback.

* service: the records are produced to their real topics while the app (full lifespan,
  its consumers already joined) runs; the figure is N / (time from the first send until
  the service's inbox holds all N ids), i.e. broker -> consumer -> handlers -> rows and
  outbox, committed.
* floor: the very same record bytes produced to FLOOR_TOPIC, which none of these
  services consumes (12 partitions, as many as the orders topic), and applied by an
  ``EventConsumer`` on the same database and inbox whose handlers do nothing: the poll,
  the parse, the one-statement inbox claim, the commit and the offset commit. What the
  service adds on top of that is its own work.
"""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Sequence
from typing import Any

from sqlalchemy import text

from afterglow.events import CloudEvent, EventConsumer, KafkaConfig, to_record
from afterglow.events.batch import BatchHandler
from afterglow.kit.app import Runtime

FLOOR_TOPIC = "afterglow.messages"  # not consumed by loyalty, referrals or feedback


async def _produce(rt: Runtime, events: Sequence[CloudEvent[Any]], topic: str | None) -> None:
    assert rt.producer is not None
    futures = []
    for e in events:
        r = to_record(e)
        futures.append(
            await rt.producer.send(topic or r.topic, r.value, key=r.key, headers=r.headers)
        )
    await asyncio.gather(*futures)


async def _wait_inbox(rt: Runtime, consumer: str, ids: list[str], within_s: float) -> None:
    schema = rt.tables.inbox.schema
    stmt = text(
        f"SELECT count(*) FROM {schema}.inbox "  # noqa: S608 - the schema is the service's
        "WHERE consumer = :c AND event_id = ANY(:ids)"
    )
    deadline = time.monotonic() + within_s
    while True:
        async with rt.engine.connect() as conn:
            done = (await conn.execute(stmt, {"c": consumer, "ids": ids})).scalar_one()
        if done >= len(ids):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{consumer}: only {done} of {len(ids)} events within {within_s}s")
        await asyncio.sleep(0.02)


def service_consumer(rt: Runtime, suffix: str) -> str:
    """The name (inbox consumer) of the app's consumer group ending in ``suffix``."""
    return next(c.name for c in rt.consumers if c.name.endswith(f".{suffix}"))


async def service_rate(
    rt: Runtime, consumer: str, events: Sequence[CloudEvent[Any]], within_s: float = 900
) -> float:
    """Events/s the app's ``consumer`` applies ``events`` at (their own topics)."""
    ids = [e.id for e in events]
    t0 = time.perf_counter()
    await _produce(rt, events, None)
    await _wait_inbox(rt, consumer, ids, within_s)
    return len(ids) / (time.perf_counter() - t0)


async def floor_rate(
    rt: Runtime, kafka: KafkaConfig, events: Sequence[CloudEvent[Any]], within_s: float = 900
) -> float:
    """Events/s the bare batch consumer (no-op handlers) applies the same records at."""
    assert rt.producer is not None

    async def nothing(session: Any, batch: list[CloudEvent[Any]]) -> None:
        return None

    noop = BatchHandler(nothing)
    name = f"bench-floor-{uuid.uuid4().hex[:6]}"
    consumer = EventConsumer(
        name=name,
        kafka=kafka,
        sessionmaker=rt.sessionmaker,
        tables=rt.tables,
        handlers={e.type: noop for e in events},
        dlq_producer=rt.producer,
        topics=[FLOOR_TOPIC],
        max_records=rt.settings.consumer_max_records,
    )
    await consumer.start()
    task = asyncio.create_task(consumer.run())
    try:
        while consumer.last_poll is None:  # noqa: ASYNC110 - the join is not the throughput
            await asyncio.sleep(0.05)
        # Warm: the group's first poll can return before its partitions are assigned.
        await asyncio.sleep(1.0)
        ids = [e.id for e in events]
        t0 = time.perf_counter()
        await _produce(rt, events, FLOOR_TOPIC)
        await _wait_inbox(rt, name, ids, within_s)
        return len(ids) / (time.perf_counter() - t0)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await consumer.stop()


def report(what: str, n: int, rate: float, floor: float) -> None:
    print(f"{what}: N={n}")
    print(f"  consumer   {rate:8.0f} events/s")
    print(
        f"  floor      {floor:8.0f} events/s  (bare batch consumer: no-op handlers, same records)"
    )
    print(f"  ratio consumer/floor: {rate / floor:.3f}")
