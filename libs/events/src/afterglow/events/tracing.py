"""One trace from a webhook to the message it causes, across every service.

The W3C ``traceparent`` of the work in progress lives in a context variable
(:data:`afterglow.events.context.current_traceparent`): :meth:`CloudEvent.new` copies
it onto every event built (the outbox row stores it, the relay sends it as the
``ce_traceparent`` header) and the JSON logs print its trace and span ids. The helpers
here set it, whether tracing is on or not:

* off (the default: no service called :func:`enable`): no span is made and nothing of
  OpenTelemetry runs beyond this module's ``is None`` check; the inbound traceparent is
  passed on unchanged (as a W3C intermediary without tracing does), so the logs of
  every service still share the request's trace id;
* on (``afterglow.kit.tracing`` installed an SDK provider, from
  ``OTEL_EXPORTER_OTLP_ENDPOINT``): each helper opens a span and makes *its*
  traceparent current, so what the work causes is that span's child.

Work caused by one event or request is a child of its traceparent (:func:`continued`);
the relay's send of an outbox row is a span too, which the ``ce_traceparent`` it sends
names (:func:`publishing`), so the hop through the broker shows in the trace;
a batch that applies the events of many traces in one transaction is a span of its
own, linked from the events' spans (:func:`batch_span`, :func:`linked`); a timer that
fires days after what scheduled it starts a trace of its own with a link to that one
(:func:`linked`): a trace days long is one no backend shows whole.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterable, Iterator, Mapping
from typing import Any

from opentelemetry import trace
from opentelemetry.context import Context
from opentelemetry.trace import Link, SpanContext, SpanKind, TraceFlags, TracerProvider

from afterglow.events.context import current_traceparent, event_context

__all__ = [
    "SpanKind",
    "batch_span",
    "continued",
    "current",
    "disable",
    "enable",
    "enabled",
    "format_traceparent",
    "linked",
    "parse_traceparent",
    "provider",
    "publishing",
    "server_span",
]

_tracer: trace.Tracer | None = None
# The provider the spans come from, for the instrumentations (statements, HTTP calls)
# that make spans of their own in the same traces.
_provider: TracerProvider | None = None

Attributes = Mapping[str, str | int | float | bool]


def enable(provider: TracerProvider) -> None:
    """Spans from now on, made by ``provider`` (its exporter decides where they go)."""
    global _tracer, _provider
    _tracer = provider.get_tracer("afterglow")
    _provider = provider


def disable() -> None:
    """Back to no spans (tests that turned tracing on for themselves)."""
    global _tracer, _provider
    _tracer = None
    _provider = None


def enabled() -> bool:
    return _tracer is not None


def provider() -> TracerProvider | None:
    """The provider given to :func:`enable`; None while tracing is off."""
    return _provider


def parse_traceparent(value: str | None) -> SpanContext | None:
    """The span context a W3C ``traceparent`` names; None when absent or malformed (a
    stranger's header must never fail the work it rides on)."""
    if not value:
        return None
    parts = value.strip().split("-")
    if len(parts) < 4 or len(parts[1]) != 32 or len(parts[2]) != 16 or parts[0] == "ff":
        return None
    try:
        trace_id, span_id, flags = int(parts[1], 16), int(parts[2], 16), int(parts[3][:2], 16)
    except ValueError:
        return None
    if trace_id == 0 or span_id == 0:
        return None
    return SpanContext(trace_id, span_id, is_remote=True, trace_flags=TraceFlags(flags & 0x01))


def format_traceparent(ctx: SpanContext) -> str:
    return f"00-{ctx.trace_id:032x}-{ctx.span_id:016x}-{int(ctx.trace_flags) & 0x01:02x}"


def _parent(traceparent: str | None) -> Context:
    """A context whose parent is ``traceparent``; an empty one (a new trace) without."""
    ctx = parse_traceparent(traceparent)
    if ctx is None:
        return Context()
    return trace.set_span_in_context(trace.NonRecordingSpan(ctx), Context())


def _enclosing_link() -> list[Link]:
    """A link to the span in progress (the batch around an event), if any."""
    ctx = trace.get_current_span().get_span_context()
    return [Link(ctx)] if ctx.is_valid else []


@contextlib.contextmanager
def continued(
    name: str,
    traceparent: str | None,
    *,
    event_id: str | None = None,
    kind: SpanKind = SpanKind.CONSUMER,
    attributes: Attributes | None = None,
) -> Iterator[None]:
    """Work caused by what carries ``traceparent`` (an event, a stored delivery, a
    message request): a span child of it, linked to the batch span around it if one is
    open. Without a traceparent the span starts a trace. Off: the traceparent is made
    current as it is."""
    if _tracer is None:
        with event_context(event_id, traceparent):
            yield
        return
    with (
        _tracer.start_as_current_span(
            name,
            context=_parent(traceparent),
            kind=kind,
            links=_enclosing_link(),
            attributes=attributes,
        ) as span,
        event_context(event_id, format_traceparent(span.get_span_context())),
    ):
        yield


@contextlib.contextmanager
def linked(
    name: str,
    traceparents: Iterable[str | None],
    *,
    kind: SpanKind = SpanKind.INTERNAL,
    attributes: Attributes | None = None,
    new_trace: bool = False,
    event_id: str | None = None,
) -> Iterator[None]:
    """Work with many causes (a batch handler's run of events) or a late one (a timer):
    a span with a link to each cause's span. ``new_trace`` starts a trace of its own
    (a timer); otherwise the span is a child of the span in progress. Off: a single
    cause's traceparent is made current as it is, several make none current (the first
    would tell the logs a lie about the others)."""
    causes = [tp for tp in traceparents if tp]
    if _tracer is None:
        distinct = set(causes)
        with event_context(event_id, distinct.pop() if len(distinct) == 1 else None):
            yield
        return
    links = [Link(ctx) for tp in dict.fromkeys(causes) if (ctx := parse_traceparent(tp))]
    with (
        _tracer.start_as_current_span(
            name,
            context=Context() if new_trace else None,
            kind=kind,
            links=links,
            attributes=attributes,
        ) as span,
        event_context(event_id, format_traceparent(span.get_span_context())),
    ):
        yield


@contextlib.contextmanager
def batch_span(
    name: str, attributes: Callable[[], Attributes] | Attributes | None = None
) -> Iterator[None]:
    """A span around one transaction of a batch (a consumer's partition batch, a round
    of stored deliveries); the spans of its events link to it. Nothing when off (pass
    ``attributes`` as a function and they are not even built then)."""
    if _tracer is None:
        yield
        return
    with _tracer.start_as_current_span(
        name,
        context=Context(),
        kind=SpanKind.INTERNAL,
        attributes=attributes() if callable(attributes) else attributes,
    ):
        yield


@contextlib.contextmanager
def server_span(
    name: str, headers: Mapping[str, str], attributes: dict[str, Any] | None = None
) -> Iterator[trace.Span]:
    """An HTTP request's span, child of the caller's ``traceparent`` header if it sent
    one; the request's traceparent is current inside (its events and logs carry it).
    Only called when tracing is on (the middleware is installed then)."""
    assert _tracer is not None, "server_span is only used with tracing on"
    with (
        _tracer.start_as_current_span(
            name,
            context=_parent(headers.get("traceparent")),
            kind=SpanKind.SERVER,
            attributes=attributes,
        ) as span,
        event_context(None, format_traceparent(span.get_span_context())),
    ):
        yield span


def publishing(
    topic: str, headers: list[tuple[str, bytes]]
) -> tuple[trace.Span, list[tuple[str, bytes]]]:
    """The relay's send of one outbox row (tracing on): a PRODUCER span, child of the
    row's ``ce_traceparent``, and the headers with that header now naming this span, so
    the consumers' spans are its children and the hop through the broker shows in the
    trace. The caller ends the span once the broker acknowledged the send."""
    assert _tracer is not None, "publishing is only used with tracing on"
    stored = next((v for k, v in headers if k == "ce_traceparent"), None)
    event_id = next((v for k, v in headers if k == "ce_id"), b"")
    span = _tracer.start_span(
        f"publish {topic}",
        context=_parent(stored.decode(errors="replace") if stored else None),
        kind=SpanKind.PRODUCER,
        attributes={
            "messaging.destination.name": topic,
            "messaging.message.id": event_id.decode(errors="replace"),
        },
    )
    traceparent = format_traceparent(span.get_span_context()).encode()
    rest = [(k, v) for k, v in headers if k != "ce_traceparent"]
    return span, [*rest, ("ce_traceparent", traceparent)]


def current() -> str | None:
    """The traceparent of the work in progress (what an event built now carries)."""
    return current_traceparent.get()
