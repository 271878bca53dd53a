"""The webhook hot path's storage: concurrent requests share one commit.

A receiver verifies the signature, hands the raw delivery to :class:`DeliveryWriter`
and waits. A writer task takes every delivery waiting at that moment, inserts them in
one multi-row ``INSERT ... ON CONFLICT DO NOTHING RETURNING id`` and commits, then
releases each request: stored now (2xx ``received``) or stored before (``duplicate``).
So a 2xx still means "committed", while a burst of N requests costs one round trip and
one fsync instead of N transactions each holding a pooled connection (at flash-sale
rates the per-request transactions ran the pool dry: QueuePool timeouts, answered 500).
Normalization, the order book and the events follow in :mod:`afterglow.ingest.processing`.

Requests waiting for a commit are bounded: past ``ingest_intake_max_waiting`` the
receiver answers 503 with Retry-After at once (senders retry), instead of queueing
until the sender times out. A failed commit is also a 503: nothing of the batch was
stored, and each sender retries its own delivery.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import json
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from afterglow.events.tracing import current as current_traceparent
from afterglow.ingest import intake_store
from afterglow.ingest.intake import delivery_id_for, stored_key
from afterglow.kit.errors import AppError

log = logging.getLogger(__name__)

RECEIVED = "received"


class Overloaded(AppError):
    """503 with Retry-After: every platform retries it later; nothing was stored."""

    status_code, code = 503, "overloaded"


@dataclass(frozen=True)
class NewDelivery:
    """A verified delivery as the hot path stores it (raw body, not normalized)."""

    tenant_id: str
    platform: str
    topic: str
    dedupe_key: str
    headers: dict[str, str]
    body: bytes
    received_at: datetime
    status: str = RECEIVED
    next_attempt_at: datetime | None = None
    last_error: str | None = None
    # The receiving request's trace (afterglow.events.tracing), taken where the
    # delivery is built, inside the request: the writer task that stores it is not.
    traceparent: str | None = field(default_factory=current_traceparent)

    @functools.cached_property
    def id(self) -> str:
        # Cached: a uuid5 read by the batch's dedupe, the row and the answer.
        return delivery_id_for(self.tenant_id, self.platform, self.dedupe_key)

    def row(self) -> tuple[Any, ...]:
        """The values of :data:`_COLUMNS`, in their order."""
        return (
            self.id,
            self.tenant_id,
            self.platform,
            self.topic,
            stored_key(self.dedupe_key),
            self.status,
            self.received_at,
            json.dumps(self.headers),
            self.body,
            self.next_attempt_at,
            self.last_error,
            self.traceparent,
        )


@dataclass
class _Waiting:
    delivery: NewDelivery
    stored: asyncio.Future[bool]


# One statement text whatever the batch size: the columns travel as arrays and
# unnest() turns them into rows. A multi-row VALUES list is a new statement for each
# batch size (compiled, prepared and planned again: most of a commit's CPU). The
# statement is intake_store's; its binds are these names.
_COLUMNS = (
    "id",
    "tenant_id",
    "platform",
    "topic",
    "dedupe_key",
    "status",
    "received_at",
    "headers",  # JSON text, cast to jsonb by the statement
    "body",
    "next_attempt_at",
    "last_error",
    "traceparent",
)


class DeliveryWriter:
    """Group commit of raw deliveries. ``run()`` is started ``writers`` times: while one
    batch commits, the next one gathers."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        max_waiting: int,
        max_batch: int,
        retry_after_s: int,
        on_commit: Callable[[], None] = lambda: None,
    ) -> None:
        self._engine = engine
        self.max_waiting = max_waiting
        self._max_batch = max_batch
        self._retry_after = str(retry_after_s)
        self._on_commit = on_commit
        self._queue: deque[_Waiting] = deque()
        self._ready = asyncio.Event()
        self.waiting = 0  # requests in store(): queued or in a commit under way
        # When the last request came to store() (loop time): the processing worker
        # keeps its rounds short while requests keep coming, not only while some wait.
        self.last_arrival = float("-inf")
        # Deliveries this process stored so far: the processing worker sizes a round
        # under a steady load by what was stored since its previous round began.
        self.stored_total = 0
        self._idle = asyncio.Event()  # set while no request waits
        self._idle.set()

    async def until_idle(self) -> None:
        """Return at the first moment no request waits for its commit (at once if none
        does now)."""
        await self._idle.wait()

    def arrived_within(self, seconds: float) -> bool:
        """Whether a request came to :meth:`store` in the last ``seconds``."""
        return asyncio.get_running_loop().time() - self.last_arrival < seconds

    def overloaded(self) -> Overloaded:
        return Overloaded(
            "too many deliveries are waiting to be stored; retry later",
            headers={"Retry-After": self._retry_after},
        )

    async def store(self, delivery: NewDelivery) -> bool:
        """Wait until the delivery is committed: True if stored now, False if it was
        stored before (a duplicate). Past the bound of waiting requests it is refused
        at once (503), so memory and waiting time stay bounded under overload. A
        request cancelled meanwhile (the client left) may still be stored: the
        sender's retry is then answered as a duplicate."""
        loop = asyncio.get_running_loop()
        self.last_arrival = loop.time()
        if self.waiting >= self.max_waiting:
            raise self.overloaded()
        waiting = _Waiting(delivery, loop.create_future())
        self.waiting += 1
        self._idle.clear()
        try:
            self._queue.append(waiting)
            self._ready.set()
            return await waiting.stored
        finally:
            self.waiting -= 1
            if self.waiting == 0:
                self._idle.set()

    async def run(self) -> None:
        # Each writer task holds one connection across its batches: checked out of the
        # pool per batch it cost a ping on checkout and a rollback on return, two round
        # trips and ~15% of the writer's CPU per commit. A failed batch drops it (a
        # server restart, a broken socket) and the next batch connects again.
        held = _Held()
        try:
            while True:
                await self._ready.wait()
                batch: list[_Waiting] = []
                while self._queue and len(batch) < self._max_batch:
                    batch.append(self._queue.popleft())
                if not self._queue:
                    self._ready.clear()
                if batch:
                    await self._commit(held, batch)
        finally:
            await held.drop()

    async def _commit(self, held: _Held, batch: list[_Waiting]) -> None:
        # The same delivery twice in one batch (a sender retrying fast): the first
        # is the one stored, the other one is its duplicate.
        first: dict[str, _Waiting] = {}
        for w in batch:
            first.setdefault(w.delivery.id, w)
        try:
            reused = held.conn is not None
            try:
                inserted = await self._insert(held, first)
            except DBAPIError as exc:
                if not (reused and exc.connection_invalidated):
                    raise
                # The held connection was gone (the server restarted while it idled):
                # once more on a new one, as the pool's ping on checkout would have.
                # Rows the lost attempt did commit come back as duplicates: stored.
                await held.drop()
                inserted = await self._insert(held, first)
        except Exception:
            # Nothing of the batch is stored: every sender retries its own delivery.
            log.exception("storing %d deliveries failed; answered 503", len(batch))
            for w in batch:
                if not w.stored.done():
                    w.stored.set_exception(self.overloaded())
            await held.drop()
            return
        self.stored_total += len(inserted)
        for w in batch:
            if not w.stored.done():  # done: cancelled, its client left
                w.stored.set_result(first[w.delivery.id] is w and w.delivery.id in inserted)
        self._on_commit()

    async def _insert(self, held: _Held, first: dict[str, _Waiting]) -> set[str]:
        if held.conn is None:
            # Autocommit: the batch is ONE statement, committed by PostgreSQL when it
            # completes (asyncpg returns its rows after that commit), so a BEGIN and a
            # COMMIT around it were two more round trips per batch; at 50 orders/s a
            # batch is mostly one delivery, and they were 7% of ingest's samples at 200/s.
            conn = await self._engine.connect()
            held.conn = await conn.execution_options(isolation_level="AUTOCOMMIT")
        async with held.conn.begin():
            rows = [w.delivery.row() for w in first.values()]
            params = {name: [r[i] for r in rows] for i, name in enumerate(_COLUMNS)}
            return await intake_store.insert_raw_deliveries(held.conn, params)


@dataclass
class _Held:
    """A writer task's connection, kept between its batches."""

    conn: AsyncConnection | None = None

    async def drop(self) -> None:
        conn, self.conn = self.conn, None
        if conn is not None:
            with contextlib.suppress(Exception):
                await conn.invalidate()
                await conn.close()
