"""Messaging event handlers (filled in by messaging)."""

from __future__ import annotations

from afterglow.kit.app import ConsumerSpec, Runtime


def consumer_specs(runtime: Runtime) -> list[ConsumerSpec]:
    return []
