"""The delivery guarantees of DESIGN.md, on the real PostgreSQL and the real broker."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import uuid

from afterglow.events import Outbox, OutboxRelay, PermanentError, RetryPolicy, to_record
from afterglow.events.testing import TopicTap, eventually

from .support import (
    EVENT_TYPE,
    applied_counts,
    record_applied,
    running,
    ticket_event,
)


class TestOutbox:
    async def test_committed_event_reaches_a_consumer_and_rolled_back_never_does(
        self, consumer_for, tenant_id, engine, sessionmaker, tables, producer, applied
    ):
        outbox = Outbox(tables)
        kept, dropped = ticket_event(tenant_id), ticket_event(tenant_id)
        async with sessionmaker.begin() as s:
            await outbox.add(s, kept)
        with contextlib.suppress(RuntimeError):
            async with sessionmaker.begin() as s:
                await outbox.add(s, dropped)
                raise RuntimeError("the business change failed")
        relay = OutboxRelay(engine, tables, producer, poll_interval_s=0.1)
        consumer = consumer_for()
        async with running(relay.run(), consumer.run()):
            counts = await eventually(
                lambda: applied_counts(sessionmaker, applied, tenant_id), timeout=30
            )
            await asyncio.sleep(1.0)  # give the rolled-back one every chance to show up
            counts = await applied_counts(sessionmaker, applied, tenant_id)
        assert counts == {kept.id: 1}

    async def test_late_committing_transaction_is_still_published(
        self, tenant_id, engine, sessionmaker, tables, producer, kafka
    ):
        """A row with a lower id that commits after later rows were sent is not skipped."""
        outbox = Outbox(tables)
        early, late = ticket_event(tenant_id, "c-a"), ticket_event(tenant_id, "c-b")
        relay = OutboxRelay(engine, tables, producer, poll_interval_s=0.1)
        async with TopicTap(kafka.bootstrap_servers, "afterglow.tickets") as tap:
            async with sessionmaker.begin() as slow:
                await outbox.add(slow, late)  # takes the lower id, commits last
                async with sessionmaker.begin() as fast:
                    await outbox.add(fast, early)
                await relay.publish_once()
            await relay.publish_once()
            seen = await tap.wait_for(lambda e: e.tenantid == tenant_id, count=2)
        assert {e.id for e in seen} == {early.id, late.id}

    async def test_events_of_one_key_are_published_in_order(
        self, tenant_id, engine, sessionmaker, tables, producer, kafka
    ):
        outbox = Outbox(tables)
        events = [ticket_event(tenant_id, "c-ordered", status=str(i)) for i in range(30)]
        for e in events:
            async with sessionmaker.begin() as s:
                await outbox.add(s, e)
        relays = [
            OutboxRelay(engine, tables, producer, batch_size=7, poll_interval_s=0.05)
            for _ in range(3)
        ]
        async with (
            TopicTap(kafka.bootstrap_servers, "afterglow.tickets") as tap,
            running(*(r.run() for r in relays)),
        ):
            seen = await tap.wait_for(lambda e: e.tenantid == tenant_id, count=30, timeout=30)
        assert [e.data.status for e in seen] == [str(i) for i in range(30)]


class TestConsumer:
    async def test_same_event_delivered_twice_is_applied_once(
        self, consumer_for, tenant_id, sessionmaker, producer, applied
    ):
        event = ticket_event(tenant_id)
        record = to_record(event)
        for _ in range(2):
            await producer.send_and_wait(
                record.topic, record.value, key=record.key, headers=record.headers
            )
        consumer = consumer_for()
        async with running(consumer.run()):
            await eventually(lambda: applied_counts(sessionmaker, applied, tenant_id), timeout=30)
            await asyncio.sleep(1.0)
        assert await applied_counts(sessionmaker, applied, tenant_id) == {event.id: 1}

    async def test_transient_failure_is_retried_then_succeeds(
        self, consumer_for, tenant_id, sessionmaker, producer, applied
    ):
        attempts: list[str] = []
        group = f"test-{uuid.uuid4().hex[:8]}"

        async def flaky(session, event):
            if event.tenantid != tenant_id:
                return
            attempts.append(event.id)
            if len(attempts) < 3:
                raise ConnectionError("the payment provider blinked")
            await record_applied(session, applied, event, group)

        event = ticket_event(tenant_id)
        r = to_record(event)
        await producer.send_and_wait(r.topic, r.value, key=r.key, headers=r.headers)
        consumer = consumer_for(
            handler=flaky,
            group=group,
            retry=RetryPolicy(attempts=5, base_delay_s=0.05),
        )
        async with running(consumer.run()):
            counts = await eventually(
                lambda: applied_counts(sessionmaker, applied, tenant_id), timeout=30
            )
        assert counts == {event.id: 1}
        assert attempts == [event.id] * 3

    async def test_poison_goes_to_dlq_and_the_partition_keeps_flowing(
        self, consumer_for, tenant_id, sessionmaker, kafka, producer, applied
    ):
        group = f"test-{uuid.uuid4().hex[:8]}"
        poison_status = "poison"

        async def handler(session, event):
            if event.tenantid != tenant_id:
                return
            if event.data.status == poison_status:
                raise PermanentError("status cannot be applied")
            await record_applied(session, applied, event, group)

        customer = "same-partition"
        before = ticket_event(tenant_id, customer)
        poison = ticket_event(tenant_id, customer, status=poison_status)
        after = ticket_event(tenant_id, customer)
        records = [to_record(e) for e in (before, poison, after)]
        # Also a record that is not an event at all, on the same key and partition.
        garbage_key = records[0].key
        async with TopicTap(kafka.bootstrap_servers, "afterglow.tickets.dlq") as dlq:
            for r in records[:2]:
                await producer.send_and_wait(r.topic, r.value, key=r.key, headers=r.headers)
            await producer.send_and_wait(
                "afterglow.tickets",
                b"{not json",
                key=garbage_key,
                headers=[("ce_type", EVENT_TYPE.encode())],
            )
            await producer.send_and_wait(
                records[2].topic, records[2].value, key=records[2].key, headers=records[2].headers
            )
            consumer = consumer_for(
                handler=handler,
                group=group,
            )
            async with running(consumer.run()):
                counts = await eventually(
                    lambda: applied_counts(sessionmaker, applied, tenant_id),
                    lambda c: len(c) == 2,
                    timeout=30,
                )
                dead = await dlq.wait_for_records(
                    lambda r: (
                        r.key == garbage_key
                        and dict(r.headers).get(b"x-consumer".decode()) == group.encode()
                    ),
                    count=2,
                    timeout=30,
                )
        assert counts == {before.id: 1, after.id: 1}
        errors = sorted(dict(r.headers)["x-error-type"].decode() for r in dead)
        assert errors == ["MalformedEvent", "PermanentError"]
        poisoned = next(r for r in dead if dict(r.headers)["x-error-type"] == b"PermanentError")
        assert b"status cannot be applied" in dict(poisoned.headers)["x-error"]
        assert dict(poisoned.headers)["x-attempts"] == b"1", "poison is not retried"
        assert dict(poisoned.headers)["ce_id"] == poison.id.encode()

    async def test_exhausted_retries_go_to_dlq(self, consumer_for, tenant_id, kafka, producer):
        group = f"test-{uuid.uuid4().hex[:8]}"

        # An error the classifier cannot place (a handler bug): bounded retries, then the
        # DLQ. A TimeoutError used to stand in here; it is transient now and never
        # dead-lettered (test_failures.py).
        async def always_down(session, event):
            if event.tenantid == tenant_id:
                raise RuntimeError("the handler trips on this event every time")

        event = ticket_event(tenant_id)
        r = to_record(event)
        async with TopicTap(kafka.bootstrap_servers, "afterglow.tickets.dlq") as dlq:
            await producer.send_and_wait(r.topic, r.value, key=r.key, headers=r.headers)
            consumer = consumer_for(
                handler=always_down,
                group=group,
                retry=RetryPolicy(attempts=3, base_delay_s=0.01),
            )
            async with running(consumer.run()):
                dead = await dlq.wait_for_records(
                    lambda rec: dict(rec.headers).get("ce_id") == event.id.encode(), timeout=30
                )
        assert dict(dead[0].headers)["x-attempts"] == b"3"
        assert dict(dead[0].headers)["x-error-type"] == b"RuntimeError"


def _spawn(script, *args):
    return subprocess.Popen(
        [sys.executable, str(script), *args],
        env=os.environ.copy(),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )


class TestCrashes:
    async def test_consumer_killed_mid_batch_loses_nothing_and_applies_once(
        self, tenant_id, sessionmaker, tables, producer, applied, worker_script
    ):
        events = [ticket_event(tenant_id, f"c-{i % 7}") for i in range(60)]
        for e in events:
            r = to_record(e)
            await producer.send(r.topic, r.value, key=r.key, headers=r.headers)
        await producer.flush()
        group = f"test-crash-{uuid.uuid4().hex[:8]}"
        first = _spawn(worker_script, "consume", group, tenant_id, "0.05")
        try:
            await eventually(
                lambda: applied_counts(sessionmaker, applied, tenant_id),
                lambda c: len(c) >= 5,
                timeout=60,
            )
        finally:
            first.send_signal(signal.SIGKILL)
            first.wait()
        partial = await applied_counts(sessionmaker, applied, tenant_id)
        assert 0 < len(partial) < len(events), "the kill must land mid-stream"
        second = _spawn(worker_script, "consume", group, tenant_id, "0")
        try:
            counts = await eventually(
                lambda: applied_counts(sessionmaker, applied, tenant_id),
                lambda c: len(c) == len(events),
                timeout=90,
            )
            await asyncio.sleep(1.0)
            counts = await applied_counts(sessionmaker, applied, tenant_id)
        finally:
            second.terminate()
            second.wait(30)
        assert counts == {e.id: 1 for e in events}

    async def test_relay_killed_after_publishing_publishes_again_and_downstream_applies_once(
        self,
        consumer_for,
        tenant_id,
        engine,
        sessionmaker,
        tables,
        kafka,
        producer,
        applied,
        worker_script,
    ):
        event = ticket_event(tenant_id)
        async with sessionmaker.begin() as s:
            await Outbox(tables).add(s, event)
        async with TopicTap(kafka.bootstrap_servers, "afterglow.tickets") as tap:
            crashed = _spawn(worker_script, "relay-crash")
            out, _ = crashed.communicate(timeout=60)
            assert crashed.returncode == 137, out.decode()
            await tap.wait_for(lambda e: e.id == event.id, timeout=30)
            relay = OutboxRelay(engine, tables, producer, poll_interval_s=0.1)
            consumer = consumer_for()
            async with running(relay.run(), consumer.run()):
                twice = await tap.wait_for(lambda e: e.id == event.id, count=2, timeout=30)
                counts = await eventually(
                    lambda: applied_counts(sessionmaker, applied, tenant_id), timeout=30
                )
                await asyncio.sleep(1.0)
                counts = await applied_counts(sessionmaker, applied, tenant_id)
        assert len(twice) == 2, "published before the crash and again after it"
        assert counts == {event.id: 1}
