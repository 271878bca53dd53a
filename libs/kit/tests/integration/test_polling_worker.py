"""The polling worker on the real PostgreSQL: what a round that fails, a full round, a
wake-up and a cancellation do to the loop and to what the round wrote."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import datetime, timedelta

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from afterglow.devstack.stack import Stack
from afterglow.events.testing import eventually
from afterglow.kit.clock import ManualClock
from afterglow.kit.db import create_engine, create_sessionmaker
from afterglow.kit.polling import ROUND_FAILURES, PollingWorker, in_one_transaction

# Far beyond any test's patience: a worker that slept it would fail the test by timeout.
FOREVER = 3600.0


@dataclass
class Rows:
    """A table of its own per test, so tests never see each other's rows."""

    sessionmaker: async_sessionmaker[AsyncSession]
    table: str

    async def insert(self, session: AsyncSession, value: str) -> None:
        await session.execute(text(f"INSERT INTO {self.table} (value) VALUES (:v)"), {"v": value})  # noqa: S608 - our own table name

    async def values(self) -> list[str]:
        async with self.sessionmaker() as session:
            rows = await session.execute(text(f"SELECT value FROM {self.table} ORDER BY id"))  # noqa: S608
            return [r[0] for r in rows]


@pytest.fixture
async def rows(stack: Stack) -> AsyncIterator[Rows]:
    engine = create_engine(stack.database_url, application_name="kit-polling-test", pool_size=2)
    table = f"public.polling_{uuid.uuid4().hex[:10]}"
    async with engine.begin() as conn:
        await conn.execute(text(f"CREATE TABLE {table} (id serial PRIMARY KEY, value text)"))
    try:
        yield Rows(create_sessionmaker(engine), table)
    finally:
        async with engine.begin() as conn:
            await conn.execute(text(f"DROP TABLE {table}"))
        await engine.dispose()


async def _value(n: int) -> int:
    return n


async def _stop(task: asyncio.Task[None]) -> None:
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task


class TestPollingWorker:
    async def test_retries_a_round_that_failed_transiently(self, rows: Rows) -> None:
        calls = 0

        async def flaky(session: AsyncSession, now: datetime) -> int:
            nonlocal calls
            calls += 1
            await rows.insert(session, f"attempt-{calls}")
            if calls == 1:
                # What the driver raises when PostgreSQL drops the connection.
                raise ConnectionResetError("connection reset by peer")
            return 0

        name = f"flaky-{uuid.uuid4().hex[:6]}"
        worker = PollingWorker(
            name,
            in_one_transaction(rows.sessionmaker, flaky),
            ManualClock(),
            interval=FOREVER,
            first_backoff=0.05,
        )
        task = asyncio.create_task(worker.run())
        try:
            # Retried after the short backoff, not after the idle interval.
            assert await eventually(rows.values, bool) == ["attempt-2"]
        finally:
            await _stop(task)
        assert ROUND_FAILURES.labels(name, "transient")._value.get() == 1

    async def test_a_full_round_is_followed_by_the_next_without_sleeping(self, rows: Rows) -> None:
        backlog = [f"item-{i}" for i in range(7)]

        async def drain(session: AsyncSession, now: datetime) -> int:
            taken = backlog[:3]
            del backlog[:3]
            for value in taken:
                await rows.insert(session, value)
            return len(taken)

        worker = PollingWorker(
            "drain", in_one_transaction(rows.sessionmaker, drain), ManualClock(), FOREVER, batch=3
        )
        task = asyncio.create_task(worker.run())
        try:
            # Three rounds (3 + 3 + 1): the third, not full, is the first to sleep.
            done = await eventually(rows.values, lambda v: len(v) == 7)
        finally:
            await _stop(task)
        assert done == [f"item-{i}" for i in range(7)]

    async def test_an_idle_worker_runs_a_round_when_woken(self, rows: Rows) -> None:
        wake = asyncio.Event()
        clock = ManualClock()

        async def note(session: AsyncSession, now: datetime) -> int:
            await rows.insert(session, now.isoformat())
            return 0

        worker = PollingWorker(
            "woken", in_one_transaction(rows.sessionmaker, note), clock, FOREVER, wake=wake
        )
        task = asyncio.create_task(worker.run())
        try:
            first = await eventually(rows.values, bool)
            later = clock.advance(timedelta(minutes=1))
            wake.set()
            assert await eventually(rows.values, lambda v: len(v) == 2) == [
                *first,
                later.isoformat(),
            ]
        finally:
            await _stop(task)

    async def test_wake_ups_close_together_make_one_round_after_the_linger(
        self, rows: Rows
    ) -> None:
        wake = asyncio.Event()
        rounds = 0

        async def count(_now: datetime) -> int:
            nonlocal rounds
            rounds += 1
            return 0

        worker = PollingWorker("lingering", count, ManualClock(), FOREVER, wake=wake, linger=0.5)
        task = asyncio.create_task(worker.run())
        try:
            await eventually(lambda: _value(rounds), lambda n: n == 1)  # the first round
            for _ in range(5):  # five sends ending within the linger
                wake.set()
                await asyncio.sleep(0.02)
            await eventually(lambda: _value(rounds), lambda n: n >= 2)
            await asyncio.sleep(0.6)  # a second round would have run by now
            assert rounds == 2
        finally:
            await _stop(task)

    async def test_a_round_that_raises_leaves_nothing_written(self, rows: Rows) -> None:
        async def half_done(session: AsyncSession, now: datetime) -> int:
            await rows.insert(session, "first half")
            raise ValueError("a bug after the first write")

        worker = PollingWorker(
            "half-done", in_one_transaction(rows.sessionmaker, half_done), ManualClock(), FOREVER
        )
        with pytest.raises(ValueError):
            await worker.run_round()
        assert await rows.values() == []

    async def test_a_failing_round_does_not_stop_the_loop(self, rows: Rows) -> None:
        calls = 0

        async def buggy_once(session: AsyncSession, now: datetime) -> int:
            nonlocal calls
            calls += 1
            if calls == 1:
                raise ValueError("a bug in the first round only")
            await rows.insert(session, "second round")
            return 0

        wake = asyncio.Event()
        name = f"buggy-{uuid.uuid4().hex[:6]}"
        worker = PollingWorker(
            name,
            in_one_transaction(rows.sessionmaker, buggy_once),
            ManualClock(),
            FOREVER,
            wake=wake,
        )
        task = asyncio.create_task(worker.run())
        try:
            await eventually(lambda: asyncio.sleep(0, calls), lambda n: n == 1)
            wake.set()  # a bug waits out the interval (or a wake-up), then tries again
            assert await eventually(rows.values, bool) == ["second round"]
        finally:
            await _stop(task)
        assert ROUND_FAILURES.labels(name, "unknown")._value.get() == 1

    async def test_cancellation_stops_it_mid_round_and_rolls_the_round_back(
        self, rows: Rows
    ) -> None:
        inside = asyncio.Event()

        async def slow(session: AsyncSession, now: datetime) -> int:
            await rows.insert(session, "never committed")
            inside.set()
            await asyncio.sleep(FOREVER)
            return 1

        worker = PollingWorker(
            "slow", in_one_transaction(rows.sessionmaker, slow), ManualClock(), FOREVER
        )
        task = asyncio.create_task(worker.run())
        await asyncio.wait_for(inside.wait(), timeout=20)
        await _stop(task)
        assert task.cancelled()
        assert await rows.values() == []
