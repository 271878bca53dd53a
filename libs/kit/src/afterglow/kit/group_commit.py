"""Group commit: concurrent requests share one transaction.

A hot write path (a redemption, a webhook) that runs its own transaction per request
pays a pool checkout, several round trips and an fsync each time; at flash-sale rates
those transactions ran the pool dry (QueuePool timeouts answered 500) long before the
CPU was busy. With :class:`GroupCommit`, a request hands its item over and waits on a
future; a writer task takes every item waiting at that moment (up to ``max_batch``),
applies them with one call of ``apply`` (the caller's one transaction, set-based) and
releases each request with its own outcome. Several writers (``start(n)``) let one
batch gather while another commits; each holds at most one pooled connection.

``apply(items)`` returns one outcome per item, in order: a value, or an exception
instance that is raised in that item's request alone (a business error such as "not
enough points" never fails the other items of its batch). When ``apply`` itself raises
(the transaction failed), one bad item must not fail the whole batch: each item is
applied again alone, so the others commit and only the one that fails gets the error.
A transient failure (database restarting, pool exhausted, serialization failure,
deadlock: :func:`afterglow.events.failures.classify`) is the database's, not an item's:
every request of the batch is answered 503 with Retry-After, never 500. Any other
failure of an item alone is raised in its request as it is (a bug stays a 500 with
its traceback).

Waiting is bounded: past ``max_waiting`` requests a new one is refused at once with 503
and Retry-After, so memory and waiting time stay bounded under overload instead of
queueing until the client times out. A request cancelled while it waits (its client
left) may still be applied: a client retrying with the same idempotency key then gets
the replay.
"""

from __future__ import annotations

import asyncio
import logging
from collections import deque
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from afterglow.events.failures import Verdict, classify
from afterglow.kit.errors import AppError

log = logging.getLogger(__name__)

T = TypeVar("T")
R = TypeVar("R")

Apply = Callable[[Sequence[T]], Awaitable[Sequence[R | BaseException]]]


class Overloaded(AppError):
    """503 with Retry-After: too many requests waiting, or the database briefly away;
    nothing of the request was applied and the client retries."""

    status_code, code = 503, "overloaded"


@dataclass
class _Waiting(Generic[T, R]):
    item: T
    done: asyncio.Future[R]


class GroupCommit(Generic[T, R]):
    """Requests wait in :meth:`submit`; writer tasks (:meth:`run`, started by
    :meth:`start`) apply what waits in batches. See the module docstring."""

    def __init__(
        self,
        apply: Apply[T, R],
        *,
        name: str,
        max_waiting: int,
        max_batch: int,
        retry_after_s: int,
        transient: Callable[[Exception], BaseException] | None = None,
    ) -> None:
        """``transient``: what a request is answered when the database is briefly
        away (by default :class:`Overloaded`, 503 with Retry-After; ``lambda exc:
        exc`` hands the error itself to the app's error handlers)."""
        self._apply = apply
        self._transient = transient
        self.name = name
        self.max_waiting = max_waiting
        self.max_batch = max_batch
        self._retry_after = str(retry_after_s)
        self._queue: deque[_Waiting[T, R]] = deque()
        self._ready = asyncio.Event()
        self.waiting = 0  # requests in submit(): queued or in a batch under way

    def overloaded(self, message: str) -> Overloaded:
        return Overloaded(message, headers={"Retry-After": self._retry_after})

    async def submit(self, item: T) -> R:
        """Wait until ``item`` is applied and committed; its outcome, or its error
        raised. Past the bound of waiting requests: :class:`Overloaded` at once."""
        if self.waiting >= self.max_waiting:
            raise self.overloaded(f"too many {self.name} requests are waiting; retry later")
        waiting: _Waiting[T, R] = _Waiting(item, asyncio.get_running_loop().create_future())
        self.waiting += 1
        try:
            self._queue.append(waiting)
            self._ready.set()
            return await waiting.done
        finally:
            self.waiting -= 1

    def start(self, writers: int) -> list[asyncio.Task[None]]:
        """Start ``writers`` writer tasks; the caller owns them (the app's lifespan
        cancels them on exit, which refuses what still waits with 503)."""
        return [
            asyncio.create_task(self.run(), name=f"{self.name}-writer-{n}") for n in range(writers)
        ]

    async def run(self) -> None:
        """One writer: take what waits, apply it, release each request; forever."""
        try:
            while True:
                await self._ready.wait()
                batch: list[_Waiting[T, R]] = []
                while self._queue and len(batch) < self.max_batch:
                    batch.append(self._queue.popleft())
                if not self._queue:
                    self._ready.clear()
                if batch:
                    await self._commit(batch)
        finally:
            # Stopping (cancelled): nobody will apply what still waits.
            while self._queue:
                self._settle(self._queue.popleft(), self.overloaded("shutting down; retry"))

    async def _apply_reconnecting(self, items: list[T]) -> Sequence[R | BaseException]:
        try:
            return await self._apply(items)
        except Exception as exc:
            if not getattr(exc, "connection_invalidated", False):
                raise
            # The pooled connection had died while idle (a database restart): writers'
            # pools have no ping on checkout (afterglow.kit.db.writer_engine), so the
            # batch runs once more on a new one, as the ping would have reconnected.
            # Had the lost attempt committed, its idempotency keys answer the replay.
            log.info("%s: connection lost; applying the batch once more", self.name)
            return await self._apply(items)

    async def _commit(self, batch: list[_Waiting[T, R]]) -> None:
        try:
            outcomes = await self._apply_reconnecting([w.item for w in batch])
        except asyncio.CancelledError:
            # Stopping mid-batch: it may or may not have committed; a client retrying
            # with its idempotency key gets the replay if it did.
            for w in batch:
                self._settle(w, self.overloaded("shutting down; retry"))
            raise
        except Exception as exc:
            if len(batch) == 1 or classify(exc) is Verdict.TRANSIENT:
                # The database, not an item: every request is told to come back.
                for w in batch:
                    self._failed(w, exc)
                return
            # One item may be what fails the transaction: each alone (below), so the
            # others commit and only that one gets the error.
            log.warning(
                "%s: a batch of %d failed (%s); applying its items one at a time",
                self.name,
                len(batch),
                type(exc).__name__,
            )
        else:
            for w, outcome in zip(batch, outcomes, strict=True):
                self._settle(w, outcome)
            return
        for w in batch:
            await self._commit([w])

    def _failed(self, w: _Waiting[T, R], exc: Exception) -> None:
        if classify(exc) is Verdict.TRANSIENT:
            log.warning("%s: answered 503: %s", self.name, type(exc).__name__)
            unavailable = self.overloaded("the database is unavailable; retry shortly")
            self._settle(w, self._transient(exc) if self._transient else unavailable)
        else:
            log.error("%s: a request failed", self.name, exc_info=exc)
            self._settle(w, exc)

    @staticmethod
    def _settle(w: _Waiting[T, R], outcome: Any) -> None:
        if w.done.done():  # cancelled: its client left
            return
        if isinstance(outcome, BaseException):
            w.done.set_exception(outcome)
        else:
            w.done.set_result(outcome)
