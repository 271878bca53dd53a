"""The consumer runtime: inbox, bounded retries, dead letters, offsets after commit.

For every record of a batch (``getmany``), partitions in parallel, records of one
partition in order:

1. parse the envelope; a malformed record or an unknown type goes to ``<topic>.dlq``;
2. types this consumer has no handler for are acknowledged and skipped;
3. one database transaction inserts the event id into the service's inbox and runs the
   handler; a duplicate id (a redelivery, a repeated webhook) is skipped, so every
   event is applied once;
4. a :class:`PermanentError` (or a validation error) goes to the DLQ at once; anything
   else is retried with exponential backoff and jitter, then dead-lettered, so a
   partition is never blocked for ever and nothing is dropped silently;
5. offsets are committed only after the transactions of the batch have committed.

A crash anywhere re-delivers from the last committed offset, and the inbox drops what
was already applied: at-least-once delivery, exactly-once effect.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
import traceback
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata, TopicPartition
from prometheus_client import Counter, Gauge
from pydantic import ValidationError
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from afterglow.events.catalog import topic_for
from afterglow.events.context import event_context
from afterglow.events.envelope import CloudEvent, MalformedEvent, from_record
from afterglow.events.kafka import KafkaConfig, build_consumer
from afterglow.events.shutdown import stop_within
from afterglow.events.tables import EventTables
from afterglow.events.topics import DLQ_SUFFIX

log = logging.getLogger(__name__)

Handler = Callable[[AsyncSession, CloudEvent[Any]], Awaitable[None]]

EVENTS = Counter(
    "afterglow_events_consumed_total", "Events seen by a consumer", ["consumer", "outcome"]
)
LAST_POLL = Gauge("afterglow_consumer_last_poll_timestamp", "Unix time of last poll", ["consumer"])
LAST_COMMIT = Gauge(
    "afterglow_consumer_last_commit_timestamp", "Unix time of last offset commit", ["consumer"]
)


# How long stop() waits for aiokafka to commit and leave the group.
STOP_TIMEOUT_S = 20.0


class PermanentError(Exception):
    """A handler's verdict that retrying cannot help: the event goes to the DLQ now."""


@dataclass(frozen=True)
class RetryPolicy:
    attempts: int = 5
    base_delay_s: float = 0.2
    max_delay_s: float = 5.0

    def delay(self, attempt: int) -> float:
        capped = min(self.max_delay_s, self.base_delay_s * 2 ** (attempt - 1))
        return capped * (0.5 + random.random() / 2)  # jitter: replicas do not retry in step


class EventConsumer:
    """One consumer group member applying catalog events through handlers."""

    def __init__(
        self,
        *,
        name: str,
        kafka: KafkaConfig,
        sessionmaker: async_sessionmaker[AsyncSession],
        tables: EventTables,
        handlers: Mapping[str, Handler],
        dlq_producer: AIOKafkaProducer,
        retry: RetryPolicy | None = None,
        topics: list[str] | None = None,
        poll_timeout_ms: int = 500,
    ) -> None:
        if not handlers:
            raise ValueError("a consumer needs at least one handler")
        self.name = name
        self._kafka = kafka
        self._sessionmaker = sessionmaker
        self._inbox = tables.inbox
        self._handlers = dict(handlers)
        self._dlq = dlq_producer
        self._retry = retry or RetryPolicy()
        self._topics = topics or sorted({topic_for(t) for t in self._handlers})
        self._poll_timeout_ms = poll_timeout_ms
        self._consumer: AIOKafkaConsumer | None = None
        # Held while a batch is in flight; a rebalance waits for it, so the batch's
        # offsets are committed before its partitions move to another member.
        self._batch_lock = asyncio.Lock()
        self.started = False
        self.last_poll: float | None = None
        self.last_commit: float | None = None

    @property
    def topics(self) -> list[str]:
        return list(self._topics)

    async def start(self) -> None:
        self._consumer = build_consumer(self._kafka, group_id=self.name)
        self._consumer.subscribe(self._topics, listener=_WaitForBatch(self._batch_lock))
        await self._consumer.start()
        self.started = True

    async def stop(self) -> None:
        if self._consumer is not None:
            async with self._batch_lock:  # let the batch in flight finish and commit
                consumer, self._consumer = self._consumer, None
            # Not under the lock: stopping waits for aiokafka's coordination task, which
            # may be in our revoke listener waiting for that very lock (a rebalance).
            # Bounded: leaving the group can wait on a coordinator mid-rebalance, and a
            # member that does not say goodbye is only dropped after its session
            # timeout; its offsets are committed already, so nothing is lost.
            await stop_within(consumer.stop, timeout_s=STOP_TIMEOUT_S, what=f"consumer {self.name}")
        self.started = False

    async def run(self) -> None:
        """Consume until cancelled."""
        if self._consumer is None:
            await self.start()
        consumer = self._consumer
        assert consumer is not None
        try:
            while True:
                batch = await consumer.getmany(
                    timeout_ms=self._poll_timeout_ms,
                    max_records=self._kafka.max_poll_records,
                )
                self.last_poll = time.time()
                LAST_POLL.labels(self.name).set(self.last_poll)
                if batch:
                    await self._process_batch(consumer, batch)
        finally:
            await self.stop()

    async def _process_batch(
        self, consumer: AIOKafkaConsumer, batch: dict[TopicPartition, list[ConsumerRecord]]
    ) -> None:
        async with self._batch_lock:
            results = await asyncio.gather(
                *(self._process_partition(tp, records) for tp, records in batch.items())
            )
            offsets: dict[TopicPartition, OffsetAndMetadata] = {}
            for tp, next_offset, failed in results:
                if next_offset is not None:
                    offsets[tp] = OffsetAndMetadata(next_offset, "")
                if failed is not None:
                    # Not applied and not dead-lettered (the DLQ itself failed): read it
                    # again rather than skip it.
                    consumer.seek(tp, failed)
            if offsets:
                try:
                    await consumer.commit(offsets)
                    self.last_commit = time.time()
                    LAST_COMMIT.labels(self.name).set(self.last_commit)
                except CommitFailedError:
                    # The group rebalanced under us; the new owner re-reads these
                    # records and the inbox drops what was already applied.
                    log.warning("offset commit failed after rebalance", exc_info=True)
            if any(failed is not None for _, _, failed in results):
                await asyncio.sleep(1.0)

    async def _process_partition(
        self, tp: TopicPartition, records: list[ConsumerRecord]
    ) -> tuple[TopicPartition, int | None, int | None]:
        """Returns (next offset to commit, offset to re-read or None)."""
        next_offset = None
        for record in records:
            try:
                await self._process_record(record)
            except Exception:
                log.exception("could not apply or dead-letter a record; will re-read it")
                return tp, next_offset, record.offset
            next_offset = record.offset + 1
        return tp, next_offset, None

    async def _process_record(self, record: ConsumerRecord) -> None:
        try:
            event = from_record(record.key, record.value, record.headers)
        except MalformedEvent as exc:
            EVENTS.labels(self.name, "malformed").inc()
            await self._dead_letter(record, exc, attempts=0)
            return
        handler = self._handlers.get(event.type)
        if handler is None:
            EVENTS.labels(self.name, "ignored").inc()
            return
        with event_context(event.id, event.traceparent):
            attempt = 0
            while True:
                attempt += 1
                try:
                    applied = await self._apply(handler, event)
                    EVENTS.labels(self.name, "applied" if applied else "duplicate").inc()
                    return
                except (PermanentError, ValidationError, MalformedEvent) as exc:
                    EVENTS.labels(self.name, "rejected").inc()
                    await self._dead_letter(record, exc, attempts=attempt)
                    return
                except Exception as exc:
                    if attempt >= self._retry.attempts:
                        EVENTS.labels(self.name, "exhausted").inc()
                        await self._dead_letter(record, exc, attempts=attempt)
                        return
                    log.warning(
                        "handler failed, retrying",
                        extra={"attempt": attempt, "event_type": event.type},
                        exc_info=True,
                    )
                    await asyncio.sleep(self._retry.delay(attempt))

    async def _apply(self, handler: Handler, event: CloudEvent[Any]) -> bool:
        async with self._sessionmaker.begin() as session:
            claimed = await session.execute(
                pg_insert(self._inbox)
                .values(consumer=self.name, event_id=event.id, event_type=event.type)
                .on_conflict_do_nothing()
                .returning(self._inbox.c.event_id)
            )
            if claimed.first() is None:
                return False
            await handler(session, event)
        return True

    async def _dead_letter(self, record: ConsumerRecord, exc: BaseException, attempts: int) -> None:
        topic = record.topic + DLQ_SUFFIX
        error = f"{type(exc).__name__}: {exc}"[:2000]
        headers = [
            *record.headers,
            ("x-error", error.encode()),
            ("x-error-type", type(exc).__name__.encode()),
            ("x-error-trace", "".join(traceback.format_exception(exc))[-4000:].encode()),
            ("x-attempts", str(attempts).encode()),
            ("x-consumer", self.name.encode()),
            ("x-original-topic", record.topic.encode()),
            ("x-original-partition", str(record.partition).encode()),
            ("x-original-offset", str(record.offset).encode()),
        ]
        log.error(
            "event dead-lettered",
            extra={"dlq": topic, "error": error, "offset": record.offset},
        )
        try:
            async with asyncio.timeout(self._kafka.send_timeout_s):
                await self._dlq.send_and_wait(
                    topic, value=record.value, key=record.key, headers=headers
                )
        except (KafkaError, TimeoutError) as send_exc:
            raise RuntimeError(f"could not publish to {topic}") from send_exc
        EVENTS.labels(self.name, "dead_lettered").inc()


class _WaitForBatch(ConsumerRebalanceListener):
    def __init__(self, lock: asyncio.Lock) -> None:
        self._lock = lock

    async def on_partitions_revoked(self, revoked: Any) -> None:
        # The batch in flight commits its offsets before it releases the lock.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(60):
                async with self._lock:
                    pass

    async def on_partitions_assigned(self, assigned: Any) -> None:
        return None
