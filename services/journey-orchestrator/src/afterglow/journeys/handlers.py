"""Journey event handlers (filled in by the journey engine)."""

from __future__ import annotations

from afterglow.kit.app import ConsumerSpec, Runtime


def consumer_specs(runtime: Runtime) -> list[ConsumerSpec]:
    return []
