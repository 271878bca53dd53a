"""Context variables that put the event and trace ids on every log line, and the
traceparent on every event built (:mod:`afterglow.events.tracing` sets them)."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from contextvars import ContextVar

current_event_id: ContextVar[str | None] = ContextVar("afterglow_event_id", default=None)
current_traceparent: ContextVar[str | None] = ContextVar("afterglow_traceparent", default=None)


@contextlib.contextmanager
def event_context(event_id: str | None, traceparent: str | None) -> Iterator[None]:
    t1 = current_event_id.set(event_id)
    t2 = current_traceparent.set(traceparent)
    try:
        yield
    finally:
        current_event_id.reset(t1)
        current_traceparent.reset(t2)
