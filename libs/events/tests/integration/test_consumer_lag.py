"""The lag gauge (afterglow.events.lag) is the partition's high watermark minus the next
offset to read, from what a poll brought back: records produced and not yet read count,
read ones do not, and a partition given up stops being reported by this pod."""

from __future__ import annotations

import asyncio
import uuid

from aiokafka import AIOKafkaConsumer, TopicPartition
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from prometheus_client import REGISTRY

from afterglow.events.lag import observe_lag

NAME = "test.lag"


def _lag(tp: TopicPartition) -> float | None:
    return REGISTRY.get_sample_value(
        "afterglow_consumer_lag_records",
        {"consumer": NAME, "topic": tp.topic, "partition": str(tp.partition)},
    )


async def _poll(consumer: AIOKafkaConsumer, tp: TopicPartition, n: int) -> dict:
    """Poll until n records came back (a fetch may return fewer at a time); a broker
    that never returns them fails the test within a minute instead of hanging it."""
    records: list = []
    async with asyncio.timeout(60):
        while len(records) < n:
            batch = await consumer.getmany(tp, timeout_ms=1000, max_records=n - len(records))
            records += batch.get(tp, [])
    return {tp: records}


async def test_lag_is_what_was_produced_and_not_yet_read(kafka, producer):
    # A topic of its own: on a shared one, other tests' records would move the watermark.
    tp = TopicPartition(f"afterglow.lag-{uuid.uuid4().hex[:8]}", 0)
    topic = tp.topic
    admin = AIOKafkaAdminClient(**kafka.connection_options())
    await admin.start()
    try:
        await admin.create_topics([NewTopic(topic, 1, 1)])
    finally:
        await admin.close()
    consumer = AIOKafkaConsumer(**kafka.connection_options(), enable_auto_commit=False)
    await consumer.start()
    try:
        consumer.assign([tp])
        await consumer.seek_to_end(tp)
        start = await consumer.position(tp)
        for i in range(10):
            await producer.send_and_wait(topic, value=b"{}", key=f"k{i}".encode(), partition=0)

        observe_lag(NAME, consumer, await _poll(consumer, tp, 3))
        assert _lag(tp) == consumer.highwater(tp) - (start + 3)
        assert _lag(tp) == 7  # our ten, less the three read

        observe_lag(NAME, consumer, await _poll(consumer, tp, int(_lag(tp) or 0)))
        assert _lag(tp) == 0

        consumer.unsubscribe()  # the partition is revoked: no stale series stays behind
        observe_lag(NAME, consumer, {})
        assert _lag(tp) is None
    finally:
        await consumer.stop()
