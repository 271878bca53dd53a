"""The relay ends on cancel even when a wake-up lands in the same loop turn.

With ``asyncio.wait_for`` around the wake-up wait, Python 3.11 returned the wake-up and
dropped the cancel, and the relay polled on for ever: a service's shutdown then hung
(it did in CI, 300 s at a module teardown, on Apache Kafka)."""

from __future__ import annotations

import asyncio

from afterglow.events import OutboxRelay
from afterglow.events.testing import eventually


async def test_a_wake_with_the_cancel_still_stops_the_relay(engine, tables, producer):  # type: ignore[no-untyped-def]
    relay = OutboxRelay(engine, tables, producer, poll_interval_s=5.0)
    task = asyncio.create_task(relay.run())
    await eventually(lambda: asyncio.sleep(0, relay.last_success), lambda t: t is not None)
    await asyncio.sleep(0.5)  # now waiting for a NOTIFY or the 5 s poll

    relay._wake.set()  # a NOTIFY arrives ...
    task.cancel()  # ... in the same turn as the shutdown

    done, _ = await asyncio.wait({task}, timeout=3)
    assert task in done and task.cancelled()
