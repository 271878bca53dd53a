"""Bounded shutdown: stopping a client or a background task never hangs a process.

Two ways a shutdown hung here before, both on Python 3.11's ``asyncio.wait_for``: it
waits for a cancelled awaitable to finish (aiokafka's stop need not), and it swallows
a cancellation that arrives in the same loop turn as the awaited result (gh-86296), so a
loop built on it may carry on after ``task.cancel()``. Long-running loops therefore use
``asyncio.timeout`` and shutdowns use these helpers: each waits with ``asyncio.wait``,
which neither cancels nor swallows, and gives up at a deadline with a warning.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Iterable

log = logging.getLogger(__name__)

# Work that ran out of time, kept referenced so the loop does not collect it mid-run.
_abandoned: set[asyncio.Future[None]] = set()


async def stop_within(stop: Callable[[], Awaitable[None]], *, timeout_s: float, what: str) -> bool:
    """Run a client's ``stop()`` for at most ``timeout_s``; True if it finished in time.

    Not ``asyncio.wait_for``: on timeout it cancels the stop and then waits for it to
    end, and aiokafka's stop awaits its group coordination task, which need not end
    on cancellation, so that bound is no bound. Here the stop runs as its own task and
    a late one is cancelled and left behind. A stop that fails is logged, not raised:
    shutdown goes on with the next client.
    """

    async def run() -> None:
        await stop()

    stopping = asyncio.ensure_future(run())
    done, _ = await asyncio.wait({stopping}, timeout=timeout_s)
    if stopping in done:
        # A stop may end cancelled (aiokafka's fetcher cancels its own fetch task and
        # the cancellation can escape stop()); .exception() would raise it here, into
        # the caller's shutdown (a test's teardown failed so at the end of a session).
        if stopping.cancelled():
            log.warning("%s stop ended cancelled", what)
        elif stopping.exception() is not None:
            log.warning("%s failed to stop cleanly", what, exc_info=stopping.exception())
        return True
    _abandon(stopping)
    log.warning("%s did not stop within %.0f s; left behind", what, timeout_s)
    return False


async def cancel_and_wait(
    tasks: Iterable[asyncio.Task[None]], *, timeout_s: float, what: str
) -> list[asyncio.Task[None]]:
    """Cancel ``tasks`` and wait for them to end, at most ``timeout_s``; returns those
    still running then (left behind, with a warning naming them).

    A task whose cancellation was swallowed is cancelled again every second: one
    ``cancel()`` is not enough for a loop that caught it by accident."""
    pending = {t for t in tasks if not t.done()}
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while pending and loop.time() < deadline:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=min(1.0, deadline - loop.time()))
    for task in pending:
        _abandon(task)
    if pending:
        names = sorted(t.get_name() for t in pending)
        log.warning("%s: tasks still running after %.0f s: %s", what, timeout_s, names)
    return sorted(pending, key=lambda t: t.get_name())


def _abandon(future: asyncio.Future[None]) -> None:
    future.cancel()
    _abandoned.add(future)
    future.add_done_callback(_abandoned.discard)
