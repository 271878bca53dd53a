"""Transient versus poison on the real stack: an outage is waited out, however long it
lasts, and never turns into a dead letter; a poison record is dead-lettered at once."""

from __future__ import annotations

import asyncio
import uuid

import pytest

from afterglow.devstack.outages import PostgresOutage
from afterglow.events import RetryPolicy, to_record
from afterglow.events.testing import TopicTap, eventually

from .support import applied_counts, record_applied, running, ticket_event

# Three tries was the whole budget of any failure before; outages must outlast it.
RETRY = RetryPolicy(attempts=3, base_delay_s=0.02, max_delay_s=0.1, max_transient_delay_s=0.2)


async def publish(producer, *events) -> None:
    for e in events:
        r = to_record(e)
        await producer.send(r.topic, r.value, key=r.key, headers=r.headers)
    await producer.flush()


class TestTransientFailures:
    async def test_connection_errors_past_the_attempt_limit_never_reach_the_dlq(
        self, consumer_for, tenant_id, sessionmaker, kafka, producer, applied
    ):
        group = f"test-{uuid.uuid4().hex[:8]}"
        first, second = ticket_event(tenant_id, "c-1"), ticket_event(tenant_id, "c-1")
        failures_left = RETRY.attempts + 5
        order: list[str] = []
        problems_seen: list[list[str]] = []

        async def database_away(session, event):
            nonlocal failures_left
            if event.tenantid != tenant_id:
                return
            if event.id == first.id and failures_left:
                failures_left -= 1
                problems_seen.append(consumer.problems())
                raise ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)")
            order.append(event.id)
            await record_applied(session, applied, event, group)

        consumer = consumer_for(
            handler=database_away,
            group=group,
            retry=RETRY,
        )
        async with TopicTap(kafka.bootstrap_servers, "afterglow.tickets.dlq") as dlq:
            await publish(producer, first, second)
            async with running(consumer.run()):
                counts = await eventually(
                    lambda: applied_counts(sessionmaker, applied, tenant_id),
                    lambda c: len(c) == 2,
                    timeout=60,
                )
                await eventually(lambda: asyncio.sleep(0, consumer.problems()), lambda p: not p)
            dead = [r for r in await dlq.events() if r.tenantid == tenant_id]
        assert failures_left == 0
        assert counts == {first.id: 1, second.id: 1}
        assert order == [first.id, second.id], "the partition resumed where it stopped"
        assert dead == []
        # Readiness saw the stall from the second failure in a row, with its reason.
        assert problems_seen[0] == [] and problems_seen[1] == []
        assert "stalled at offset" in problems_seen[-1][0]
        assert "ConnectionRefusedError" in problems_seen[-1][0]

    async def test_a_stall_steps_aside_the_partitions_next_batch_already_in_flight(
        self, consumer_for, tenant_id, sessionmaker, producer, applied
    ):
        """Polls overlap (a poll's batches start while the last poll's finish): when a
        batch fails transiently, its partition's batch from the next poll, dispatched
        already, must not be applied before the records that failed."""
        group = f"test-{uuid.uuid4().hex[:8]}"
        events = [ticket_event(tenant_id, "c-1") for _ in range(12)]  # one partition
        slow_failure = events[2]
        failed = False
        calls: list[str] = []

        async def fails_once_slowly(session, event):
            nonlocal failed
            if event.tenantid != tenant_id:
                return
            calls.append(event.id)
            if event.id == slow_failure.id and not failed:
                failed = True
                # Long enough for the poll loop to read and dispatch the next poll.
                await asyncio.sleep(0.5)
                raise ConnectionRefusedError(111, "Connect call failed ('127.0.0.1', 5432)")
            await record_applied(session, applied, event, group)

        consumer = consumer_for(
            handler=fails_once_slowly,
            group=group,
            retry=RETRY,
            max_records=4,  # a poll holds four of the twelve
        )
        await publish(producer, *events)
        async with running(consumer.run()):
            counts = await eventually(
                lambda: applied_counts(sessionmaker, applied, tenant_id),
                lambda c: len(c) == len(events),
                timeout=60,
            )
        ids = [e.id for e in events]
        assert failed
        assert counts == dict.fromkeys(ids, 1)
        # In order up to the failed attempt; then the partition from where it stalled
        # (the first record of the failed batch, wherever the poll began it), in order
        # to the end: the next poll's batch, in flight during the failure, was not
        # applied first.
        failed_at = calls.index(slow_failure.id)
        assert calls[: failed_at + 1] == ids[:3]
        retried = calls[failed_at + 1 :]
        stalled_at = ids.index(retried[0])
        assert stalled_at <= 2
        assert retried == ids[stalled_at:]

    @pytest.mark.slow
    async def test_postgres_stopped_mid_stream_loses_nothing_and_applies_once(
        self, consumer_for, tenant_id, engine, sessionmaker, kafka, producer, applied
    ):
        outage = await PostgresOutage.of(engine)
        if outage is None:
            pytest.skip("DATABASE_URL names a PostgreSQL this test cannot stop")
        events = [ticket_event(tenant_id, f"c-{i % 5}") for i in range(30)]
        group = f"test-{uuid.uuid4().hex[:8]}"

        async def slow(session, event):
            if event.tenantid != tenant_id:
                return
            await record_applied(session, applied, event, group)
            await asyncio.sleep(0.05)  # so that the stop lands mid-stream

        consumer = consumer_for(
            handler=slow,
            group=group,
            retry=RETRY,
        )
        async with TopicTap(kafka.bootstrap_servers, "afterglow.tickets.dlq") as dlq:
            await publish(producer, *events)
            async with running(consumer.run()):
                await eventually(
                    lambda: applied_counts(sessionmaker, applied, tenant_id),
                    lambda c: len(c) >= 3,
                    timeout=60,
                )
                async with outage.down(engine):
                    # Down for longer than the old budget: every stalled partition has
                    # failed more often than RetryPolicy.attempts.
                    stalled = await eventually(
                        lambda: asyncio.sleep(0, consumer.stalled()),
                        lambda s: bool(s) and min(s.values()) > RETRY.attempts + 2,
                        timeout=60,
                    )
                    problems = consumer.problems()
                counts = await eventually(
                    lambda: applied_counts(sessionmaker, applied, tenant_id),
                    lambda c: len(c) == len(events),
                    timeout=90,
                )
                await eventually(lambda: asyncio.sleep(0, consumer.problems()), lambda p: not p)
            dead = [r for r in await dlq.events() if r.tenantid == tenant_id]
        assert stalled and problems
        assert counts == {e.id: 1 for e in events}
        assert dead == []
