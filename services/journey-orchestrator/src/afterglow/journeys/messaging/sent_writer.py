"""The sends a provider accepted, settled together: a group commit.

Each accepted send used to settle in a transaction of its own (BEGIN, the statement,
COMMIT: three round trips and a pooled connection per message), a fifth of the
dispatcher's CPU at 200 messages a second. Here a send that ends ok hands its row to
one writer and waits for it; the writer settles every row handed to it since its last
write in one transaction and one statement, so under load a write carries as many
sends as ended while the previous one ran, and when idle a lone send is written at
once (no timer: nothing waits to fill a batch).

A send's wait ends when its row is committed, or raises if the write failed: the
caller's lease then expires and the message is retried, as when a lone settle failed.
A transient failure (a deadlock with an erasure over common rows, a serialization
failure) is retried a few times first.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable

from afterglow.events import Verdict, classify
from afterglow.journeys.messaging.store import SentSend

TRANSIENT_TRIES = 3

Write = Callable[[list[SentSend]], Awaitable[None]]


class SentWriter:
    def __init__(self, write: Write) -> None:
        self._write = write
        self._pending: list[tuple[SentSend, asyncio.Future[None]]] = []
        self._writer: asyncio.Task[None] | None = None

    async def settle(self, sent: SentSend) -> None:
        """Settle one accepted send with whatever others are waiting; returns once it
        is committed."""
        done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pending.append((sent, done))
        if self._writer is None or self._writer.done():
            self._writer = asyncio.create_task(self._drain(), name="dispatcher-settle-sent")
        await done

    async def _drain(self) -> None:
        while self._pending:
            batch, self._pending = self._pending, []
            try:
                await self._write_with_retries([sent for sent, _ in batch])
            except Exception as exc:  # each waiting send logs it and leaves its lease
                for _, done in batch:
                    if not done.done():
                        done.set_exception(exc)
                continue
            for _, done in batch:
                if not done.done():  # a send cancelled meanwhile cancelled its future
                    done.set_result(None)

    async def _write_with_retries(self, rows: list[SentSend]) -> None:
        for attempt in range(1, TRANSIENT_TRIES + 1):
            try:
                await self._write(rows)
                return
            except Exception as exc:
                if attempt == TRANSIENT_TRIES or classify(exc) is not Verdict.TRANSIENT:
                    raise
                await asyncio.sleep(0.05 * attempt)

    async def close(self) -> None:
        """Stop writing (shutdown); the sends still waiting keep their leases."""
        if self._writer is not None:
            self._writer.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._writer
        for _, done in self._pending:
            done.cancel()
        self._pending = []
