"""One customer across platform and helpdesk; escalations become helpdesk tickets.

Signed Shopify and Zendesk webhooks in, ticket events out on the real broker; the
escalation worker against local Zendesk and Gorgias stand-ins (tests/fakes/fake_helpdesk.py)
that check their auth headers and required fields.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from afterglow.devstack.pytest_plugin import serve_app
from afterglow.devstack.stack import Stack
from afterglow.events import CloudEvent, KafkaConfig, build_producer, to_record
from afterglow.events import catalog as c
from afterglow.events.testing import eventually
from afterglow.ingest.app import create_app
from afterglow.ingest.models import TicketCustomer
from afterglow.ingest.settings import IngestSettings
from tests.fakes.fake_helpdesk import FakeHelpdesk, running_helpdesk

from ..ingest_support import (
    ADMIN,
    dumps,
    fixture,
    post_shopify,
    register,
    zendesk_headers,
)

pytestmark = pytest.mark.timeout(180)

CUSTOMER = "115310627314723954"  # the fixture order's Shopify customer
EMAIL = "Jon@Example.com"  # the fixture order's email


@pytest.fixture(scope="module")
def helpdesk() -> Iterator[FakeHelpdesk]:
    with running_helpdesk() as fake:
        yield fake


@pytest.fixture(scope="module")
async def app(settings: IngestSettings) -> AsyncIterator[tuple[Any, httpx.AsyncClient]]:
    """Ingest allowed to call 127.0.0.1 (the fakes), with short helpdesk deadlines."""
    quick = settings.model_copy(
        update={
            "outbound_allow_private": True,
            "ingest_helpdesk_timeout_s": 1.0,
            "ingest_helpdesk_retry_base_s": 0.2,
            "ingest_helpdesk_poll_s": 0.1,
            "consumer_retry_base_delay_s": 0.05,
        }
    )
    application = create_app(quick)
    async with serve_app(application) as client:
        yield application.state.runtime, client


@pytest.fixture(scope="module")
async def producer(stack: Stack) -> AsyncIterator[Any]:
    p = build_producer(
        KafkaConfig(
            stack.kafka_bootstrap_servers, enable_idempotence=stack.kafka_enable_idempotence
        )
    )
    await p.start()
    try:
        yield p
    finally:
        await p.stop()


async def shopify_order(client: httpx.AsyncClient, tenant: str, secret: str) -> None:
    r = await post_shopify(client, tenant, secret, "orders/create", fixture("shopify_order"))
    assert r.json()["status"] == "processed", r.text


async def zendesk(
    client: httpx.AsyncClient, tenant: str, secret: str, kind: str, detail: dict[str, Any]
) -> None:
    """Post a Zendesk ticket event as Zendesk does (ticket.created, or a status change)."""
    created = fixture("zendesk_ticket_created")
    payload = created | {
        "id": str(uuid.uuid4()),
        "type": f"zen:event-type:{kind}",
        "detail": created["detail"] | detail,
        "event": {"current": detail.get("status", "")} if kind != "ticket.created" else {},
    }
    body = dumps(payload)
    r = await client.post(
        f"/webhooks/zendesk/{tenant}", content=body, headers=zendesk_headers(secret, body)
    )
    assert r.status_code == 200, r.text


def ticket_events(tap: Any, tenant: str, ticket_id: str, count: int = 1) -> Any:
    return tap.wait_for(
        lambda e: (
            e.tenantid == tenant
            and e.type.startswith("afterglow.ticket.")
            and e.data.ticket_id == ticket_id
        ),
        count=count,
    )


async def resolution(runtime: Any, tenant: str, ticket_id: str) -> TicketCustomer:
    async def probe() -> TicketCustomer | None:
        async with runtime.sessionmaker() as s:
            return await s.get(TicketCustomer, (tenant, ticket_id))

    row = await eventually(probe, lambda r: r is not None)
    assert row is not None
    return row


class TestTicketResolvesToCustomer:
    async def test_requester_email_of_a_shopify_customer(self, app, tap, tenant_id):
        runtime, client = app
        secrets = await register(client, tenant_id)
        await shopify_order(client, tenant_id, secrets["shopify"])
        detail = {"id": "501", "requester": {"email": "  jon@example.COM "}}
        await zendesk(client, tenant_id, secrets["zendesk"], "ticket.created", detail)
        [opened] = await ticket_events(tap, tenant_id, "zendesk:501")
        assert (opened.type, opened.subject) == ("afterglow.ticket.opened.v1", CUSTOMER)
        row = await resolution(runtime, tenant_id, "zendesk:501")
        assert (row.subject, row.resolved_by, row.reason) == (CUSTOMER, "email", None)

    async def test_unknown_requester_is_recorded_and_keyed_to_nobody(self, app, tap, tenant_id):
        runtime, client = app
        secrets = await register(client, tenant_id)
        await shopify_order(client, tenant_id, secrets["shopify"])
        detail = {"id": "502", "requester": {"email": "stranger@example.net"}}
        await zendesk(client, tenant_id, secrets["zendesk"], "ticket.created", detail)
        [opened] = await ticket_events(tap, tenant_id, "zendesk:502")
        assert opened.subject.startswith("email:") and opened.subject != CUSTOMER
        row = await resolution(runtime, tenant_id, "zendesk:502")
        assert row.resolved_by == "unresolved"
        assert row.reason == "no order links the requester's email or phone to a customer"

    async def test_a_later_order_relinks_new_tickets_not_an_open_one(self, app, tap, tenant_id):
        """Ticket 503 from an unknown email; then an order shows that email: 503's
        resolution stays where it was applied, ticket 504 goes to the customer."""
        _, client = app
        secrets = await register(client, tenant_id)
        await zendesk(
            client,
            tenant_id,
            secrets["zendesk"],
            "ticket.created",
            {"id": "503", "requester": {"email": EMAIL}},
        )
        [first] = await ticket_events(tap, tenant_id, "zendesk:503")
        await shopify_order(client, tenant_id, secrets["shopify"])
        await zendesk(
            client,
            tenant_id,
            secrets["zendesk"],
            "ticket.status_changed",
            {"id": "503", "requester": {"email": EMAIL}, "status": "SOLVED"},
        )
        await zendesk(
            client,
            tenant_id,
            secrets["zendesk"],
            "ticket.created",
            {"id": "504", "requester": {"email": EMAIL}},
        )
        events = await ticket_events(tap, tenant_id, "zendesk:503", count=2)
        assert [e.subject for e in events] == [first.subject, first.subject]
        assert events[1].type == "afterglow.ticket.resolved.v1"
        [second] = await ticket_events(tap, tenant_id, "zendesk:504")
        assert second.subject == CUSTOMER

    async def test_requester_known_by_id_only_is_looked_up_in_zendesk_once(
        self, app, tap, helpdesk, tenant_id
    ):
        # As Zendesk sends its ticket events: requester_id, no email. Two tickets of
        # the same requester: both reach the customer, Zendesk is asked once.
        runtime, client = app
        secrets = await register(client, tenant_id)
        await shopify_order(client, tenant_id, secrets["shopify"])
        await connect_zendesk(client, helpdesk, tenant_id)
        user = str(uuid.uuid4().int % 10**12)
        helpdesk.zendesk_users[user] = {"email": "JON@example.com", "name": "Jon"}
        for ticket in ("511", "512"):
            detail = {"id": ticket, "requester_id": user}
            await zendesk(client, tenant_id, secrets["zendesk"], "ticket.created", detail)
            [opened] = await ticket_events(tap, tenant_id, f"zendesk:{ticket}")
            assert opened.subject == CUSTOMER
            row = await resolution(runtime, tenant_id, f"zendesk:{ticket}")
            assert (row.resolved_by, row.reason) == ("email", None)
        assert helpdesk.user_lookups.count(user) == 1

    async def test_a_refused_lookup_is_the_reason_and_touches_no_journey(
        self, app, tap, helpdesk, tenant_id
    ):
        runtime, client = app
        secrets = await register(client, tenant_id)
        await shopify_order(client, tenant_id, secrets["shopify"])
        await put_helpdesk(
            client,
            tenant_id,
            {
                "kind": "zendesk",
                "api_base_url": helpdesk.url,
                "username": "nobody@example.com",
                "secret": "wrong",
            },
        )
        user = str(uuid.uuid4().int % 10**12)
        helpdesk.zendesk_users[user] = {"email": EMAIL}
        detail = {"id": "513", "requester_id": user}
        await zendesk(client, tenant_id, secrets["zendesk"], "ticket.created", detail)
        [opened] = await ticket_events(tap, tenant_id, "zendesk:513")
        assert opened.subject == f"zendesk:{user}"
        row = await resolution(runtime, tenant_id, "zendesk:513")
        assert row.resolved_by == "unresolved"
        assert row.reason.startswith(
            "the requester's email could not be looked up: zendesk answered 401"
        )
        assert user not in helpdesk.user_lookups  # refused at the door

    async def test_the_requester_lookup_goes_through_the_outbound_guard(
        self, app, tap, helpdesk, tenant_id
    ):
        # In production (no private addresses) the Zendesk stand-in on 127.0.0.1 is
        # refused before any request: the ticket says so and Zendesk is never asked.
        runtime, client = app
        secrets = await register(client, tenant_id)
        await shopify_order(client, tenant_id, secrets["shopify"])
        await connect_zendesk(client, helpdesk, tenant_id)
        user = str(uuid.uuid4().int % 10**12)
        helpdesk.zendesk_users[user] = {"email": EMAIL}
        allowed = runtime.settings
        runtime.settings = allowed.model_copy(update={"outbound_allow_private": False})
        try:
            detail = {"id": "514", "requester_id": user}
            await zendesk(client, tenant_id, secrets["zendesk"], "ticket.created", detail)
            [opened] = await ticket_events(tap, tenant_id, "zendesk:514")
        finally:
            runtime.settings = allowed
        assert opened.subject == f"zendesk:{user}"
        row = await resolution(runtime, tenant_id, "zendesk:514")
        assert row.reason and "127.0.0.1 is not a public address" in row.reason
        assert user not in helpdesk.user_lookups

    async def test_an_erased_customer_is_no_longer_linked(self, app, tap, tenant_id):
        runtime, client = app
        secrets = await register(client, tenant_id)
        await shopify_order(client, tenant_id, secrets["shopify"])
        redact = fixture("shopify_customers_redact")
        redact["shop_domain"] = f"{tenant_id}.myshopify.com"
        redact["customer"] = {"id": int(CUSTOMER), "email": EMAIL}
        r = await post_shopify(client, tenant_id, secrets["shopify"], "customers/redact", redact)
        assert r.json()["status"] == "processed", r.text
        detail = {"id": "505", "requester": {"email": EMAIL}}
        await zendesk(client, tenant_id, secrets["zendesk"], "ticket.created", detail)
        [opened] = await ticket_events(tap, tenant_id, "zendesk:505")
        assert opened.subject != CUSTOMER
        assert (await resolution(runtime, tenant_id, "zendesk:505")).resolved_by == "unresolved"


class TestEscalationOpensTicket:
    async def test_zendesk_ticket_with_score_comment_and_order(
        self, app, tap, producer, helpdesk, tenant_id
    ):
        runtime, client = app
        secrets = await register(client, tenant_id)
        await shopify_order(client, tenant_id, secrets["shopify"])
        await connect_zendesk(client, helpdesk, tenant_id)
        esc_id = await escalate(producer, tenant_id, CUSTOMER, comment="Box arrived crushed")
        ticket = await helpdesk_ticket(helpdesk, esc_id)
        assert ticket["requester"] == {"email": "jon@example.com"}
        assert "3/10" in ticket["description"]
        assert "Box arrived crushed" in ticket["description"]
        assert "shopify:820982911946154508" in ticket["description"]
        assert {"afterglow", "afterglow_escalation"} <= set(ticket["tags"])
        assert ticket["priority"] == "high"
        row = await escalation_status(client, tenant_id, esc_id, "created")
        assert row["ticket"] == f"zendesk:{ticket['id']}"

        # Zendesk's webhook about that ticket comes back: it is the escalated customer's.
        detail = {"id": str(ticket["id"]), "external_id": ticket["external_id"]}
        await zendesk(client, tenant_id, secrets["zendesk"], "ticket.created", detail)
        [opened] = await ticket_events(tap, tenant_id, f"zendesk:{ticket['id']}")
        assert opened.subject == CUSTOMER
        resolved = await resolution(runtime, tenant_id, f"zendesk:{ticket['id']}")
        assert resolved.resolved_by == "escalation"

    async def test_a_lost_answer_is_retried_without_a_second_ticket(
        self, app, producer, helpdesk, tenant_id
    ):
        _, client = app
        await register(client, tenant_id)
        await connect_zendesk(client, helpdesk, tenant_id)
        helpdesk.slow_once = 3.0  # created, then the answer outlives ingest's 1 s deadline
        esc_id = await escalate(producer, tenant_id, "cus-slow")
        row = await escalation_status(client, tenant_id, esc_id, "created")
        assert row["attempts"] >= 2
        mine = [t for t in helpdesk.tickets if t["external_id"].endswith(esc_id)]
        assert len(mine) == 1
        assert row["ticket"] == f"zendesk:{mine[0]['id']}"

    async def test_gorgias_ticket_names_the_customer_and_one_message(
        self, app, producer, helpdesk, tenant_id
    ):
        _, client = app
        secrets = await register(client, tenant_id)
        await shopify_order(client, tenant_id, secrets["shopify"])
        helpdesk.gorgias_keys[tenant_id] = "gorgias-key"
        await put_helpdesk(
            client,
            tenant_id,
            {
                "kind": "gorgias",
                "api_base_url": helpdesk.url,
                "username": tenant_id,
                "secret": "gorgias-key",
            },
        )
        esc_id = await escalate(producer, tenant_id, CUSTOMER, comment="Too late")
        ticket = await helpdesk_ticket(helpdesk, esc_id)
        assert ticket["helpdesk"] == "gorgias"
        assert ticket["requester"] == {"email": "jon@example.com"}
        assert "Too late" in ticket["description"]

    async def test_gorgias_lost_answer_is_retried_without_a_second_ticket(
        self, app, producer, helpdesk, tenant_id
    ):
        # Gorgias takes no idempotency key: the retry must find the ticket by the
        # external_id it carries, or the customer gets two tickets.
        _, client = app
        secrets = await register(client, tenant_id)
        await shopify_order(client, tenant_id, secrets["shopify"])
        helpdesk.gorgias_keys[tenant_id] = "gorgias-key"
        await put_helpdesk(
            client,
            tenant_id,
            {
                "kind": "gorgias",
                "api_base_url": helpdesk.url,
                "username": tenant_id,
                "secret": "gorgias-key",
            },
        )
        helpdesk.slow_once = 3.0  # created, then the answer outlives ingest's 1 s deadline
        esc_id = await escalate(producer, tenant_id, CUSTOMER)
        row = await escalation_status(client, tenant_id, esc_id, "created")
        assert row["attempts"] >= 2
        mine = [t for t in helpdesk.tickets if (t["external_id"] or "").endswith(esc_id)]
        assert len(mine) == 1
        assert row["ticket"] == f"gorgias:{mine[0]['id']}"

    async def test_refused_credentials_fail_with_the_reason(
        self, app, producer, helpdesk, tenant_id
    ):
        _, client = app
        await register(client, tenant_id)
        await put_helpdesk(
            client,
            tenant_id,
            {
                "kind": "zendesk",
                "api_base_url": helpdesk.url,
                "username": "nobody@example.com",
                "secret": "wrong",
            },
        )
        esc_id = await escalate(producer, tenant_id, "cus-x")
        row = await escalation_status(client, tenant_id, esc_id, "failed")
        assert row["last_error"].startswith("zendesk answered 401")
        assert not [t for t in helpdesk.tickets if t["external_id"].endswith(esc_id)]

    async def test_gorgias_refuses_a_wrong_api_key_and_no_ticket_is_opened(
        self, app, producer, helpdesk, tenant_id
    ):
        _, client = app
        secrets = await register(client, tenant_id)
        await shopify_order(client, tenant_id, secrets["shopify"])
        helpdesk.gorgias_keys[tenant_id] = "gorgias-key"
        await put_helpdesk(
            client,
            tenant_id,
            {
                "kind": "gorgias",
                "api_base_url": helpdesk.url,
                "username": tenant_id,
                "secret": "not-the-key",
            },
        )
        esc_id = await escalate(producer, tenant_id, CUSTOMER)
        row = await escalation_status(client, tenant_id, esc_id, "failed")
        assert row["last_error"].startswith("gorgias answered 401")
        assert not [t for t in helpdesk.tickets if (t["external_id"] or "").endswith(esc_id)]

    async def test_private_addresses_are_refused_in_production(
        self, app, producer, helpdesk, tenant_id
    ):
        # The module allows private addresses (its fakes are on 127.0.0.1); production
        # not: the address is refused when saved, and checked again before each call.
        runtime, client = app
        await register(client, tenant_id)
        await connect_zendesk(client, helpdesk, tenant_id)
        allowed = runtime.settings
        runtime.settings = allowed.model_copy(update={"outbound_allow_private": False})
        try:
            r = await client.put(
                f"/admin/tenants/{tenant_id}/helpdesk",
                headers=ADMIN,
                json={
                    "kind": "zendesk",
                    "api_base_url": "http://169.254.169.254",
                    "username": "a@b.c",
                    "secret": "t",
                },
            )
            assert r.status_code == 422 and r.json()["error"]["field"] == "api_base_url"
            esc_id = await escalate(producer, tenant_id, "cus-private")
            row = await escalation_status(client, tenant_id, esc_id, "failed")
        finally:
            runtime.settings = allowed
        assert "127.0.0.1 is not a public address" in row["last_error"]
        assert not [t for t in helpdesk.tickets if t["external_id"].endswith(esc_id)]


async def put_helpdesk(client: httpx.AsyncClient, tenant: str, body: dict[str, Any]) -> None:
    r = await client.put(f"/admin/tenants/{tenant}/helpdesk", headers=ADMIN, json=body)
    assert r.status_code == 200, r.text


async def connect_zendesk(client: httpx.AsyncClient, fake: FakeHelpdesk, tenant: str) -> None:
    agent = f"agent@{tenant}.example.com"
    fake.zendesk_tokens[agent] = f"token-{tenant}"
    await put_helpdesk(
        client,
        tenant,
        {
            "kind": "zendesk",
            "api_base_url": fake.url,
            "username": agent,
            "secret": f"token-{tenant}",
        },
    )


async def escalate(producer: Any, tenant: str, customer: str, comment: str | None = None) -> str:
    """As the journey orchestrator does for a detractor."""
    event = CloudEvent.new(
        c.SupportEscalationRequested(
            reason="detractor",
            requested_at=datetime.now(UTC),
            priority="high",
            order_id="shopify:820982911946154508",
            score=3,
            comment=comment,
        ),
        tenant_id=tenant,
        subject=customer,
        source="afterglow/journey-orchestrator",
    )
    rec = to_record(event)
    await producer.send_and_wait(rec.topic, rec.value, key=rec.key, headers=rec.headers)
    return event.id


async def helpdesk_ticket(fake: FakeHelpdesk, esc_id: str) -> dict[str, Any]:
    async def probe() -> list[dict[str, Any]]:
        return [t for t in fake.tickets if (t.get("external_id") or "").endswith(esc_id)]

    [ticket] = await eventually(probe, bool, timeout=60)
    assert ticket["external_id"] == f"afterglow-escalation:{esc_id}"
    return ticket


async def escalation_status(
    client: httpx.AsyncClient, tenant: str, esc_id: str, status: str
) -> dict[str, Any]:
    async def probe() -> dict[str, Any] | None:
        r = await client.get(f"/admin/tenants/{tenant}/escalations", headers=ADMIN)
        assert r.status_code == 200, r.text
        return next((e for e in r.json()["escalations"] if e["escalation_id"] == esc_id), None)

    row = await eventually(probe, lambda r: r is not None and r["status"] == status, timeout=60)
    assert row is not None
    return row
