"""Context variables that put the event and trace ids on every log line, and the
traceparent on every event built (:mod:`afterglow.events.tracing` sets them)."""

from __future__ import annotations

from contextvars import ContextVar
from types import TracebackType

current_event_id: ContextVar[str | None] = ContextVar("afterglow_event_id", default=None)
current_traceparent: ContextVar[str | None] = ContextVar("afterglow_traceparent", default=None)


class event_context:
    """The event's id and traceparent in the context for the ``with`` block.

    A class, not a ``@contextmanager`` generator: a batch consumer enters one per event
    applied, and the generator's frame and the helper around it were ~1% of the journey
    engine's Python per event."""

    __slots__ = ("_event_id", "_tokens", "_traceparent")

    def __init__(self, event_id: str | None, traceparent: str | None) -> None:
        self._event_id = event_id
        self._traceparent = traceparent

    def __enter__(self) -> None:
        self._tokens = (
            current_event_id.set(self._event_id),
            current_traceparent.set(self._traceparent),
        )

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        t1, t2 = self._tokens
        current_event_id.reset(t1)
        current_traceparent.reset(t2)
