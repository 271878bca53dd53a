"""The consumer runtime: inbox, a batch at a time, retries that outlast outages, dead
letters, offsets after commit.

Every ``getmany`` returns records of several partitions; partitions are processed in
parallel, and the records of one partition as ONE unit of work, in order. Polls overlap:
a poll's partitions start while the previous poll's are still being applied, each
partition's batch after that partition's previous batch only, so a partition with many
records does not hold the others back (with one poll at a time, a poll's last
transactions ran one or two at once and the engine's event loop idled a quarter of the
time). At most two polls are in flight, and their offsets are committed in poll order:

1. each record is parsed on its own; a malformed record or an unknown type is poison
   and goes to ``<topic>.dlq`` without spoiling the rest of the batch; types this
   consumer has no handler for are acknowledged and skipped;
2. ONE database transaction claims the ids of the events in the service's inbox with
   one multi-row ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` and hands only the new
   events to their handlers, in partition order (:mod:`afterglow.events.batch`: a
   per-event handler ``handle(session, event)`` is called for each, a
   :class:`~afterglow.events.batch.BatchHandler` gets the list). A repeated id (a
   redelivery, a repeated webhook, twice in one batch) is applied once;
3. a failure rolls the transaction back and is judged by
   :func:`afterglow.events.failures.classify`:

   * transient (PostgreSQL or the broker away, a deadlock, a serialization failure)
     stalls the partition: it is sought back to the first record not committed and
     paused for a capped exponential backoff, then the batch is tried again, for as
     long as the outage lasts; nothing is dead-lettered and no offset moves past it.
     The other partitions, the poll loop and rebalances carry on meanwhile, and
     ``/readyz`` reports the stall;
   * otherwise the batch is split in two and each half applied in order (each its
     own transaction), down to the record that fails. That record alone is judged by
     the per-record rule: poison (bad schema, a deterministic rejection) goes to the
     DLQ at once; unknown (a handler bug) is retried in place a bounded number of times
     (:class:`RetryPolicy`), then dead-lettered. The records before and after it
     commit, in order, and the partition keeps flowing.

   Later events of the same key as a dead-lettered one are still applied (a customer's
   refund after their order was dead-lettered): that is what one-by-one consumption
   always did, and holding a key back would need a parking lot per key that outlives
   the batch. ``afterglow dlq redrive`` puts the letter back once its cause is fixed;
4. offsets are committed only after the transactions that applied the records and the
   DLQ sends of the poison ones; the committed offset never passes a record that is
   neither.

A crash anywhere re-delivers from the last committed offset (a batch whose transaction
committed but whose offset did not is read again) and the inbox drops what was already
applied: at-least-once delivery, exactly-once effect.

A batch is at most ``max_records`` records (default ``KafkaConfig.max_poll_records``),
which bounds both the transaction's size and the locks it holds.

A small poll (at most ``coalesce_below`` records over several partitions: a steady
trickle spread over many partitions) is first applied as ONE transaction, the
partitions one after another in it, each in its own order: at 50 orders a second a
poll held a record or two per partition, and a transaction per partition cost its
BEGIN, inbox claim, statements and COMMIT per event. If that transaction fails for any
reason, nothing of it was applied, and the poll is applied partition by partition as
above (splitting, stalling, dead-lettering exactly as always).

Offsets ahead of the log (a broker that came back empty, a topic deleted and created
again) would make the consumer wait for records that already exist below its
position, silently. :meth:`EventConsumer.check_offsets` catches them after each
assignment and every ``offset_check_interval_s``: it logs an error, counts it, fails
readiness until the partition has been read again, and resumes from the earliest
retained offset (the inbox drops what was applied already). A subscribed topic that
is missing is created again through ``recreate_topics`` when the service may
(``ENSURE_TOPICS``).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
import traceback
from collections import Counter as Tally
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer, ConsumerRebalanceListener
from aiokafka.errors import CommitFailedError, KafkaError
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata, TopicPartition
from prometheus_client import Counter, Gauge, Histogram
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from afterglow.events.batch import (
    BatchHandler,
    EventHandler,
    Handler,
    apply_in_one_transaction,
    inbox_claim,
)
from afterglow.events.catalog import EVENT_TYPES, topic_for
from afterglow.events.context import event_context
from afterglow.events.envelope import CloudEvent, MalformedEvent, from_record
from afterglow.events.failures import (
    PermanentError,
    RetryPolicy,
    TransientError,
    Verdict,
    classify,
)
from afterglow.events.kafka import KafkaConfig, build_consumer
from afterglow.events.lag import observe_lag
from afterglow.events.shutdown import stop_within
from afterglow.events.tables import EventTables
from afterglow.events.topics import DLQ_SUFFIX
from afterglow.events.tracing import batch_span

log = logging.getLogger(__name__)

# A poll that has not returned after this long is stuck (see EventConsumer.run): well
# above a rebalance's own bounds (our revoke listener waits at most 60 s for a batch).
STUCK_AFTER_S = 180.0


def _not_ours(headers: Sequence[tuple[str, bytes]], handlers: Mapping[str, Any]) -> bool:
    """The record's ``ce_type`` header names a catalog type that ``handlers`` lacks.
    Anything else (no such header, not UTF-8, a type outside the catalog) is parsed as
    usual, so a malformed record is still dead-lettered."""
    for name, raw in headers:
        if name == "ce_type":
            try:
                event_type = raw.decode()
            except UnicodeDecodeError:
                return False
            return event_type in EVENT_TYPES and event_type not in handlers
    return False


class ConsumerStuck(RuntimeError):
    """The poll loop is stuck in the client; ending the run lets a fresh client rejoin."""


# Per group and topic: the DLQ alert names the topic whose records were parked.
EVENTS = Counter(
    "afterglow_events_consumed_total",
    "Events seen by a consumer, by outcome (applied, duplicate, ignored, dead_lettered...)",
    ["consumer", "topic", "outcome"],
)
# One observation per transaction of applied records (a partition's span of a poll),
# not per event: a slow handler or a database under load shows here first.
BATCH_APPLY = Histogram(
    "afterglow_consumer_batch_apply_seconds",
    "Time to apply one batch of records in one transaction (inbox claim and handlers)",
    ["consumer"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0),
)
LAST_POLL = Gauge("afterglow_consumer_last_poll_timestamp", "Unix time of last poll", ["consumer"])
LAST_COMMIT = Gauge(
    "afterglow_consumer_last_commit_timestamp", "Unix time of last offset commit", ["consumer"]
)
TRANSIENT_FAILURES = Counter(
    "afterglow_consumer_transient_failures_total",
    "Records that failed for a reason outside them (database, broker) and will be retried",
    ["consumer"],
)
STALLED = Gauge(
    "afterglow_consumer_stalled_partitions",
    "Partitions waiting to retry a record that failed transiently",
    ["consumer"],
)
OFFSET_RESETS = Counter(
    "afterglow_consumer_offset_resets_total",
    "Partitions whose position or committed offset was past the log end, reset to earliest",
    ["consumer", "topic"],
)

__all__ = [
    "BatchHandler",
    "EventConsumer",
    "EventHandler",
    "Handler",
    "PermanentError",
    "RetryPolicy",
    "TransientError",
    "offset_ahead",
]

# Polls applied at once (see the module's docstring): two let a poll's partitions start
# while the last one's longest batches finish; more would only queue behind
# ``parallel_partitions`` and hold more records in memory.
POLLS_IN_FLIGHT = 2
# How long stop() waits for aiokafka to commit and leave the group.
STOP_TIMEOUT_S = 20.0
# A partition counts against readiness from its second failure in a row: one deadlock
# retried at once is a blip, a retry that fails too is an outage.
UNREADY_AFTER_FAILURES = 2


class _Abandoned(RuntimeError):
    """A batch not applied because an earlier batch of its partition failed."""


class _RetryLater(Exception):
    """A record failed transiently: stall its partition at this record."""

    def __init__(self, cause: BaseException) -> None:
        super().__init__(str(cause))
        self.cause = cause


@dataclass
class _Stall:
    """A partition paused at ``offset`` until ``retry_at`` (monotonic)."""

    offset: int
    failures: int
    since: float
    retry_at: float
    error: str
    resumed: bool = False


@dataclass
class _Reset:
    """A partition that was reset to earliest; ready again once read up to ``end``."""

    end: int
    detail: str


@dataclass(frozen=True)
class _Item:
    """A parsed record with a handler: work for a transaction."""

    record: ConsumerRecord
    event: CloudEvent[Any]
    handler: Handler


@dataclass(frozen=True)
class _Dead:
    """A poison record to dead-letter once the records before it are committed."""

    record: ConsumerRecord
    error: BaseException
    attempts: int


@dataclass(frozen=True)
class _PartitionResult:
    tp: TopicPartition
    next_offset: int  # to commit
    retry: tuple[int, BaseException] | None = None  # (offset, cause) to stall at


def offset_ahead(
    *,
    position: int,
    committed: int | None,
    end_offset: int,
    highwater: int | None,
    suspected_before: bool,
) -> str | None:
    """Whether a partition's position or committed offset is past its log's end.

    Returns None (fine), ``"suspect"`` (look again at the next check) or the reason to
    reset. Two brokers' quirks shape it:

    * Tansu answers ListOffsets with the last batch's base offset + 1, short of the end
      when that batch holds several records; the high watermark of the last fetch is
      right. So the end is the larger of both, and with no fetch yet (no high
      watermark) a position past the listed end is only a suspect until the next check.
    * Apache Kafka's client resets an out-of-range position to earliest by itself, with
      no error: a committed offset above the end with the position below it is that
      reset, and the committed offset is still wrong.
    """
    end = max(end_offset, highwater or 0)
    if committed is not None and committed > end and position < committed:
        return f"committed offset {committed} was past the log end {end}"
    ahead = max(position, committed or 0)
    if ahead <= end:
        return None
    if highwater is None and not suspected_before:
        return "suspect"
    return f"offset {ahead} was past the log end {end}"


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
        offset_check_interval_s: float = 10.0,
        recreate_topics: Callable[[], Awaitable[object]] | None = None,
        max_records: int | None = None,
        stuck_after_s: float = STUCK_AFTER_S,
        parallel_partitions: int = 4,
        coalesce_below: int = 0,
    ) -> None:
        if not handlers:
            raise ValueError("a consumer needs at least one handler")
        self.name = name
        self._kafka = kafka
        self._sessionmaker = sessionmaker
        self._claim = inbox_claim(tables.inbox)
        self._handlers = dict(handlers)
        self._dlq = dlq_producer
        self._retry = retry or RetryPolicy()
        self._topics = topics or sorted({topic_for(t) for t in self._handlers})
        self._poll_timeout_ms = poll_timeout_ms
        self._offset_check_interval = offset_check_interval_s
        self._recreate_topics = recreate_topics
        # Records per getmany over all partitions: bounds a transaction and its locks.
        self._max_records = max_records or kafka.max_poll_records
        self._stuck_after_s = stuck_after_s
        # Partitions of one poll applied at once, each in its own transaction and so on
        # its own pooled connection. Unbounded, a poll spread over 30 partitions asked the
        # pool for 30 connections at once: past the pool's size SQLAlchemy opens overflow
        # connections and closes them on return, so every busy second opened new ones,
        # each paying a connect, asyncpg's type introspection and a fresh prepare of
        # every statement (a third of the journeys process's CPU in the system bench).
        # Two cores gain nothing from more transactions in flight than a few.
        self._parallel = asyncio.Semaphore(max(1, parallel_partitions))
        # A poll of at most this many records is tried as one transaction first (see the
        # module's docstring); 0: never.
        self._coalesce_below = coalesce_below
        self._consumer: AIOKafkaConsumer | None = None
        # Held while a poll is dispatched, and by whoever must first let the polls in
        # flight finish and commit (a rebalance, an offset reset, stop): the batches'
        # offsets are committed before their partitions move or are sought.
        self._batch_lock = asyncio.Lock()
        # The polls in flight, oldest first: each commits its offsets after the one
        # before it (see _settle).
        self._polls: list[asyncio.Task[None]] = []
        # Each partition's last batch dispatched: the next one of that partition starts
        # after it, so a partition's records are applied in order.
        self._tails: dict[TopicPartition, asyncio.Task[_PartitionResult | None]] = {}
        # How many times each partition's position was moved back (a stall, an offset
        # reset): a batch read before that holds records that come again, and is dropped.
        self._seeks: Tally[TopicPartition] = Tally()
        # The first offsets of each partition's batches dispatched and not yet applied
        # (its lag counts them: afterglow.events.lag).
        self._applying: dict[TopicPartition, list[int]] = {}
        self._stalls: dict[TopicPartition, _Stall] = {}
        self._resets: dict[TopicPartition, _Reset] = {}
        self._missing_topics: list[str] = []
        self._suspects: set[TopicPartition] = set()
        # Set while the broker does not answer (an offset check or a commit failed),
        # cleared by the next one that succeeds: getmany itself says nothing.
        self._broker_problem: str | None = None
        self._next_offset_check = 0.0  # monotonic; 0: check before the next batch
        self.started = False
        self.offset_resets = 0  # partitions reset to earliest since start
        self.last_poll: float | None = None
        self.last_commit: float | None = None

    @property
    def topics(self) -> list[str]:
        return list(self._topics)

    def stalled(self) -> dict[TopicPartition, int]:
        """Partitions waiting to retry a record, with the failures in a row so far."""
        return {tp: s.failures for tp, s in self._stalls.items()}

    def problems(self) -> list[str]:
        """Why this consumer is not making progress, for readiness; empty when it is."""
        now = time.monotonic()
        found = [
            f"{tp.topic}[{tp.partition}] stalled at offset {s.offset} for "
            f"{now - s.since:.1f}s after {s.failures} transient failures: {s.error}"
            for tp, s in sorted(self._stalls.items())
            if s.failures >= UNREADY_AFTER_FAILURES
        ]
        found += [
            f"{tp.topic}[{tp.partition}] {r.detail}" for tp, r in sorted(self._resets.items())
        ]
        found += [f"topic {t} missing on the broker" for t in self._missing_topics]
        if self._broker_problem:
            found.append(self._broker_problem)
        return found

    async def start(self) -> None:
        self._consumer = build_consumer(self._kafka, group_id=self.name)
        self._consumer.subscribe(self._topics, listener=_Rebalance(self))
        await self._consumer.start()
        self.started = True

    async def stop(self) -> None:
        if self._consumer is not None:
            async with self._batch_lock:  # let the polls in flight finish and commit
                await self._drain()
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
        # Apart from the poll loop: getmany waits for an assignment, and a group
        # subscribed to a missing topic never gets one.
        watcher = asyncio.create_task(self._watch_topics(), name=f"{self.name}-topics")
        try:
            while True:
                self._resume_due(consumer)
                timeout_ms = self._poll_timeout()
                try:
                    # aiokafka's getmany waits, without a bound, for a reassignment in
                    # progress to finish. A rebalance storm left one whose coordinator
                    # never finished it: the member polled nothing for the rest of the
                    # run while the group counted it in. Past the bound, this run ends;
                    # the service's supervisor starts a fresh client, which rejoins.
                    async with asyncio.timeout(timeout_ms / 1000 + self._stuck_after_s):
                        batch = await consumer.getmany(
                            timeout_ms=timeout_ms, max_records=self._max_records
                        )
                except TimeoutError:
                    raise ConsumerStuck(
                        f"{self.name}: no poll returned in {self._stuck_after_s:.0f} s"
                        " (a reassignment never finished); restarting the client"
                    ) from None
                # As the records were read: a partition sought back from here on (a
                # stall of a batch in flight) has its records of this poll read again.
                seeks = {tp: self._seeks[tp] for tp in batch}
                self.last_poll = time.time()
                LAST_POLL.labels(self.name).set(self.last_poll)
                # afterglow.events.lag: no I/O
                observe_lag(self.name, consumer, batch, self._unapplied_from())
                if time.monotonic() >= self._next_offset_check:
                    # Before the batch: a batch read from a position that is about to
                    # be reset would be applied, then read again from the start.
                    reset = await self.check_offsets()
                    batch = {tp: rs for tp, rs in batch.items() if tp not in reset}
                if batch:
                    await self._dispatch(consumer, batch, seeks)
        finally:
            watcher.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await watcher
            # Cancelled or failed: the transactions in flight roll back, their records
            # are read again from the last commit and the inbox drops what was applied.
            await self._abandon()
            await self.stop()

    def _poll_timeout(self) -> int:
        """Poll no longer than until the next stalled partition is due."""
        due = [s.retry_at for s in self._stalls.values() if not s.resumed]
        if not due:
            return self._poll_timeout_ms
        wait_ms = int((min(due) - time.monotonic()) * 1000)
        return max(0, min(self._poll_timeout_ms, wait_ms))

    def _resume_due(self, consumer: AIOKafkaConsumer) -> None:
        now = time.monotonic()
        assigned = consumer.assignment()
        for tp, stall in self._stalls.items():
            if not stall.resumed and stall.retry_at <= now:
                stall.resumed = True
                if tp in assigned:
                    consumer.resume(tp)

    async def _dispatch(
        self,
        consumer: AIOKafkaConsumer,
        batch: dict[TopicPartition, list[ConsumerRecord]],
        seeks: dict[TopicPartition, int],
    ) -> None:
        """Start applying a poll, each partition after its batch in flight; return once
        fewer than two polls are in flight (the oldest has committed its offsets). A
        small poll over several partitions is applied whole, as one transaction, once
        the polls in flight are done."""
        async with self._batch_lock:
            parsed = {tp: self._parse(records) for tp, records in batch.items()}
            if self._coalesces(parsed):
                await self._drain()
                # A partition a batch in flight stalled meanwhile was sought back: its
                # records of this poll come again.
                batch = {tp: rs for tp, rs in batch.items() if self._seeks[tp] == seeks[tp]}
                parsed = {tp: parsed[tp] for tp in batch}
                together = self._coalesces(parsed)
                results = await self._apply_together(batch, parsed) if together else None
                if results is not None:
                    for result in results:
                        self._judge(consumer, result)
                    await self._commit_offsets(consumer, _offsets(results))
                    return
            tasks = [
                self._start(consumer, tp, seeks[tp], records, *parsed[tp])
                for tp, records in batch.items()
            ]
            previous = self._polls[-1] if self._polls else None
            self._polls.append(
                asyncio.create_task(
                    self._settle(consumer, previous, tasks), name=f"{self.name}-poll"
                )
            )
            while len(self._polls) >= POLLS_IN_FLIGHT:
                oldest = self._polls[0]
                await oldest  # what it raised ends the run (and its client): read again
                self._polls.remove(oldest)

    def _start(
        self,
        consumer: AIOKafkaConsumer,
        tp: TopicPartition,
        seeks: int,
        records: list[ConsumerRecord],
        work: list[_Item],
        dead: list[_Dead],
    ) -> asyncio.Task[_PartitionResult | None]:
        task = asyncio.create_task(
            self._in_turn(consumer, self._tails.get(tp), tp, seeks, records, work, dead),
            name=f"{self.name}-{tp.topic}[{tp.partition}]",
        )
        self._tails[tp] = task
        first = records[0].offset
        self._applying.setdefault(tp, []).append(first)
        task.add_done_callback(lambda _: self._applying[tp].remove(first))
        return task

    def _unapplied_from(self) -> dict[TopicPartition, int]:
        """Per partition, the first offset of its batches read and not yet applied."""
        return {tp: min(firsts) for tp, firsts in self._applying.items() if firsts}

    async def _in_turn(
        self,
        consumer: AIOKafkaConsumer,
        previous: asyncio.Task[_PartitionResult | None] | None,
        tp: TopicPartition,
        seeks: int,
        records: list[ConsumerRecord],
        work: list[_Item],
        dead: list[_Dead],
    ) -> _PartitionResult | None:
        """A partition's batch, after the partition's previous one. None: not applied,
        because the partition was sought back since these records were read (they come
        again from where it was sought)."""
        if previous is not None:
            await asyncio.wait([previous])
            if previous.cancelled() or previous.exception() is not None:
                # What failed it ends the run (its poll raises it) and the records are
                # read again from the last commit: nothing after it is applied first.
                raise _Abandoned(f"{tp.topic}[{tp.partition}]: an earlier batch failed")
        if self._seeks[tp] != seeks:
            return None
        result = await self._bounded(tp, records, work, dead)
        # At once, not when the poll settles: the partition's next batch, already
        # dispatched, must see the stall and step aside.
        self._judge(consumer, result)
        return result

    async def _settle(
        self,
        consumer: AIOKafkaConsumer,
        previous: asyncio.Task[None] | None,
        tasks: list[asyncio.Task[_PartitionResult | None]],
    ) -> None:
        """Commit a poll's offsets once its batches are applied and the poll before it
        committed (a partition's offsets only move forward)."""
        results = await asyncio.gather(*tasks)
        if previous is not None:
            await previous
        offsets = _offsets([r for r in results if r is not None])
        if offsets:
            await self._commit_offsets(consumer, offsets)

    async def _drain(self) -> None:
        """Wait until every poll in flight is applied and committed (what one raised is
        raised to the poll loop, which awaits it)."""
        if self._polls:
            await asyncio.wait(self._polls)

    async def _abandon(self) -> None:
        """Cancel the polls in flight: their transactions roll back, nothing commits."""
        work = [*self._polls, *self._tails.values()]
        for task in work:
            task.cancel()
        await asyncio.gather(*work, return_exceptions=True)
        self._polls.clear()
        self._tails.clear()

    def _judge(self, consumer: AIOKafkaConsumer, result: _PartitionResult) -> None:
        """Stall a partition whose batch failed transiently; note one that recovered."""
        if result.retry is not None:
            self._stall(consumer, result.tp, *result.retry)
        elif result.tp in self._stalls:
            stall = self._stalls.pop(result.tp)
            log.info(
                "partition recovered",
                extra={
                    "partition": f"{result.tp.topic}[{result.tp.partition}]",
                    "stalled_s": round(time.monotonic() - stall.since, 1),
                    "failures": stall.failures,
                },
            )
        STALLED.labels(self.name).set(len(self._stalls))

    async def _bounded(
        self,
        tp: TopicPartition,
        records: list[ConsumerRecord],
        work: list[_Item],
        dead: list[_Dead],
    ) -> _PartitionResult:
        async with self._parallel:
            return await self._process_partition(tp, records, work, dead)

    def _coalesces(self, parsed: dict[TopicPartition, tuple[list[_Item], list[_Dead]]]) -> bool:
        """A poll of at most ``coalesce_below`` records over several partitions."""
        works = [work for work, _ in parsed.values() if work]
        return len(works) >= 2 and sum(len(w) for w in works) <= self._coalesce_below

    async def _apply_together(
        self,
        batch: dict[TopicPartition, list[ConsumerRecord]],
        parsed: dict[TopicPartition, tuple[list[_Item], list[_Dead]]],
    ) -> list[_PartitionResult] | None:
        """A small poll over several partitions in one transaction (see _coalesces);
        None when the transaction failed (it rolled back whole, and the caller applies
        the poll partition by partition, where a failure is judged)."""
        works = [parsed[tp][0] for tp in sorted(batch) if parsed[tp][0]]
        size = sum(len(w) for w in works)
        try:
            await self._apply([item for work in works for item in work])
        except Exception as exc:  # judged again partition by partition
            log.info(
                "a poll applied as one transaction failed; applying it partition by partition",
                extra={"records": size, "error": f"{type(exc).__name__}: {exc}"[:300]},
            )
            return None
        return [
            await self._finish(tp, records, parsed[tp][1], None) for tp, records in batch.items()
        ]

    async def _commit_offsets(
        self, consumer: AIOKafkaConsumer, offsets: dict[TopicPartition, OffsetAndMetadata]
    ) -> None:
        """After the batch's transactions committed; a crash before this re-reads the
        batch, and the inbox drops what it applied (the crash tests stop here)."""
        # A partition revoked while its batch was applied is the new owner's to commit
        # (it re-reads the records; the inbox drops them): committing it here is an
        # IllegalStateError, which would read as a broker problem.
        assigned = consumer.assignment()
        offsets = {tp: o for tp, o in offsets.items() if tp in assigned}
        if not offsets:
            return
        try:
            await consumer.commit(offsets)
            self._broker_problem = None
            self.last_commit = time.time()
            LAST_COMMIT.labels(self.name).set(self.last_commit)
        except CommitFailedError:
            # The group rebalanced under us; the new owner re-reads these
            # records and the inbox drops what was already applied.
            log.warning("offset commit failed after rebalance", exc_info=True)
        except KafkaError as exc:
            # The broker is away: the records are applied (the inbox has them),
            # so reading them again after a restart costs nothing but time.
            self._broker_problem = f"offset commit failed: {type(exc).__name__}"
            log.warning("offset commit failed; records will be re-read", exc_info=True)

    def _stall(
        self, consumer: AIOKafkaConsumer, tp: TopicPartition, offset: int, cause: BaseException
    ) -> None:
        """Park the partition at the failed record and wake it after a backoff."""
        now = time.monotonic()
        previous = self._stalls.get(tp)
        failures = previous.failures + 1 if previous and previous.offset == offset else 1
        since = previous.since if previous and previous.offset == offset else now
        delay = self._retry.delay(failures, transient=True)
        error = f"{type(cause).__name__}: {cause}"[:300]
        self._stalls[tp] = _Stall(offset, failures, since, now + delay, error)
        TRANSIENT_FAILURES.labels(self.name).inc()
        if tp in consumer.assignment():
            consumer.seek(tp, offset)  # the records after it in this batch come again
            consumer.pause(tp)
        self._seeks[tp] += 1  # and those of later polls in flight
        log.warning(
            "transient failure; partition paused, will retry",
            extra={
                "partition": f"{tp.topic}[{tp.partition}]",
                "offset": offset,
                "failures": failures,
                "retry_in_s": round(delay, 2),
                "error": error,
            },
        )

    def _parse(self, records: list[ConsumerRecord]) -> tuple[list[_Item], list[_Dead]]:
        """The records of one partition as work for a transaction, and the malformed
        ones to dead-letter."""
        work: list[_Item] = []
        dead: list[_Dead] = []
        for record in records:
            if _not_ours(record.headers, self._handlers):
                # A catalog type this group has no handler for (a topic carries several,
                # the service's own events among them): skipped before its body is
                # parsed and validated, which cost a loyalty process under redemption
                # load ~4% of its CPU for events it then ignored. Its own group judges it.
                EVENTS.labels(self.name, record.topic, "ignored").inc()
                continue
            try:
                event = from_record(record.key, record.value, record.headers)
            except MalformedEvent as exc:
                # Poison on its own: the batch goes on without it.
                EVENTS.labels(self.name, record.topic, "malformed").inc()
                dead.append(_Dead(record, exc, attempts=0))
                continue
            handler = self._handlers.get(event.type)
            if handler is None:
                EVENTS.labels(self.name, record.topic, "ignored").inc()
                continue
            work.append(_Item(record, event, handler))
        return work, dead

    async def _process_partition(
        self,
        tp: TopicPartition,
        records: list[ConsumerRecord],
        work: list[_Item],
        dead: list[_Dead],
    ) -> _PartitionResult:
        """Apply the records of one partition in one transaction (split on failure),
        then dead-letter the poison ones; the offset to commit stops at the first
        record that is neither applied nor parked in the DLQ."""
        dead = list(dead)  # _apply_span adds the records it gives up on
        try:
            retry = await self._apply_span(work, dead)
        except Exception as exc:  # a bug of ours: read it again rather than skip it
            log.exception("could not apply a batch; will re-read it")
            retry = (records[0].offset, exc)
        return await self._finish(tp, records, dead, retry)

    async def _finish(
        self,
        tp: TopicPartition,
        records: list[ConsumerRecord],
        dead: list[_Dead],
        retry: tuple[int, BaseException] | None,
    ) -> _PartitionResult:
        """Dead-letter a partition's poison records up to where it stalls (or all of
        them); the offset to commit."""
        limit = retry[0] if retry is not None else records[-1].offset + 1
        for letter in sorted(dead, key=lambda d: d.record.offset):
            if letter.record.offset >= limit:
                break  # read again after the stall, judged again then
            try:
                await self._dead_letter(letter.record, letter.error, attempts=letter.attempts)
            except _RetryLater as later:
                # Applied records after it are in the inbox: re-reading them is free.
                return _PartitionResult(
                    tp, letter.record.offset, (letter.record.offset, later.cause)
                )
        return _PartitionResult(tp, limit, retry)

    async def _apply_span(
        self, items: list[_Item], dead: list[_Dead]
    ) -> tuple[int, BaseException] | None:
        """Apply ``items`` in one transaction; on failure split them in two and apply
        each half in order, down to the record that fails. Returns where to stall on a
        transient failure (everything before it is committed), else None."""
        if not items:
            return None
        try:
            await self._apply(items)
            return None
        except Exception as exc:
            verdict = classify(exc)
            if verdict is Verdict.TRANSIENT:
                return (items[0].record.offset, exc)
            if len(items) == 1:
                return await self._retry_one(items[0], exc, verdict, dead)
            log.info(
                "batch failed; splitting it to find the record that fails",
                extra={"records": len(items), "error": f"{type(exc).__name__}: {exc}"[:300]},
            )
        mid = len(items) // 2
        retry = await self._apply_span(items[:mid], dead)
        if retry is not None:
            return retry
        return await self._apply_span(items[mid:], dead)

    async def _retry_one(
        self, item: _Item, exc: BaseException, verdict: Verdict, dead: list[_Dead]
    ) -> tuple[int, BaseException] | None:
        """One record that failed alone: poison goes to the DLQ now, an unknown failure
        is tried again a bounded number of times (:class:`RetryPolicy`)."""
        attempt = 1
        with event_context(item.event.id, item.event.traceparent):
            while not self._retry.gives_up(verdict, attempt):
                log.warning(
                    "handler failed, retrying",
                    extra={"attempt": attempt, "event_type": item.event.type},
                    exc_info=exc,
                )
                await asyncio.sleep(self._retry.delay(attempt))
                attempt += 1
                try:
                    await self._apply([item])
                    return None
                except Exception as again:
                    exc, verdict = again, classify(again)
                    if verdict is Verdict.TRANSIENT:
                        return (item.record.offset, exc)
        outcome = "rejected" if verdict is Verdict.POISON else "exhausted"
        EVENTS.labels(self.name, item.record.topic, outcome).inc()
        dead.append(_Dead(item.record, exc, attempts=attempt))
        return None

    async def _apply(self, items: list[_Item]) -> None:
        """One transaction: the inbox claim of ``items`` and their handlers (a span when
        tracing is on, which each event's span links to). The items are of one partition
        (see _process_partition), or of a small poll's partitions one after another
        (_apply_together)."""
        topics = sorted({i.record.topic for i in items})
        partitions = sorted({i.record.partition for i in items})
        started = time.perf_counter()
        with batch_span(
            f"apply {topics[0]}" if len(topics) == 1 else f"apply {len(topics)} topics",
            lambda: {
                "messaging.consumer.group.name": self.name,
                "messaging.destination.name": ",".join(topics),
                "messaging.destination.partition.id": ",".join(map(str, partitions)),
                "messaging.batch.message_count": len(items),
            },
        ):
            async with self._sessionmaker.begin() as session:
                claimed = await apply_in_one_transaction(
                    session, self._claim, self.name, [(i.event, i.handler) for i in items]
                )
        BATCH_APPLY.labels(self.name).observe(time.perf_counter() - started)
        fresh = {e.id for e in claimed.applied}
        outcomes: Tally[tuple[str, str]] = Tally()
        for i in items:  # a repeated id: its first record is the one applied
            outcomes[i.record.topic, "applied" if i.event.id in fresh else "duplicate"] += 1
            fresh.discard(i.event.id)
        for (topic, outcome), n in outcomes.items():
            EVENTS.labels(self.name, topic, outcome).inc(n)

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
        try:
            async with asyncio.timeout(self._kafka.send_timeout_s):
                await self._dlq.send_and_wait(
                    topic, value=record.value, key=record.key, headers=headers
                )
        except (KafkaError, TimeoutError) as send_exc:
            # The broker is away: the record stays where it is until it can be parked.
            raise _RetryLater(TransientError(f"could not publish to {topic}")) from send_exc
        log.error(
            "event dead-lettered",
            extra={"dlq": topic, "error": error, "offset": record.offset},
        )
        EVENTS.labels(self.name, record.topic, "dead_lettered").inc()

    async def check_offsets(self) -> set[TopicPartition]:
        """Reset partitions whose position or committed offset is past the log end.

        Returns the partitions reset (their records in hand are stale). Runs between
        batches; failures are logged and the check is tried again at the next interval.
        """
        consumer = self._consumer
        self._next_offset_check = time.monotonic() + self._offset_check_interval
        if consumer is None:
            return set()
        try:
            async with asyncio.timeout(self._kafka.request_timeout_ms / 1000):
                reset = await self._reset_offsets_ahead(consumer)
        except (KafkaError, TimeoutError, OSError) as exc:
            detail = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            self._broker_problem = f"broker not answering: {detail}"[:300]
            log.warning("offset check failed; will try again", extra={"error": repr(exc)})
            return set()
        self._broker_problem = None
        return reset

    async def _watch_topics(self) -> None:
        while True:
            await asyncio.sleep(self._offset_check_interval)
            consumer = self._consumer
            if consumer is None:
                continue
            try:
                async with asyncio.timeout(self._kafka.request_timeout_ms / 1000):
                    await self._check_topics(consumer)
            except asyncio.CancelledError:
                raise
            except Exception as exc:  # the broker away, an admin call refused: next time
                log.warning("topic check failed; will try again", extra={"error": repr(exc)})

    async def _check_topics(self, consumer: AIOKafkaConsumer) -> None:
        existing = await consumer.topics()
        missing = [t for t in self._topics if t not in existing]
        if missing and not self._missing_topics:
            log.error("subscribed topics missing on the broker", extra={"topics": missing})
        self._missing_topics = missing
        if missing and self._recreate_topics is not None:
            await self._recreate_topics()
        # ``consumer.topics()`` reads fresh metadata apart from the client's own, which
        # the group's assignment follows and aiokafka refreshes only every
        # metadata_max_age_ms (5 min). A topic deleted and created again (by us just
        # now, or by an operator) that the client still knows without partitions is
        # one the member never fetches from: on Apache Kafka the refresh forced right
        # after our create often came before the broker listed the new partitions,
        # and the member then sat idle for minutes. Refresh until the client sees
        # every subscribed topic the broker has.
        unseen = [t for t in self._topics if not consumer._client.cluster.partitions_for_topic(t)]
        if unseen:
            consumer._client.force_metadata_update()

    async def _reset_offsets_ahead(self, consumer: AIOKafkaConsumer) -> set[TopicPartition]:
        assigned = sorted(consumer.assignment())
        if not assigned:
            return set()
        ends = await consumer.end_offsets(assigned)
        reset: set[TopicPartition] = set()
        suspects: set[TopicPartition] = set()
        for tp in assigned:
            if tp not in ends:
                continue
            position = await consumer.position(tp)
            if tp in self._resets and position >= self._resets[tp].end:
                self._resets.pop(tp)  # read again up to where the log was: ready
                log.info("partition caught up after offset reset", extra={"partition": str(tp)})
            verdict = offset_ahead(
                position=position,
                committed=await consumer.committed(tp),
                end_offset=ends[tp],
                highwater=consumer.highwater(tp),
                suspected_before=tp in self._suspects,
            )
            if verdict is None:
                continue
            if verdict == "suspect":
                suspects.add(tp)
                continue
            start = (await consumer.beginning_offsets([tp]))[tp]
            detail = f"{verdict}; reset to {start}"
            log.error(
                "consumer offset ahead of the log (broker restored empty, topic recreated?); "
                "re-reading from the earliest retained offset",
                extra={"partition": f"{tp.topic}[{tp.partition}]", "detail": detail},
            )
            OFFSET_RESETS.labels(self.name, tp.topic).inc()
            self.offset_resets += 1
            async with self._batch_lock:
                await self._drain()
                consumer.seek(tp, start)
                self._seeks[tp] += 1
                self._stalls.pop(tp, None)
                await consumer.commit({tp: OffsetAndMetadata(start, "")})
            self._resets[tp] = _Reset(end=max(ends[tp], consumer.highwater(tp) or 0), detail=detail)
            reset.add(tp)
        self._suspects = suspects
        return reset

    def _forget(self, partitions: Any) -> None:
        """Partitions another member owns now: their stalls are its business."""
        for tp in partitions:
            self._stalls.pop(tp, None)
            self._resets.pop(tp, None)
            self._tails.pop(tp, None)


def _offsets(results: Sequence[_PartitionResult]) -> dict[TopicPartition, OffsetAndMetadata]:
    return {r.tp: OffsetAndMetadata(r.next_offset, "") for r in results}


class _Rebalance(ConsumerRebalanceListener):
    def __init__(self, consumer: EventConsumer) -> None:
        self._consumer = consumer

    async def on_partitions_revoked(self, revoked: Any) -> None:
        # The polls in flight commit their offsets before the partitions move.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(60):
                async with self._consumer._batch_lock:
                    await self._consumer._drain()
        self._consumer._forget(revoked)

    async def on_partitions_assigned(self, assigned: Any) -> None:
        # Check the new partitions' offsets against their logs before the first batch.
        self._consumer._next_offset_check = 0.0
