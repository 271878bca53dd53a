"""Tracing setup from the environment, and the HTTP request's span.

OpenTelemetry's own variables decide: with ``OTEL_EXPORTER_OTLP_ENDPOINT`` (or
``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT``) set, spans are batched and exported over
OTLP/HTTP (the exporter reads the headers and timeout variables itself; the SDK reads
``OTEL_TRACES_SAMPLER``); ``service.name`` is the service's name unless
``OTEL_SERVICE_NAME`` says otherwise. Unset (or ``OTEL_SDK_DISABLED=true``): no
provider, no middleware, the SDK is not even imported; the trace context still rides
on every event (:mod:`afterglow.events.tracing`).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping
from typing import Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from afterglow.events import tracing

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
