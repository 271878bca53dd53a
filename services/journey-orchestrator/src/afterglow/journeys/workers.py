"""Background loops of the journey engine (durable timers)."""

from __future__ import annotations

from afterglow.kit.app import Runtime, Worker


def journey_workers(runtime: Runtime) -> list[Worker]:
    return []
