"""Offsets ahead of the log are caught, and a missing topic is created again.

A broker that comes back empty, or a topic deleted and created again, leaves a group's
committed offset (and a running member's position) past the new log's end; the consumer
then waited there while new records arrived below it, with no error at all."""

from __future__ import annotations

import uuid

import pytest
from aiokafka import AIOKafkaConsumer
from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import OffsetAndMetadata, TopicPartition

from afterglow.events import EventConsumer, RetryPolicy, to_record
from afterglow.events.testing import eventually

from .support import EVENT_TYPE, applied_counts, record_applied, running, ticket_event


async def commit(kafka, group: str, offsets: dict[TopicPartition, int]) -> None:
    consumer = AIOKafkaConsumer(
        **kafka.connection_options(), group_id=group, enable_auto_commit=False
    )
    await consumer.start()
    try:
        consumer.assign(list(offsets))
        await consumer.commit({tp: OffsetAndMetadata(o, "") for tp, o in offsets.items()})
    finally:
        await consumer.stop()


def recording(tenant: str, applied, group: str):
    async def handler(session, event):
        if event.tenantid == tenant:
            await record_applied(session, applied, event, group)

    return handler


class TestOffsetsAheadOfTheLog:
    async def test_a_committed_offset_past_the_end_is_reset_and_new_records_applied(
        self, tenant_id, sessionmaker, tables, kafka, producer, applied
    ):
        group = f"test-{uuid.uuid4().hex[:8]}"
        before, after = ticket_event(tenant_id, "c-ahead"), ticket_event(tenant_id, "c-ahead")
        r = to_record(before)
        meta = await producer.send_and_wait(r.topic, r.value, key=r.key, headers=r.headers)
        tp = TopicPartition(meta.topic, meta.partition)
        # As a broker restored empty leaves it: the group is 50 records past the end.
        await commit(kafka, group, {tp: meta.offset + 50})
        r = to_record(after)
        await producer.send_and_wait(r.topic, r.value, key=r.key, headers=r.headers)
        consumer = EventConsumer(
            name=group,
            kafka=kafka,
            sessionmaker=sessionmaker,
            tables=tables,
            handlers={EVENT_TYPE: recording(tenant_id, applied, group)},
            dlq_producer=producer,
            retry=RetryPolicy(attempts=2, base_delay_s=0.01),
            offset_check_interval_s=0.2,
        )
        async with running(consumer.run()):
            counts = await eventually(
                lambda: applied_counts(sessionmaker, applied, tenant_id),
                lambda c: after.id in c,
                timeout=60,
            )
        # Re-read from the earliest offset: the record below the bogus offset too.
        assert counts == {before.id: 1, after.id: 1}
        assert consumer.offset_resets >= 1


class TestMissingTopics:
    # Tansu creates any topic a client asks metadata for, and deletes none.
    @pytest.mark.kafka_only
    async def test_a_topic_deleted_under_a_consumer_is_created_again_and_consumed(
        self, tenant_id, sessionmaker, tables, kafka, producer, applied
    ):
        topic = f"afterglow.recreated-{uuid.uuid4().hex[:6]}"
        group = f"test-{uuid.uuid4().hex[:8]}"
        recreated: list[str] = []
        admin = AIOKafkaAdminClient(**kafka.connection_options())
        await admin.start()

        async def recreate() -> None:
            await admin.create_topics([NewTopic(topic, 1, 1)])
            recreated.append(topic)

        consumer = EventConsumer(
            name=group,
            kafka=kafka,
            sessionmaker=sessionmaker,
            tables=tables,
            handlers={EVENT_TYPE: recording(tenant_id, applied, group)},
            dlq_producer=producer,
            topics=[topic],
            offset_check_interval_s=0.2,
            recreate_topics=recreate,
        )
        before, after = ticket_event(tenant_id, "c-x"), ticket_event(tenant_id, "c-x")
        try:
            await admin.create_topics([NewTopic(topic, 1, 1)])
            async with running(consumer.run()):
                for e in (before, before, before):  # a repeat or two: applied once
                    r = to_record(e)
                    await producer.send_and_wait(topic, r.value, key=r.key, headers=r.headers)
                await eventually(
                    lambda: applied_counts(sessionmaker, applied, tenant_id), bool, timeout=60
                )
                await admin.delete_topics([topic])
                await eventually(lambda: _value(recreated), bool, timeout=60)
                r = to_record(after)
                await eventually(
                    lambda: _send(producer, topic, r), lambda ok: ok, timeout=60, interval=0.5
                )
                counts = await eventually(
                    lambda: applied_counts(sessionmaker, applied, tenant_id),
                    lambda c: after.id in c,
                    timeout=60,
                )
        finally:
            await admin.close()
        # Kafka drops a deleted topic's committed offsets and the group rebalances, so
        # here the member starts the new log from its start; offsets left ahead are the
        # other test's case.
        assert recreated[:1] == [topic]
        assert counts == {before.id: 1, after.id: 1}

    @pytest.mark.kafka_only
    async def test_a_topic_an_operator_deletes_and_creates_again_is_consumed(
        self, tenant_id, sessionmaker, tables, kafka, producer, applied
    ):
        # The consumer may not create topics (ENSURE_TOPICS off): someone else does. The
        # group must find the new partitions without waiting for aiokafka's own
        # metadata refresh (5 minutes): the defect was a member that sat idle for that.
        topic = f"afterglow.operator-{uuid.uuid4().hex[:6]}"
        group = f"test-{uuid.uuid4().hex[:8]}"
        admin = AIOKafkaAdminClient(**kafka.connection_options())
        await admin.start()
        consumer = EventConsumer(
            name=group,
            kafka=kafka,
            sessionmaker=sessionmaker,
            tables=tables,
            handlers={EVENT_TYPE: recording(tenant_id, applied, group)},
            dlq_producer=producer,
            topics=[topic],
            offset_check_interval_s=0.2,
        )
        before, after = ticket_event(tenant_id, "c-op"), ticket_event(tenant_id, "c-op")
        try:
            await admin.create_topics([NewTopic(topic, 1, 1)])
            async with running(consumer.run()):
                r = to_record(before)
                await producer.send_and_wait(topic, r.value, key=r.key, headers=r.headers)
                await eventually(
                    lambda: applied_counts(sessionmaker, applied, tenant_id), bool, timeout=60
                )
                await admin.delete_topics([topic])
                missing = f"topic {topic} missing on the broker"
                await eventually(
                    lambda: _value(consumer.problems()), lambda p: missing in p, timeout=60
                )
                await admin.create_topics([NewTopic(topic, 1, 1)])
                r = to_record(after)
                await eventually(
                    lambda: _send(producer, topic, r), lambda ok: ok, timeout=60, interval=0.5
                )
                counts = await eventually(
                    lambda: applied_counts(sessionmaker, applied, tenant_id),
                    lambda c: after.id in c,
                    timeout=60,
                )
        finally:
            await admin.close()
        assert counts == {before.id: 1, after.id: 1}


async def _send(producer, topic, r) -> bool:
    try:
        await producer.send_and_wait(topic, r.value, key=r.key, headers=r.headers)
    except Exception:  # metadata of the new topic not there yet
        return False
    return True


async def _value(v):
    return v
