"""One polling loop for every background worker that drains a table in rounds.

Each service had the same while/claim/sleep loop written by hand, each with its own
gaps: one swallowed every error (a bug retried silently for ever), two let any error
kill the loop (then ``_supervise`` restarted it after a backoff that nothing counted),
none told a database outage from a bug. :class:`PollingWorker` owns that loop once:

* a round that handled a full batch is followed at once by the next (a backlog drains
  at full speed), an idle one by ``interval`` of sleep, cut short by ``wake``;
* a round that fails is logged and counted (``afterglow_worker_round_failures_total``);
  a transient failure (the same verdict the consumers use,
  :func:`afterglow.events.classify`) is retried with a capped, jittered backoff, so a
  database restart is ridden out without a storm of reconnects;
* cancellation stops it between or inside rounds; a round cut short leaves whatever its
  open transaction held to be rolled back, and its leases to expire.

A round that is one transaction is built with :func:`in_one_transaction`: the worker
begins and commits it, so a round that raises leaves nothing written (the entrypoint
owns the transaction, CONVENTIONS item 5). A round that calls other systems between
its transactions (a platform's API, a helpdesk) keeps its own short transactions and
is passed as it is: holding a transaction open across an HTTP call would pin a pooled
connection and its row locks for the call's whole timeout.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import datetime

from prometheus_client import Counter
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from afterglow.events import Verdict, classify
from afterglow.kit.clock import Clock

log = logging.getLogger(__name__)

Round = Callable[[datetime], Awaitable[int]]
TransactionalRound = Callable[[AsyncSession, datetime], Awaitable[int]]

ROUNDS = Counter("afterglow_worker_rounds_total", "Polling worker rounds run", ["worker"])
ROUND_FAILURES = Counter(
    "afterglow_worker_round_failures_total",
    "Polling worker rounds that raised, by worker and verdict (transient, unknown, poison)",
    ["worker", "verdict"],
)


def in_one_transaction(
    sessionmaker: async_sessionmaker[AsyncSession], round_fn: TransactionalRound
) -> Round:
    """A round run inside one transaction that commits when it returns and rolls back
    when it raises (or is cancelled): a round is applied whole or not at all."""

    async def round_in_transaction(now: datetime) -> int:
        async with sessionmaker.begin() as session:
            return await round_fn(session, now)

    return round_in_transaction


@dataclass
class PollingWorker:
    """A background loop of rounds.

    ``round_fn(now)`` returns how many items it handled; a round is full when
    ``full(handled)`` says so (by default: ``handled >= batch``; never without a
    ``batch``), and a full round is
    followed by the next after ``busy_interval`` (0: at once). Otherwise the worker
    waits ``interval`` seconds, or until ``wake`` is set (a NOTIFY, a slot freed) and
    then ``linger`` seconds more.
    ``wake`` is cleared before each round, so a wake-up that arrives during a round
    starts the next one at once instead of being lost.
    """

    name: str
    round_fn: Round
    clock: Clock
    # A callable is read before each wait: for settings swapped under a running worker.
    interval: float | Callable[[], float]
    batch: int | None = None  # None: a round is never full (one pass per interval)
    busy_interval: float = 0.0
    wake: asyncio.Event | None = None
    max_backoff: float = 30.0
    first_backoff: float = 0.5
    full: Callable[[int], bool] | None = None
    # After a wake-up, wait this long before the round: wake-ups that come close
    # together (sends ending one after another) then make one round instead of one
    # each. The dispatcher claimed one message per ended send, seven statements each.
    linger: float | Callable[[], float] = 0.0

    def __post_init__(self) -> None:
        self.__name__ = self.name  # how _supervise and the logs name a worker

    async def __call__(self, _runtime: object = None) -> None:
        """So a PollingWorker is itself a ``Worker`` for ``create_service_app``."""
        await self.run()

    def _is_full(self, handled: int) -> bool:
        if self.full is not None:
            return self.full(handled)
        return self.batch is not None and handled >= self.batch

    async def run_round(self) -> int:
        """One round, as the loop runs it (tests call it to step a worker)."""
        if self.wake is not None:
            self.wake.clear()
        ROUNDS.labels(self.name).inc()
        return await self.round_fn(self.clock.now())

    async def run(self) -> None:
        backoff = self.first_backoff
        while True:
            try:
                handled = await self.run_round()
            except asyncio.CancelledError:
                raise
            except Exception as exc:
                verdict = classify(exc)
                ROUND_FAILURES.labels(self.name, verdict.value).inc()
                log.exception(
                    "%s round failed (%s)", self.name, verdict.value, extra={"loop": self.name}
                )
                if verdict is Verdict.TRANSIENT:
                    # Jittered: replicas that lost the database together must not all
                    # reconnect in the same instant when it returns.
                    await asyncio.sleep(backoff * (1 + random.random()) / 2)
                    backoff = min(backoff * 2, self.max_backoff)
                    continue
                # A bug or a bad row: the same round would fail the same way at once,
                # so wait a whole interval (never a hot loop of tracebacks).
                backoff = self.first_backoff
                await self._idle()
                continue
            backoff = self.first_backoff
            if self._is_full(handled):
                if self.busy_interval > 0:
                    await asyncio.sleep(self.busy_interval)
                continue
            await self._idle()

    async def _idle(self) -> None:
        interval = self.interval() if callable(self.interval) else self.interval
        if self.wake is None:
            await asyncio.sleep(interval)
            return
        # asyncio.timeout, not wait_for: see afterglow.events.shutdown.
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(interval):
                await self.wake.wait()
                linger = self.linger() if callable(self.linger) else self.linger
                if linger > 0:
                    await asyncio.sleep(linger)
