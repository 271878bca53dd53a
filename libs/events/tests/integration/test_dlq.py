"""Redrive: dead letters go back to their topic with their ids, and the inbox makes sure
each event takes effect once, whether or not it was applied meanwhile."""

from __future__ import annotations

import uuid

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.structs import TopicPartition

from afterglow.events import PermanentError, RetryPolicy, to_record
from afterglow.events.dlq import DeadLetter, read_dead_letters, redrive
from afterglow.events.testing import TopicTap, eventually

from .support import applied_counts, record_applied, running, ticket_event

DLQ = "afterglow.tickets.dlq"


async def committed(kafka, group: str, tp: TopicPartition) -> int:
    admin = AIOKafkaAdminClient(**kafka.connection_options())
    await admin.start()
    try:
        offsets = await admin.list_consumer_group_offsets(group, partitions=[tp])
    finally:
        await admin.close()
    meta = offsets.get(tp)
    return -1 if meta is None else meta.offset


class _Flaky:
    """A handler that rejects an event as poison until the bug is fixed."""

    def __init__(self, tenant: str, applied, group: str) -> None:
        self.tenant, self.applied, self.group = tenant, applied, group
        self.fixed = False

    async def __call__(self, session, event) -> None:
        if event.tenantid != self.tenant:
            return
        if not self.fixed:
            raise PermanentError("the handler cannot apply this yet")
        await record_applied(session, self.applied, event, self.group)


async def send(producer, event) -> None:
    r = to_record(event)
    await producer.send_and_wait(r.topic, r.value, key=r.key, headers=r.headers)


def of_tenant(tenant: str):
    return lambda d: d.header("ce_tenantid") == tenant


class TestRedrive:
    async def test_a_letter_not_applied_is_applied_once(
        self, consumer_for, tenant_id, sessionmaker, kafka, producer, applied
    ):
        group = f"test-{uuid.uuid4().hex[:8]}"
        handler = _Flaky(tenant_id, applied, group)
        first, second = ticket_event(tenant_id, "c-r"), ticket_event(tenant_id, "c-r")
        consumer = consumer_for(handler=handler, group=group)
        async with running(consumer.run()):
            for e in (first, second):
                await send(producer, e)
            letters = await eventually(
                lambda: read_dead_letters(kafka, DLQ),
                lambda ls: len([d for d in ls if of_tenant(tenant_id)(d)]) == 2,
                timeout=30,
            )
            handler.fixed = True  # the fix is deployed
            async with TopicTap(kafka.bootstrap_servers, "afterglow.tickets") as tap:
                report = await redrive(kafka, DLQ, where=of_tenant(tenant_id))
                back = await tap.wait_for_records(
                    lambda r: dict(r.headers).get("ce_tenantid") == tenant_id.encode(), count=2
                )
            counts = await eventually(
                lambda: applied_counts(sessionmaker, applied, tenant_id),
                lambda c: len(c) == 2,
                timeout=30,
            )
        ours = [d for d in letters if of_tenant(tenant_id)(d)]
        assert [d.event_id for d in ours] == [first.id, second.id]
        assert [d.event_id for d in report.redriven] == [first.id, second.id]
        assert counts == {first.id: 1, second.id: 1}
        # In DLQ order, with the producer's headers and none of the consumer's verdict.
        assert [dict(r.headers)["ce_id"] for r in back] == [first.id.encode(), second.id.encode()]
        for r in back:
            names = {k for k, _ in r.headers}
            assert names >= {"ce_id", "ce_type", "ce_tenantid"}
            assert not {n for n in names if n.startswith("x-error")}
            assert "x-consumer" not in names and "x-attempts" not in names

    async def test_a_letter_applied_meanwhile_has_no_second_effect(
        self, consumer_for, tenant_id, sessionmaker, kafka, producer, applied
    ):
        group = f"test-{uuid.uuid4().hex[:8]}"
        handler = _Flaky(tenant_id, applied, group)
        event = ticket_event(tenant_id, "c-twice")
        consumer = consumer_for(
            handler=handler,
            group=group,
            retry=RetryPolicy(attempts=2, base_delay_s=0.01),
        )
        async with running(consumer.run()):
            await send(producer, event)
            await eventually(
                lambda: read_dead_letters(kafka, DLQ),
                lambda ls: any(d.event_id == event.id for d in ls),
                timeout=30,
            )
            handler.fixed = True
            await send(producer, event)  # the producer repeated it (a relay restart)
            await eventually(
                lambda: applied_counts(sessionmaker, applied, tenant_id),
                lambda c: c == {event.id: 1},
                timeout=30,
            )
            report = await redrive(kafka, DLQ, where=of_tenant(tenant_id))
            [where] = report.published
            tp = TopicPartition(where.topic, where.partition)
            # The consumer has read past the redriven record: its effect (none) is final.
            await eventually(
                lambda: committed(kafka, group, tp), lambda c: c > where.offset, timeout=30
            )
            counts = await applied_counts(sessionmaker, applied, tenant_id)
        assert [d.event_id for d in report.redriven] == [event.id]
        assert counts == {event.id: 1}

    async def test_the_cursor_redrives_each_letter_once(self, tenant_id, kafka, producer):
        # A DLQ of its own for this test: the cursor spans every letter of a topic.
        dlq = f"afterglow.redrive-{uuid.uuid4().hex[:6]}.dlq"
        target = dlq.removesuffix(".dlq")
        admin = AIOKafkaAdminClient(**kafka.connection_options())
        await admin.start()
        try:  # Apache Kafka here creates no topic on first use
            await admin.create_topics([NewTopic(t, 1, 1) for t in (dlq, target)])
        finally:
            await admin.close()
        event = ticket_event(tenant_id)
        r = to_record(event)
        headers = [*r.headers, ("x-error", b"boom"), ("x-original-topic", target.encode())]
        await producer.send_and_wait(dlq, r.value, key=r.key, headers=headers)
        first = await redrive(kafka, dlq)
        second = await redrive(kafka, dlq)
        assert [d.event_id for d in first.redriven] == [event.id]
        assert first.published[0].topic == target
        assert second.redriven == []


def test_redrive_headers_drop_the_verdict_and_keep_the_event() -> None:
    letter = DeadLetter(
        "afterglow.orders.dlq",
        0,
        7,
        0,
        b"k",
        b"{}",
        (
            ("ce_id", b"e-1"),
            ("traceparent", b"00-ab-cd-01"),
            ("x-error", b"PermanentError: no"),
            ("x-original-topic", b"afterglow.orders"),
        ),
    )
    assert letter.redrive_headers() == [
        ("ce_id", b"e-1"),
        ("traceparent", b"00-ab-cd-01"),
        ("x-redriven-from", b"afterglow.orders.dlq:7"),
    ]
    assert letter.original_topic == "afterglow.orders"
