"""The transactional outbox: events commit with the state change that causes them.

``Outbox.add`` inserts into the caller's transaction (it never commits). The
:class:`OutboxRelay` publishes committed rows and marks them sent:

* it claims rows by state (``sent_at IS NULL``), never by "ids after the last one I
  saw", so a transaction that commits late is still published;
* rows are spread over shards by key, and a relay holds a shard's advisory lock for the
  whole claim-publish-mark transaction, so with any number of replicas one key is
  published by one relay at a time, in id order, and no row twice concurrently;
* every send has a timeout; on failure the transaction rolls back and the rows stay
  pending, so a broker outage delays events and never loses them;
* a relay killed after publishing but before marking publishes again: the event id is
  unchanged, and consumers' inboxes drop the repeat.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import zlib
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import asyncpg
from aiokafka import AIOKafkaProducer
from aiokafka.errors import (
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    OutOfOrderSequenceNumber,
    ProducerFenced,
)
from aiokafka.producer.message_accumulator import BatchBuilder
from prometheus_client import Counter, Gauge
from pydantic_core import from_json, to_json
from sqlalchemy import Table, bindparam, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from afterglow.events import tracing
from afterglow.events.batch import unnest_insert
from afterglow.events.catalog import EventData, topic_for
from afterglow.events.context import current_traceparent
from afterglow.events.envelope import CloudEvent, data_bytes, headers_of, record_key
from afterglow.events.kafka import KeyPartitioner
from afterglow.events.listen import Listener
from afterglow.events.shutdown import stop_within
from afterglow.events.tables import OUTBOX_SHARDS, EventTables, notify_channel

log = logging.getLogger(__name__)

PUBLISHED = Counter("afterglow_outbox_published_total", "Events published by the relay", ["schema"])
PUBLISH_FAILURES = Counter(
    "afterglow_outbox_publish_failures_total", "Relay batches that failed", ["schema"]
)
LAST_PUBLISH = Gauge(
    "afterglow_outbox_last_publish_timestamp", "Unix time of the last relay batch", ["schema"]
)
# What is waiting, measured by the relay every BACKLOG_INTERVAL_S even while it drains a
# backlog: a relay that publishes (LAST_PUBLISH moves) but falls behind, or rows stuck
# behind a poison row, show only here. Alerted on in deploy/ (oldest row > 1 minute).
BACKLOG = Gauge("afterglow_outbox_backlog_rows", "Outbox rows not yet published", ["schema"])
OLDEST_AGE = Gauge(
    "afterglow_outbox_oldest_unsent_age_seconds",
    "Age of the oldest outbox row not yet published (0 when none waits)",
    ["schema"],
)
BACKLOG_INTERVAL_S = 15.0


def shard_of(key: str) -> int:
    return zlib.crc32(key.encode()) % OUTBOX_SHARDS


OUTBOX_COLUMNS = ("event_id", "event_type", "topic", "key", "shard", "headers", "value")


# Slotted, not frozen: a frozen dataclass's __init__ sets each field through
# object.__setattr__, and the journey engine builds two or three rows per event.
# Nothing changes a row after it is built.
@dataclass(slots=True)
class OutboxRow:
    """An event as its outbox row holds it: what :func:`~afterglow.events.to_record`
    puts on the wire, with the headers as JSON text (a record's headers encoded only to
    be decoded again for the JSON were ~5% of a journey batch)."""

    event_id: str
    event_type: str
    topic: str
    key: str
    headers: str
    value: bytes

    @classmethod
    def of(cls, event: CloudEvent[Any]) -> OutboxRow:
        return outbox_row(
            event.data,
            tenant_id=event.tenantid,
            subject=event.subject,
            source=event.source,
            id=event.id,
            time=event.time,
            # "" is no traceparent (as None is in the envelope), not the current one.
            traceparent=event.traceparent or "",
        )


def outbox_row(
    data: EventData,
    *,
    tenant_id: str,
    subject: str,
    source: str,
    id: str,
    time: datetime,
    traceparent: str | None = None,
) -> OutboxRow:
    """The row of the event ``CloudEvent.new(data, ...)`` would build, from its parts,
    without building the envelope: for a producer whose attributes are valid already
    (the tenant and subject those of a parsed event, whose envelope passed the same
    validators, or of a row written from one; the id derived or random; the time
    aware; ``data`` a catalog model its constructor validated), so nothing is
    validated again. The journey engine emits two or three events per order.placed and
    per timer; their envelopes, built only to be read back into the row, cost ~9 us
    of the ~62 us its step and outbox binds took per order.placed. ``traceparent``
    defaults to that of the work in progress, as ``CloudEvent.new``'s does ("": none)."""
    if traceparent is None:
        traceparent = current_traceparent.get()
    event_type = data.type
    key = record_key(tenant_id, subject)
    headers = headers_of(id, source, event_type, time, subject, tenant_id, traceparent)
    return OutboxRow(
        id,
        event_type,
        topic_for(event_type),
        key,
        # pydantic-core's encoder, not json.dumps: the stdlib's was ~4.5% of a journey
        # timer round, for a text PostgreSQL parses into jsonb either way.
        to_json(headers).decode(),
        data_bytes(data),
    )


def _insert_rows(table: Table) -> Any:
    """One statement text for any number of events (:func:`unnest_insert`), so it is
    compiled and prepared once: a ``VALUES`` list of N rows was a new statement for
    every N, and compiling it cost more than the rest of a journey batch. Rows come
    out of unnest in array order, so ids follow the events' order (the relay publishes
    a key's events in id order). A repeated event id is the same event: the first is
    kept and nothing is said."""
    return unnest_insert(table, OUTBOX_COLUMNS, json_text=("headers",)).on_conflict_do_nothing(
        index_elements=["event_id"]
    )


class Outbox:
    """Adds events to a service's outbox inside the caller's transaction."""

    def __init__(self, tables: EventTables) -> None:
        self._table: Table = tables.outbox
        self._insert = _insert_rows(self._table)

    async def add(self, session: AsyncSession, *events: CloudEvent[Any]) -> None:
        if not events:
            return
        await session.execute(self._insert, self.params(*events))

    @property
    def insert(self) -> Any:
        """The insert :meth:`add` executes, for a caller that sends it with its other
        writes in one statement (afterglow.events.batch.writes_in_one_statement); bind
        it with :meth:`params`."""
        return self._insert

    def params(self, *events: CloudEvent[Any] | OutboxRow) -> dict[str, list[Any]]:
        """The binds of :attr:`insert` for ``events``, envelopes or rows built by
        :func:`outbox_row` (none: no row)."""
        rows = [e if isinstance(e, OutboxRow) else OutboxRow.of(e) for e in events]
        return {
            "event_id": [r.event_id for r in rows],
            "event_type": [r.event_type for r in rows],
            "topic": [r.topic for r in rows],
            "key": [r.key for r in rows],
            "shard": [shard_of(r.key) for r in rows],
            "headers": [r.headers for r in rows],
            "value": [r.value for r in rows],
        }


# An idempotent producer whose sequence state the broker no longer accepts (a broker
# that restarted and lost or rolled back its producer state answers
# OutOfOrderSequenceNumber to every send after): that producer never recovers, and a
# relay that kept it left 449 rows unsent for good in the fault suite. A new one does.
PRODUCER_STATE_LOST = (
    OutOfOrderSequenceNumber,
    InvalidProducerEpoch,
    InvalidProducerIdMapping,
    ProducerFenced,
)


class OutboxRelay:
    """Publishes committed outbox rows in order per key and marks them sent."""

    def __init__(
        self,
        engine: AsyncEngine,
        tables: EventTables,
        producer: AIOKafkaProducer,
        *,
        batch_size: int = 500,
        poll_interval_s: float = 1.0,
        send_timeout_s: float = 15.0,
        max_backoff_s: float = 30.0,
        sent_retention_s: float = 86_400.0,
        keepalive_interval_s: float = 30.0,
        renew_producer: Callable[[], Awaitable[AIOKafkaProducer]] | None = None,
    ) -> None:
        self._engine = engine
        self._tables = tables
        self._schema = tables.schema
        self._producer = producer
        # Builds and starts a producer to replace one whose state the broker refuses.
        self._renew_producer = renew_producer
        self._batch_size = batch_size
        # The producers' own partitioning (build_producer), applied here because the
        # relay hands the producer whole batches for a partition it names.
        self._partitioner = KeyPartitioner()
        self._poll_interval = poll_interval_s
        self._send_timeout = send_timeout_s
        self._max_backoff = max_backoff_s
        self._retention = sent_retention_s
        self._wake = asyncio.Event()
        self._listener = Listener(
            engine,
            notify_channel(self._schema),
            self._wake,
            name=f"afterglow-outbox-listen:{self._schema}",
            connect_timeout_s=send_timeout_s,
            keepalive_interval_s=keepalive_interval_s,
            max_backoff_s=max_backoff_s,
        )
        # The listening connection's name in pg_stat_activity.
        self.listener_name = self._listener.name
        # Namespaces the advisory locks per schema so services never contend.
        self._lock_ns = zlib.crc32(f"outbox:{self._schema}".encode()) & 0x7FFFFFFF
        self.last_success: float | None = None
        t = f'"{self._schema}".outbox'
        self._claim_shards = text(
            "SELECT s FROM generate_series(0, :n - 1) AS s WHERE pg_try_advisory_xact_lock(:ns, s)"
        )
        # Up to ``limit`` unsent rows of the shards held, read shard by shard
        # through ix_outbox_unsent (shard, id): each shard yields at most ``per_shard``
        # ids in id order (a prefix of its rows, so a key's rows still go in order) and
        # the merge keeps the first ``limit``. ``shard = ANY(:shards) ORDER BY id``
        # could not use the index's order across shards: it read and sorted every
        # unsent row, so a claim cost grew with the backlog (72 ms per claim, half of
        # PostgreSQL's CPU while a million timers fired). See :meth:`claim`.
        self._claim_rows = text(
            # The headers as text, parsed by pydantic-core in _publish: the driver's
            # jsonb codec (the stdlib's json.loads) had 25 samples to the relay's 185.
            "SELECT o.id, o.topic, o.key, o.shard,"  # noqa: S608
            f" CAST(o.headers AS text) AS headers, o.value FROM {t} o "
            # ARRAY(...): the ids are looked up by primary key; as ``IN (SELECT ...)``
            # the planner could hash-join them against every unsent row.
            "WHERE o.sent_at IS NULL AND o.id = ANY(ARRAY("
            " SELECT u.id FROM unnest(CAST(:shards AS int[])) AS s(shard)"
            " CROSS JOIN LATERAL ("
            f"  SELECT id FROM {t} WHERE sent_at IS NULL AND shard = s.shard"
            "   ORDER BY id LIMIT :per_shard) u"
            " ORDER BY u.id LIMIT :limit)) "
            "ORDER BY o.id FOR UPDATE SKIP LOCKED"
        )
        # The claim's plan, pinned for its transaction. A queue's statistics are a poor
        # guide to its backlog: with none yet (a new service's outbox, a bench's), a
        # shard of a backlog is estimated at a row or two, and from about 40,000 rows
        # the planner read each shard with a bitmap scan
        # of all its unsent rows and a sort instead of following ix_outbox_unsent's
        # order. In the journeys bench that was 20-92 ms a claim of 500 rows against
        # ~3 ms in order, and the longer the backlog (a broker outage) the slower it
        # drained. With bitmap and sequential scans off, the index's plan is the only
        # one left: a share a shard, in id order. set_config(..., true) is SET LOCAL: it
        # ends with the transaction, so nothing else on the pooled connection is
        # planned this way.
        self._plan_claim = text(
            "SELECT set_config('enable_bitmapscan', 'off', true),"
            " set_config('enable_seqscan', 'off', true)"
        )
        self._mark_sent = text(
            f"UPDATE {t} SET sent_at = now(), attempts = attempts + 1 "  # noqa: S608
            "WHERE id = ANY(:ids)"
        ).bindparams(bindparam("ids"))
        # Served by the partial index ix_outbox_unsent: cheap while the backlog is small,
        # and run at most every BACKLOG_INTERVAL_S when it is not.
        self._backlog = text(
            "SELECT count(*) AS n, "  # noqa: S608
            "coalesce(extract(epoch FROM now() - min(created_at)), 0) AS oldest_s "
            f"FROM {t} WHERE sent_at IS NULL"
        )
        self._purge = text(
            f"DELETE FROM {t} WHERE id IN (SELECT id FROM {t} "  # noqa: S608
            "WHERE sent_at < now() - make_interval(secs => :secs) LIMIT 5000)"
        )

    def wake(self) -> None:
        self._wake.set()

    @property
    def claim_statement(self) -> Any:
        """The SELECT that claims a batch (parameters ``shards``, ``limit`` and
        ``per_shard``; a test reads its plan in the transaction of a :meth:`claim`,
        which pins it)."""
        return self._claim_rows

    @property
    def shard_lock_namespace(self) -> int:
        """The first key of the advisory locks a batch takes on its shards: whoever
        holds (ns, shard) keeps every relay of this schema off that shard."""
        return self._lock_ns

    async def publish_once(self) -> int:
        """Claim, publish and mark one batch. Returns how many rows were published."""
        async with self._engine.begin() as conn:
            shards = [
                r[0]
                for r in await conn.execute(
                    self._claim_shards, {"n": OUTBOX_SHARDS, "ns": self._lock_ns}
                )
            ]
            if not shards:
                return 0
            rows = await self.claim(conn, shards)
            if not rows:
                return 0
            await self._publish(rows)
            await conn.execute(self._mark_sent, {"ids": [r.id for r in rows]})
        PUBLISHED.labels(self._schema).inc(len(rows))
        return len(rows)

    def claim_params(self, shards: list[int]) -> dict[str, Any]:
        """The binds of :attr:`claim_statement`'s first read of ``shards``."""
        share = self.shard_share(len(shards))
        return {"shards": shards, "limit": self._batch_size, "per_shard": share}

    def shard_share(self, shards: int) -> int:
        """How many rows a claim first reads from each of ``shards`` shards."""
        return min(self._batch_size, 2 * -(-self._batch_size // shards))

    async def claim(self, conn: Any, shards: list[int]) -> list[Any]:
        """Up to ``batch_size`` unsent rows of ``shards``, locked: each shard's oldest,
        the batch's the oldest of those.

        First with each shard read up to its even share of the batch (twice over): a
        backlog spread over the shards fills the batch from that, and the claim reads
        about two batches' worth of the index instead of one per shard. A shard that gave
        its whole share and a batch left short means the backlog sits in a few shards:
        the claim is read again with each shard up to the whole batch, as before.
        (Measured on a 30,000-row backlog, 1,000-row claims: ~4.5 against ~9.5 us of
        PostgreSQL per row claimed.)"""
        await conn.execute(self._plan_claim)
        params = self.claim_params(shards)
        limit, share = params["limit"], params["per_shard"]
        rows = (await conn.execute(self._claim_rows, params)).all()
        if share < limit and len(rows) < limit:
            per_shard: dict[int, int] = {}
            for r in rows:
                per_shard[r.shard] = per_shard.get(r.shard, 0) + 1
            if max(per_shard.values(), default=0) >= share:
                params["per_shard"] = limit
                rows = (await conn.execute(self._claim_rows, params)).all()
        return rows

    async def _publish(self, rows: Iterable[Any]) -> None:
        """Send the claimed rows as record batches, one per partition (more when one
        fills up), and wait for the broker to acknowledge every batch.

        A key's rows go to its partition (the partitioner every producer uses) in id
        order, and a partition's batches are queued in order, so a key's events keep
        their order. One ``send`` per row cost more than the rest of the relay: ~42%
        of its samples, each record through the producer's accumulator with a future of
        its own; a batch is built by aiokafka's compiled record builder and has one."""
        producer = self._producer
        partitions: dict[str, list[int]] = {}
        batches: dict[tuple[str, int], BatchBuilder] = {}
        futures = []
        spans = []
        traced = tracing.enabled()
        for row in rows:
            headers = [(k, v.encode()) for k, v in from_json(row.headers)]
            if traced:
                # A span per send, child of the row's trace; the header names it.
                span, headers = tracing.publishing(row.topic, headers)
                spans.append(span)
            key = row.key.encode()
            parts = partitions.get(row.topic)
            if parts is None:
                parts = partitions[row.topic] = sorted(await producer.partitions_for(row.topic))
            tp = (row.topic, self._partitioner(key, parts, parts))
            batch = batches.get(tp)
            if batch is None:
                batch = batches[tp] = producer.create_batch()
            if batch.append(timestamp=None, key=key, value=row.value, headers=headers) is None:
                # Full: it goes now, and the row opens the partition's next batch (a
                # batch's first record always fits, whatever its size).
                futures.append(await producer.send_batch(batch, tp[0], partition=tp[1]))
                batch = batches[tp] = producer.create_batch()
                batch.append(timestamp=None, key=key, value=row.value, headers=headers)
        for (topic, partition), batch in batches.items():
            batch.close()  # complete: the sender need not linger for more records
            futures.append(await producer.send_batch(batch, topic, partition=partition))
        try:
            # Every send has a deadline: a dead broker must not hold the shard locks
            # forever. asyncio.timeout, not wait_for: see afterglow.events.shutdown.
            async with asyncio.timeout(self._send_timeout):
                await asyncio.gather(*futures)
        except BaseException as exc:
            for span in spans:
                span.record_exception(exc)
            raise
        finally:
            for span in spans:
                span.end()

    async def run(self) -> None:
        """Publish until cancelled: woken by NOTIFY, or by a short poll as a fallback."""
        listener = asyncio.create_task(self._listener.run(), name=f"outbox-listen-{self._schema}")
        backoff = 0.5
        last_purge = 0.0
        last_measure = 0.0
        loop = asyncio.get_running_loop()
        try:
            while True:
                self._wake.clear()
                if loop.time() - last_measure >= BACKLOG_INTERVAL_S:
                    last_measure = loop.time()
                    await self.measure_backlog()
                try:
                    published = await self.publish_once()
                    backoff = 0.5
                    self.last_success = loop.time()
                    LAST_PUBLISH.labels(self._schema).set_to_current_time()
                except asyncio.CancelledError:
                    raise
                except PRODUCER_STATE_LOST as exc:
                    PUBLISH_FAILURES.labels(self._schema).inc()
                    await self._renew(exc)
                    continue
                except Exception:
                    PUBLISH_FAILURES.labels(self._schema).inc()
                    log.exception("outbox relay batch failed; rows stay pending")
                    await asyncio.sleep(backoff * (1 + random.random()))
                    backoff = min(backoff * 2, self._max_backoff)
                    continue
                if published >= self._batch_size:
                    continue  # a backlog: drain it without waiting
                if loop.time() - last_purge > 60:
                    last_purge = loop.time()
                    await self._purge_sent()
                # asyncio.timeout, not wait_for: a NOTIFY landing with the shutdown's
                # cancel made wait_for swallow the cancel (afterglow.events.shutdown).
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(self._poll_interval):
                        await self._wake.wait()
        finally:
            listener.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await listener

    @property
    def producer(self) -> AIOKafkaProducer:
        return self._producer

    async def _renew(self, cause: BaseException) -> None:
        """Replace the producer (the rows stay pending and go out through the new one,
        in order: they were not marked sent)."""
        if self._renew_producer is None:
            log.error("outbox producer refused by the broker (%s); rows stay pending", cause)
            await asyncio.sleep(self._max_backoff)
            return
        log.warning("outbox producer refused by the broker (%r); starting a new one", cause)
        try:
            fresh = await self._renew_producer()
        except Exception:  # the broker away again: the next failure tries again
            log.warning("a new outbox producer could not start", exc_info=True)
            await asyncio.sleep(self._max_backoff * random.random())
            return
        old, self._producer = self._producer, fresh
        await stop_within(old.stop, timeout_s=10, what="refused outbox producer")

    async def measure_backlog(self) -> None:
        """Set the backlog gauges; a failure leaves them as they were (the relay's own
        failure is counted by PUBLISH_FAILURES)."""
        try:
            async with self._engine.connect() as conn:
                row = (await conn.execute(self._backlog)).one()
        except Exception:
            log.warning("outbox backlog measurement failed", exc_info=True)
            return
        BACKLOG.labels(self._schema).set(row.n)
        OLDEST_AGE.labels(self._schema).set(float(row.oldest_s))

    async def _purge_sent(self) -> None:
        try:
            async with self._engine.begin() as conn:
                await conn.execute(self._purge, {"secs": self._retention})
        except Exception:
            log.warning("outbox purge failed", exc_info=True)

    @property
    def keepalives(self) -> int:
        return self._listener.keepalives

    @property
    def notifications(self) -> int:
        return self._listener.notifications

    async def keepalive(self, conn: asyncpg.Connection) -> None:
        """Notice a dead listening connection (a restarted server, a cut link)."""
        await self._listener.keepalive(conn)
