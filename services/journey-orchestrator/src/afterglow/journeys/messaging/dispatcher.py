"""The dispatcher loop (filled in by messaging)."""

from __future__ import annotations

from afterglow.kit.app import Runtime, Worker


def messaging_workers(runtime: Runtime) -> list[Worker]:
    return []
