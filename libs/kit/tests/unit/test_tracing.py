"""Tracing: what an event built in a trace context carries, on and off; the setup
from the environment; the trace and span ids on log lines."""

from __future__ import annotations

import http.server
import json
import logging
import subprocess
import sys
import threading
from collections.abc import Iterator

import httpx
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from afterglow.events import CloudEvent, tracing
from afterglow.events.catalog import CustomerUnsubscribed
from afterglow.kit.logs import JsonFormatter
from afterglow.kit.tracing import (
    configure_tracing,
    flush_spans,
    instrument_http,
    shutdown_tracing,
)

A = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
B = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"


def built() -> CloudEvent[CustomerUnsubscribed]:
    data = CustomerUnsubscribed(channel="email", unsubscribed_at="2026-01-01T00:00:00Z")
    return CloudEvent.new(data, tenant_id="t1", subject="c1", source="tests")


@pytest.fixture
def spans() -> Iterator[InMemorySpanExporter]:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    tracing.enable(provider)
    try:
        yield exporter
    finally:
        tracing.disable()


class TestTraceparent:
    def test_round_trips(self) -> None:
        ctx = tracing.parse_traceparent(A)
        assert ctx is not None and ctx.trace_id == 0x4BF92F3577B34DA6A3CE929D0E0E4736
        assert tracing.format_traceparent(ctx) == A

    @pytest.mark.parametrize(
        "bad",
        [
            None,
            "",
            "00-ab-cd-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "00-4bf92f3577b34da6a3ce929d0e0e473x-00f067aa0ba902b7-01",
        ],
    )
    def test_a_malformed_one_is_no_context(self, bad: str | None) -> None:
        assert tracing.parse_traceparent(bad) is None


class TestTracingOff:
    def test_an_event_built_while_continuing_one_carries_its_traceparent(self) -> None:
        assert not tracing.enabled()
        assert built().traceparent is None
        with tracing.continued("apply", A, event_id="e1"):
            assert built().traceparent == A
        assert built().traceparent is None

    def test_work_with_several_causes_passes_on_none_of_them(self) -> None:
        with tracing.linked("batch", [A, B]):
            assert built().traceparent is None
        with tracing.linked("batch", [A, None, A]):
            assert built().traceparent == A


class TestTracingOn:
    def test_an_event_built_in_a_continued_span_is_that_spans_child(
        self, spans: InMemorySpanExporter
    ) -> None:
        with tracing.batch_span("batch"), tracing.continued("apply", A, event_id="e1"):
            event = built()
        [child, batch] = spans.get_finished_spans()
        assert child.context is not None and batch.context is not None
        # In the cause's trace, under the cause's span, linked to the batch around it.
        assert child.context.trace_id == tracing.parse_traceparent(A).trace_id  # type: ignore[union-attr]
        assert child.parent is not None and child.parent.span_id == 0x00F067AA0BA902B7
        assert [link.context.span_id for link in child.links] == [batch.context.span_id]
        assert event.traceparent == tracing.format_traceparent(child.context)

    def test_a_timer_starts_a_trace_linked_to_what_scheduled_it(
        self, spans: InMemorySpanExporter
    ) -> None:
        with tracing.linked("fire timer", [A], new_trace=True):
            event = built()
        [span] = spans.get_finished_spans()
        assert span.context is not None and span.parent is None
        assert span.context.trace_id != tracing.parse_traceparent(A).trace_id  # type: ignore[union-attr]
        assert [link.context.trace_id for link in span.links] == [
            tracing.parse_traceparent(A).trace_id  # type: ignore[union-attr]
        ]
        assert event.traceparent == tracing.format_traceparent(span.context)

    def test_the_relays_send_is_a_span_the_header_then_names(
        self, spans: InMemorySpanExporter
    ) -> None:
        headers = [("ce_id", b"e1"), ("ce_traceparent", A.encode()), ("ce_type", b"t")]
        span, sent = tracing.publishing("afterglow.orders", headers)
        span.end()
        [finished] = spans.get_finished_spans()
        assert finished.context is not None and finished.parent is not None
        assert finished.parent.span_id == 0x00F067AA0BA902B7
        assert [k for k, _ in sent] == ["ce_id", "ce_type", "ce_traceparent"]
        assert dict(sent)["ce_traceparent"].decode() == tracing.format_traceparent(finished.context)

    def test_a_malformed_traceparent_starts_a_new_trace(self, spans: InMemorySpanExporter) -> None:
        with tracing.continued("apply", "00-nonsense-01-01"):
            built()
        [span] = spans.get_finished_spans()
        assert span.parent is None


class TestSetupFromEnvironment:
    def test_without_an_endpoint_tracing_stays_off(self) -> None:
        assert configure_tracing("loyalty", {}) is False
        assert configure_tracing("loyalty", {"OTEL_SDK_DISABLED": "true"}) is False
        assert not tracing.enabled()

    def test_disabled_wins_over_an_endpoint(self) -> None:
        env = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://127.0.0.1:4318", "OTEL_SDK_DISABLED": "true"}
        assert configure_tracing("loyalty", env) is False
        assert not tracing.enabled()

    def test_an_endpoint_turns_it_on_and_spans_reach_it_over_otlp_http(self) -> None:
        received: list[tuple[str, bytes]] = []

        class Collector(http.server.BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                received.append((self.path, body))
                self.send_response(200)
                self.send_header("Content-Type", "application/x-protobuf")
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        server = http.server.HTTPServer(("127.0.0.1", 0), Collector)
        thread = threading.Thread(target=server.serve_forever, daemon=True)
        thread.start()
        try:
            env = {"OTEL_EXPORTER_OTLP_ENDPOINT": f"http://127.0.0.1:{server.server_port}"}
            assert configure_tracing("loyalty", env) is True
            assert tracing.enabled()
            with tracing.continued("apply afterglow.order.placed.v1", A):
                pass
            assert flush_spans(timeout_s=10)
        finally:
            shutdown_tracing()
            server.shutdown()
        [(path, body)] = received
        assert path == "/v1/traces"
        # OTLP protobuf: the resource's service.name and the span's name, as bytes.
        assert b"loyalty" in body and b"apply afterglow.order.placed.v1" in body
        assert bytes.fromhex("4bf92f3577b34da6a3ce929d0e0e4736") in body  # the trace id


class Echo(http.server.BaseHTTPRequestHandler):
    """A local HTTP server that answers 204 and remembers the traceparent it got."""

    traceparents: list[str | None] = []

    def do_POST(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        Echo.traceparents.append(self.headers.get("traceparent"))
        self.send_response(204)
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def echo() -> Iterator[str]:
    Echo.traceparents = []
    server = http.server.HTTPServer(("127.0.0.1", 0), Echo)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_port}/hook"
    finally:
        server.shutdown()


class TestInstrumentations:
    async def test_an_outbound_call_is_a_client_span_under_the_work_and_names_it(
        self, spans: InMemorySpanExporter, echo: str
    ) -> None:
        async with instrument_http(httpx.AsyncClient()) as client:
            with tracing.continued("send welcome", A):
                r = await client.post(echo, content=b"{}")
        assert r.status_code == 204
        [post, send] = spans.get_finished_spans()
        assert send.context is not None and post.context is not None
        assert post.name == "POST" and post.kind is tracing.SpanKind.CLIENT
        assert post.parent is not None and post.parent.span_id == send.context.span_id
        assert (post.attributes or {})["http.status_code"] == 204
        # The receiver is told the call's span: one that traces continues the trace.
        assert Echo.traceparents == [tracing.format_traceparent(post.context)]

    async def test_a_call_outside_any_work_starts_no_trace(
        self, spans: InMemorySpanExporter, echo: str
    ) -> None:
        async with instrument_http(httpx.AsyncClient()) as client:
            r = await client.post(echo, content=b"{}")
        assert r.status_code == 204
        assert spans.get_finished_spans() == ()
        assert Echo.traceparents == [None]

    def test_off_the_instrumentations_are_not_even_imported(self) -> None:
        # A process of its own: this one may have imported them for the tests above.
        code = """
import sys, httpx
from afterglow.kit.db import create_engine
from afterglow.kit.tracing import configure_tracing, instrument_engine, instrument_http
assert configure_tracing("loyalty", {}) is False
client = httpx.AsyncClient()
assert instrument_http(client) is client
instrument_engine(create_engine("postgresql+asyncpg://u@127.0.0.1/x", application_name="t"))
loaded = [m for m in sys.modules if m.startswith("opentelemetry.instrumentation")]
assert not loaded, loaded
"""
        done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert done.returncode == 0, done.stderr


def log_line() -> dict[str, object]:
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "hello", (), None)
    out: dict[str, object] = json.loads(JsonFormatter("loyalty").format(record))
    return out


class TestLogs:
    def test_a_line_carries_the_trace_and_span_of_the_work(self) -> None:
        assert "trace_id" not in log_line()
        with tracing.continued("apply", A, event_id="e1"):
            line = log_line()
        assert line["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
        assert line["span_id"] == "00f067aa0ba902b7"
        assert line["event_id"] == "e1"

    def test_with_tracing_on_the_span_is_the_works_own(self, spans: InMemorySpanExporter) -> None:
        with tracing.continued("apply", A):
            line = log_line()
        [span] = spans.get_finished_spans()
        assert span.context is not None
        assert line["trace_id"] == "4bf92f3577b34da6a3ce929d0e0e4736"
        assert line["span_id"] == f"{span.context.span_id:016x}"
