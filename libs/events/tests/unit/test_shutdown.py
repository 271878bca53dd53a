"""Bounded shutdown: stop_within and cancel_and_wait end even when cancellation is ignored."""

from __future__ import annotations

import asyncio
import time

from afterglow.events import cancel_and_wait, stop_within


async def test_a_stop_that_finishes_in_time_reports_true() -> None:
    stopped = []

    async def stop() -> None:
        await asyncio.sleep(0.01)
        stopped.append(True)

    assert await stop_within(stop, timeout_s=5, what="client") is True
    assert stopped == [True]


async def test_a_stop_that_swallows_cancellation_is_left_behind_at_the_deadline() -> None:
    # Like aiokafka's stop awaiting a coordination task that outlives a cancel:
    # asyncio.wait_for would wait for it to end, here until release is set.
    release = asyncio.Event()

    async def stubborn_stop() -> None:
        try:
            await asyncio.sleep(60)
        except asyncio.CancelledError:
            await release.wait()

    started = time.monotonic()
    assert await stop_within(stubborn_stop, timeout_s=0.2, what="client") is False
    assert time.monotonic() - started < 2.0
    release.set()
    await asyncio.sleep(0)


async def test_a_failing_stop_is_logged_not_raised(caplog) -> None:  # type: ignore[no-untyped-def]
    async def broken_stop() -> None:
        raise ConnectionError("broker gone")

    assert await stop_within(broken_stop, timeout_s=1, what="producer") is True
    assert "producer failed to stop cleanly" in caplog.text


async def test_a_stop_that_ends_cancelled_is_logged_not_raised(caplog) -> None:  # type: ignore[no-untyped-def]
    # aiokafka's consumer stop cancels its fetch task, and that cancellation can escape
    # stop(): it must not reach the caller (a test session's teardown failed on it).
    async def stop_cancelled_from_inside() -> None:
        raise asyncio.CancelledError

    assert await stop_within(stop_cancelled_from_inside, timeout_s=1, what="tap") is True
    assert "tap stop ended cancelled" in caplog.text


async def test_a_task_that_swallowed_one_cancel_is_cancelled_again() -> None:
    swallowed = []

    async def careless_loop() -> None:
        while True:
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                if not swallowed:  # as wait_for can, once
                    swallowed.append(True)
                    continue
                raise

    task = asyncio.create_task(careless_loop())
    await asyncio.sleep(0)

    left = await cancel_and_wait([task], timeout_s=5, what="test")

    assert left == [] and task.cancelled() and swallowed == [True]


async def test_a_task_that_ignores_every_cancel_is_left_behind_and_named(caplog) -> None:  # type: ignore[no-untyped-def]
    release = asyncio.Event()

    async def deaf() -> None:
        while not release.is_set():
            try:
                await asyncio.sleep(60)
            except asyncio.CancelledError:
                continue

    task = asyncio.create_task(deaf(), name="deaf-worker")
    await asyncio.sleep(0)
    started = time.monotonic()

    left = await cancel_and_wait([task], timeout_s=1.5, what="test")

    assert left == [task] and time.monotonic() - started < 3
    assert "deaf-worker" in caplog.text
    release.set()
    await asyncio.sleep(0)
