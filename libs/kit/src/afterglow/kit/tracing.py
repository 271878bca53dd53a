"""Tracing setup from the environment, and the HTTP request's span.

OpenTelemetry's own variables decide: with ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) set, spans are batched and exported over
OTLP/HTTP (the exporter reads the headers and timeout variables itself; the SDK reads
``OTEL_TRACES_SAMPLER``); ``service.name`` is the service's name unless
``OTEL_SERVICE_NAME`` says otherwise. Unset (or ``OTEL_SDK_DISABLED=true``): no
provider, no middleware, the SDK is not even imported; the trace context still rides
on every event (:mod:`afterglow.events.tracing`).

With tracing on, the database's statements (:func:`instrument_engine`) and the
outbound HTTP calls (:func:`instrument_http`: a provider's API, a merchant's webhook)
are spans too, children of the work that made them (the apply of an event, the send of
a message); their instrumentations are imported only then.
"""

from __future__ import annotations

import contextlib
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from opentelemetry import trace
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from afterglow.events import tracing

if TYPE_CHECKING:
    import httpx
    from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger(__name__)

# The SDK provider this module installed (None while tracing is off or set up by others).
_provider: Any = None


def configure_tracing(service: str, env: Mapping[str, str] | None = None) -> bool:
    """Install the OTLP exporter when the environment asks for one. Idempotent per
    process: the first service app built sets it up (several apps in one process, as in
    tests, share it). Returns whether tracing is on."""
    env = os.environ if env is None else env
    if tracing.enabled():
        return True
    # As the OTLP spec says: the traces endpoint is used as it is, the general one gets
    # the signal's path. Passed to the exporter, which would read os.environ instead.
    endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT") or (
        base.rstrip("/") + "/v1/traces"
        if (base := env.get("OTEL_EXPORTER_OTLP_ENDPOINT"))
        else None
    )
    if not endpoint or env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return False
    # Imported here: a service without tracing pays nothing for the SDK.
    from opentelemetry import trace
    from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
    from opentelemetry.sdk.resources import Resource
    from opentelemetry.sdk.trace import TracerProvider
    from opentelemetry.sdk.trace.export import BatchSpanProcessor

    resource = Resource.create({"service.name": env.get("OTEL_SERVICE_NAME") or service})
    provider = TracerProvider(resource=resource)  # flushed at exit (shutdown_on_exit)
    # BatchSpanProcessor: the request never waits for the collector; a collector away
    # drops spans (bounded queue), never slows or fails the work.
    provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter(endpoint=endpoint)))
    trace.set_tracer_provider(provider)  # for instrumentations that use the global one
    tracing.enable(provider)
    global _provider
    _provider = provider
    log.info("tracing on", extra={"otlp_endpoint": endpoint})
    return True


def flush_spans(timeout_s: float = 5.0) -> bool:
    """Export the spans still queued (a service stopping; a test); False if it timed
    out. Nothing to do while tracing is off."""
    if _provider is None:
        return True
    return bool(_provider.force_flush(int(timeout_s * 1000)))


def shutdown_tracing() -> None:
    """Tracing off for good in this process: the exporter's queue flushed and its
    thread stopped, no provider left for instrumentations. For a test that turned the
    OTLP exporter on: left running, its exporter kept retrying a collector that was gone
    for every later test in the session."""
    global _provider
    tracing.disable()
    if _provider is not None:
        _provider.shutdown()
        _provider = None


class TracingMiddleware:
    """A SERVER span per HTTP request, child of the caller's ``traceparent`` header if
    any; inside it the request's traceparent is current, so the delivery or outbox row
    the request stores carries it. Installed only while tracing is on."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not tracing.enabled():
            await self.app(scope, receive, send)
            return
        headers = {k.decode("latin-1").lower(): v.decode("latin-1") for k, v in scope["headers"]}
        method = scope["method"]
        # Named by the route template once routed; an unrouted request (a 404) keeps
        # the bare method: a path in the name would make one span name per URL.
        with tracing.server_span(
            method,
            headers,
            {"http.request.method": method, "url.path": scope["path"]},
        ) as span:
            status = 500

            async def noting_status(message: Message) -> None:
                nonlocal status
                if message["type"] == "http.response.start":
                    status = message["status"]
                await send(message)

            try:
                await self.app(scope, receive, noting_status)
            finally:
                route = getattr(scope.get("route"), "path", None)
                if route is not None:
                    # The template, not the path: /v1/customers/{id}, one name for all.
                    span.update_name(f"{method} {route}")
                    span.set_attribute("http.route", route)
                span.set_attribute("http.response.status_code", status)


class _ChildSpansOnly(trace.Tracer):
    """A tracer that makes a span only inside another one. A statement or an HTTP call
    outside any traced work (the relay's and the timers' polls, several a second) would
    otherwise start a trace of its own each time: thousands of one-span traces an hour
    that drown the ones an operator looks for and cost the export."""

    def __init__(self, tracer: trace.Tracer) -> None:
        self._tracer = tracer

    def start_span(self, name: str, context: Any = None, *args: Any, **kwargs: Any) -> trace.Span:
        if not trace.get_current_span(context).get_span_context().is_valid:
            return trace.INVALID_SPAN
        return self._tracer.start_span(name, context, *args, **kwargs)

    # The API's own decorator returns a context manager that is also a decorator; the
    # instrumentations only use it in a with statement.
    @contextlib.contextmanager
    def start_as_current_span(  # type: ignore[override]
        self, name: str, context: Any = None, *args: Any, **kwargs: Any
    ) -> Iterator[trace.Span]:
        if not trace.get_current_span(context).get_span_context().is_valid:
            yield trace.INVALID_SPAN
            return
        with self._tracer.start_as_current_span(name, context, *args, **kwargs) as span:
            yield span


class _ChildSpansOnlyProvider(trace.TracerProvider):
    def __init__(self, provider: trace.TracerProvider) -> None:
        self._provider = provider

    def get_tracer(self, *args: Any, **kwargs: Any) -> trace.Tracer:
        return _ChildSpansOnly(self._provider.get_tracer(*args, **kwargs))


def _instrumentations_provider() -> trace.TracerProvider | None:
    provider = tracing.provider()
    return None if provider is None else _ChildSpansOnlyProvider(provider)


def instrument_engine(engine: AsyncEngine) -> None:
    """Each statement the engine runs a CLIENT span (``db.statement`` holds the SQL
    with its ``$n`` placeholders, never the values), child of the span in progress.
    Nothing while tracing is off. Per engine, not SQLAlchemy's global patching: several
    services' engines share one process in the tests, and the instrumentor would take
    only the first."""
    provider = _instrumentations_provider()
    if provider is None:
        return
    # Imported here: off, the instrumentation is never loaded.
    from opentelemetry.instrumentation.sqlalchemy.engine import EngineTracer
    from opentelemetry.metrics import get_meter

    # EngineTracer counts pool connections on a meter; the global one (a no-op, we
    # export metrics through Prometheus) takes them.
    connections = get_meter(__name__).create_up_down_counter("db.client.connections.usage")
    EngineTracer(provider.get_tracer(__name__), engine.sync_engine, connections)


def instrument_http(client: httpx.AsyncClient) -> httpx.AsyncClient:
    """The client's requests as CLIENT spans, child of the span in progress, with the
    ``traceparent`` header sent along (a receiver that traces continues the trace).
    Returns the client; nothing while tracing is off."""
    provider = _instrumentations_provider()
    if provider is None:
        return client
    from opentelemetry.instrumentation.httpx import HTTPXClientInstrumentor

    HTTPXClientInstrumentor.instrument_client(client, tracer_provider=provider)
    return client


@dataclass
class HttpCall:
    """One outbound HTTP call as :func:`http_client_span` traces it: the headers to
    send along (the span's ``traceparent``), and the status once answered."""

    headers: dict[str, str] = field(default_factory=dict)
    status: int | None = None


@contextlib.contextmanager
def http_client_span(method: str, url: str) -> Iterator[HttpCall]:
    """An HTTP call made by a client other than httpx (the dispatcher's webhook sends)
    traced as :func:`instrument_http` traces httpx's: a CLIENT span named by the
    method, child of the span in progress (none outside one), with the
    instrumentation's pre-stable attributes (``http.method``, ``http.url``,
    ``http.status_code``) and the ``traceparent`` header naming it. An exception
    raised inside is recorded on the span. Nothing while tracing is off."""
    call = HttpCall()
    provider = _instrumentations_provider()
    if provider is None:
        yield call
        return
    tracer = provider.get_tracer(__name__)
    attributes = {"http.method": method, "http.url": url}
    with tracer.start_as_current_span(
        method, kind=trace.SpanKind.CLIENT, attributes=attributes
    ) as span:
        context = span.get_span_context()
        if context.is_valid:
            call.headers["traceparent"] = tracing.format_traceparent(context)
        yield call
        if call.status is not None:
            span.set_attribute("http.status_code", call.status)
