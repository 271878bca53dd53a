"""One trace from a signed webhook to the message it causes, and a timer linked to it.

orders-ingest and the journey orchestrator run in this process on the session's stack,
with tracing on through an in-memory exporter. A signed Shopify ``orders/create`` is
stored by the webhook (its request's trace goes with the stored delivery), applied by
ingest's processing worker, published by the relay (a span per send) as
``order.placed`` with ``ce_traceparent``, applied by the journey engine (which asks for
the welcome message: ``message.requested``, relayed in turn), stored by the messaging
consumer and sent by the dispatcher to a local receiver. The send span must be in the
webhook's trace, its parents leading back to the request's span; the POST to the
receiver is the send span's HTTP client child and each apply has its SQL statements as
children (the SQLAlchemy and httpx instrumentations). The journey's next
stage waits an hour: the clock moves, the timer fires in a trace of its own, with a
link to the webhook's, and the check-in it asks for carries the timer's trace.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from afterglow.devstack.demo import Receiver
from afterglow.devstack.pytest_plugin import serve_app
from afterglow.devstack.stack import Stack
from afterglow.events import tracing
from afterglow.events.testing import TopicTap, eventually
from afterglow.ingest.app import create_app as ingest_app
from afterglow.ingest.settings import IngestSettings
from afterglow.journeys.app import create_app as journeys_app
from afterglow.journeys.settings import Settings as JourneySettings
from afterglow.kit.app import Runtime
from afterglow.kit.clock import ManualClock

ADMIN = "admin-token-one-trace"
SHOPIFY_ORDER = (
    Path(__file__).parents[2] / "services/orders-ingest/tests/fixtures/shopify_order.json"
)
# Welcome at once, then a check-in an hour later: a timer, moved by the test's clock.
JOURNEY = {
    "name": "traced",
    "trigger": {"events": ["order.placed"]},
    "stages": [
        {
            "name": "onboarding",
            "actions": [{"type": "message", "kind": "welcome", "category": "transactional"}],
        },
        {
            "name": "check_in",
            "wait": "PT1H",
            "actions": [{"type": "message", "kind": "check_in", "category": "transactional"}],
        },
    ],
}

pytestmark = pytest.mark.timeout(300)


@dataclass
class Traced:
    ingest: httpx.AsyncClient
    journeys: httpx.AsyncClient
    journeys_runtime: Runtime
    clock: ManualClock
    spans: InMemorySpanExporter
    receiver: Receiver
    messages: TopicTap


def daytime(now: datetime) -> datetime:
    """Now, or the next noon (UTC, the customer's zone here) when ``now`` is in the
    dispatcher's quiet hours, which would hold the welcome back; forward only, so the
    order (placed at the real now) is never in the clock's future."""
    if 9 <= now.hour < 17:
        return now
    noon = now.replace(hour=12, minute=0, second=0, microsecond=0)
    return noon if now.hour < 9 else noon + timedelta(days=1)


@pytest.fixture(scope="module")
def exporter() -> Iterator[InMemorySpanExporter]:
    """Tracing on for this module's apps (built after it), off again after them."""
    spans = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(spans))
    tracing.enable(provider)
    try:
        yield spans
    finally:
        tracing.disable()
        provider.shutdown()


@pytest.fixture(scope="module")
async def traced(
    stack: Stack,
    exporter: InMemorySpanExporter,
    ingest_settings: Callable[..., IngestSettings],
) -> AsyncIterator[Traced]:
    clock = ManualClock(daytime(datetime.now(UTC)))
    ingest = ingest_app(ingest_settings(ADMIN))
    journeys = journeys_app(
        JourneySettings(
            database_url=stack.database_url,
            kafka_bootstrap_servers=stack.kafka_bootstrap_servers,
            kafka_enable_idempotence=stack.kafka_enable_idempotence,
            relay_poll_interval_s=0.1,
            journeys_timer_poll_interval_s=0.05,
            outbound_allow_private=True,  # the receiver listens on 127.0.0.1
            log_json=False,
            log_level="WARNING",
        ),
        clock,
    )
    with Receiver().running() as receiver:
        async with (
            TopicTap(stack.kafka_bootstrap_servers, "afterglow.messages") as messages,
            serve_app(ingest) as i,
            serve_app(journeys) as j,
        ):
            yield Traced(i, j, journeys.state.runtime, clock, exporter, receiver, messages)


async def shopify_tenant(t: Traced, tenant: str) -> str:
    r = await t.ingest.post(
        "/admin/tenants",
        headers={"Authorization": f"Bearer {ADMIN}"},
        json={
            "tenant_id": tenant,
            "name": tenant,
            "shopify_shop_domain": f"{tenant}.myshopify.com",
            "platforms": ["shopify"],
        },
    )
    assert r.status_code == 201, r.text
    return str(r.json()["secrets"]["shopify"])


async def traced_journey_and_endpoint(t: Traced, tenant: str) -> None:
    """The tenant's journey is the one above (the default one off) and its messages go
    to the receiver."""
    async with t.journeys_runtime.sessionmaker.begin() as s:
        key = await t.journeys_runtime.api_keys.create(
            s, tenant, ["journeys:read", "journeys:write", "messages:read", "messages:write"]
        )
    h = {"Authorization": f"Bearer {key}"}
    r = await t.journeys.put("/v1/journeys/traced", json=JOURNEY, headers=h)
    assert r.status_code == 201, r.text
    r = await t.journeys.post(
        "/v1/journeys/traced/activate", json={"version": r.json()["version"]}, headers=h
    )
    assert r.status_code == 200, r.text
    r = await t.journeys.post("/v1/journeys/default/deactivate", headers=h)
    assert r.status_code == 200, r.text
    r = await t.journeys.put(
        "/v1/messaging/endpoint",
        json={"url": t.receiver.url, "secret": t.receiver.secret},
        headers=h,
    )
    assert r.status_code == 200, r.text


async def post_order(t: Traced, tenant: str, secret: str, customer_id: int) -> None:
    order = json.loads(SHOPIFY_ORDER.read_text())
    now = datetime.now(UTC).isoformat()
    order |= {"id": 91_001, "name": "#91001", "created_at": now, "processed_at": now}
    order["customer"] = dict(order["customer"], id=customer_id)
    raw = json.dumps(order).encode()
    sig = base64.b64encode(hmac.new(secret.encode(), raw, hashlib.sha256).digest()).decode()
    r = await t.ingest.post(
        "/webhooks/shopify",
        content=raw,
        headers={
            "Content-Type": "application/json",
            "X-Shopify-Topic": "orders/create",
            "X-Shopify-Shop-Domain": f"{tenant}.myshopify.com",
            "X-Shopify-Webhook-Id": str(uuid.uuid4()),
            "X-Shopify-Hmac-Sha256": sig,
        },
    )
    assert r.status_code == 200, r.text


def attr(span: ReadableSpan, name: str) -> Any:
    return (span.attributes or {}).get(name)


def trace_of(span: ReadableSpan) -> int:
    assert span.context is not None
    return span.context.trace_id


async def one_span(t: Traced, match: Callable[[ReadableSpan], bool]) -> ReadableSpan:
    async def finished() -> list[ReadableSpan]:
        return [s for s in t.spans.get_finished_spans() if match(s)]

    [span] = await eventually(finished, lambda found: len(found) == 1, timeout=120)
    return span


def children(span: ReadableSpan, spans: list[ReadableSpan]) -> list[ReadableSpan]:
    assert span.context is not None
    return [s for s in spans if s.parent is not None and s.parent.span_id == span.context.span_id]


def statements(span: ReadableSpan, spans: list[ReadableSpan]) -> list[str]:
    """The SQL the span's work ran, in the order it ended (the statement spans)."""
    return [
        str(attr(c, "db.statement"))
        for c in children(span, spans)
        if c.kind is SpanKind.CLIENT and attr(c, "db.system") == "postgresql"
    ]


def linked_to(span: ReadableSpan, spans: list[ReadableSpan]) -> list[ReadableSpan]:
    """The recorded spans ``span`` links to (an event's span: the batch around it)."""
    wanted = {link.context.span_id for link in span.links}
    return [s for s in spans if s.context is not None and s.context.span_id in wanted]


def ancestors(span: ReadableSpan, spans: list[ReadableSpan]) -> list[ReadableSpan]:
    """``span``'s ancestors, nearest first, as far as they were recorded."""
    by_id = {s.context.span_id: s for s in spans if s.context is not None}
    found = []
    while span.parent is not None and span.parent.span_id in by_id:
        span = by_id[span.parent.span_id]
        found.append(span)
    return found


def ancestry(span: ReadableSpan, spans: list[ReadableSpan]) -> list[str]:
    """The names of ``span``'s ancestors, nearest first, as far as they were recorded."""
    return [s.name for s in ancestors(span, spans)]


class TestOneTrace:
    async def test_the_welcome_is_sent_in_the_webhooks_trace_and_the_timer_links_to_it(
        self, traced: Traced, tenant_id: str
    ) -> None:
        secret = await shopify_tenant(traced, tenant_id)
        await traced_journey_and_endpoint(traced, tenant_id)
        await post_order(traced, tenant_id, secret, customer_id=91_000)

        request = await one_span(
            traced,
            lambda s: s.kind is SpanKind.SERVER and attr(s, "http.route") == "/webhooks/shopify",
        )
        send = await one_span(
            traced,
            lambda s: (
                attr(s, "afterglow.tenant") == tenant_id
                and attr(s, "afterglow.message.kind") == "welcome"
            ),
        )
        assert traced.receiver.of("91000", "welcome"), "the welcome did not reach the receiver"
        assert trace_of(send) == trace_of(request)
        # Parent by parent, through every service and hop, back to the request.
        spans = [s for s in traced.spans.get_finished_spans() if trace_of(s) == trace_of(send)]
        assert ancestry(send, spans) == [
            "publish afterglow.messages",  # the journeys relay sent the request
            "apply afterglow.order.placed.v1",  # the journey engine, which asked for it
            "publish afterglow.orders",  # ingest's relay
            "apply delivery shopify orders/create",  # ingest's processing worker
            "POST /webhooks/shopify",
        ]
        # The messaging consumer that stored the request is in the trace too.
        assert any(s.name == "apply afterglow.message.requested.v1" for s in spans)

        # The POST to the receiver is the send span's child, an HTTP client span (its
        # other children are the statements that settle the message; the attributes
        # have the instrumentation's default, pre-stable HTTP names).
        [post] = [c for c in children(send, spans) if attr(c, "http.method")]
        assert post.kind is SpanKind.CLIENT
        assert post.name == "POST"
        assert statements(send, spans), "the message was settled outside its send span"
        assert str(attr(post, "http.url")).startswith(traced.receiver.url.rstrip("/"))
        assert 200 <= attr(post, "http.status_code") < 300
        # Ingest's processing worker (the delivery) and the messaging consumer (the
        # request) work in sets: the event's span decides, and the batch's writes are the
        # statements of the batch span it links to (its delivery's outbox row, its
        # request's message row among them).
        path = ancestors(send, spans)
        everything = list(traced.spans.get_finished_spans())
        for apply, write in [
            (
                next(s for s in path if s.name == "apply delivery shopify orders/create"),
                "INSERT INTO ingest.outbox",
            ),
            *(
                (s, "INSERT INTO journeys.messages")
                for s in spans
                if s.name == "apply afterglow.message.requested.v1"
            ),
        ]:
            written = [
                sql
                for batch in linked_to(apply, everything)
                for sql in statements(batch, everything)
            ]
            assert any(sql.startswith(write) for sql in written), (apply.name, written)
        # The journey engine works in sets: its event's span decides (no statement),
        # the batch's writes are the statements of the run's span, linked to the event's
        # cause (the ingest relay's send): the instance and the outbox row among them.
        publish = next(s for s in path if s.name == "publish afterglow.orders")
        assert publish.context is not None
        runs = [
            s
            for s in everything
            if s.name.endswith(" events")
            and any(link.context.span_id == publish.context.span_id for link in s.links)
        ]
        written = [sql for run in runs for sql in statements(run, everything)]
        # The batch's writes are one statement (a WITH of the instance, the outbox
        # row and the rest), so the outbox insert is inside it.
        assert any("INSERT INTO journeys.outbox" in sql for sql in written), written
        # A statement outside any traced work (the relay's and the timers' polls) starts
        # no trace of its own.
        assert not [
            s
            for s in traced.spans.get_finished_spans()
            if s.parent is None and attr(s, "db.system") == "postgresql"
        ]

        # An hour on, the check-in's timer fires: a trace of its own, linked to the
        # webhook's (which scheduled it), and the check-in request carries that trace.
        traced.clock.advance(timedelta(hours=2))
        timer = await one_span(
            traced,
            lambda s: s.name == "fire timer stage_due" and attr(s, "afterglow.tenant") == tenant_id,
        )
        assert trace_of(timer) != trace_of(request)
        assert [link.context.trace_id for link in timer.links] == [trace_of(request)]
        [check_in] = await traced.messages.wait_for(
            lambda e: (
                e.tenantid == tenant_id
                and e.type == "afterglow.message.requested.v1"
                and e.data.kind == "check_in"
            ),
            timeout=120,
        )
        assert tracing.parse_traceparent(check_in.traceparent) is not None
        assert tracing.parse_traceparent(check_in.traceparent).trace_id == trace_of(timer)
