"""The support loop across services: helpdesk tickets reach the customer's journey, and
a detractor's escalation comes back as a ticket that holds the review ask.

orders-ingest (real clock) takes signed Shopify and Zendesk webhooks and opens tickets
in a local Zendesk stand-in (a third party: it checks the API token auth and the
required fields); the journey orchestrator runs on a ManualClock that the test moves
(days pass in milliseconds). Both are the real apps on the real PostgreSQL and broker.
The survey answer is published as feedback publishes it.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest

from afterglow.devstack.pytest_plugin import serve_app
from afterglow.devstack.stack import Stack
from afterglow.events import CloudEvent, KafkaConfig, build_producer, to_record
from afterglow.events import catalog as c
from afterglow.events.testing import TopicTap, eventually
from afterglow.ingest.app import create_app as ingest_app
from afterglow.journeys.app import create_app as journeys_app
from afterglow.journeys.settings import Settings as JourneySettings
from afterglow.kit.clock import ManualClock
from tests.fakes.fake_helpdesk import FakeHelpdesk, running_helpdesk

FIXTURES = Path(__file__).parents[2] / "services/orders-ingest/tests/fixtures"

ADMIN = "admin-token-support-loop"
DAY = timedelta(days=1)
EMAIL = "Jon@Example.com"  # the fixture order's

pytestmark = pytest.mark.timeout(300)


@dataclass
class Apps:
    ingest: httpx.AsyncClient
    journeys: httpx.AsyncClient
    journeys_runtime: Any
    clock: ManualClock
    producer: Any
    tap: TopicTap
    zendesk: FakeHelpdesk


@pytest.fixture(scope="module")
def zendesk() -> Iterator[FakeHelpdesk]:
    with running_helpdesk() as fake:
        yield fake


# Module scope: the apps consume in their services' groups; they stop with the module.
@pytest.fixture(scope="module")
async def apps(stack: Stack, ingest_settings: Any, zendesk: FakeHelpdesk) -> AsyncIterator[Apps]:
    ingest = ingest_app(
        ingest_settings(
            ADMIN,
            ingest_helpdesk_poll_s=0.1,
            outbound_allow_private=True,  # the Zendesk stand-in is on 127.0.0.1
        )
    )
    clock = ManualClock(datetime.now(UTC))
    journeys = journeys_app(
        JourneySettings(
            relay_poll_interval_s=0.1,
            consumer_retry_attempts=3,
            consumer_retry_base_delay_s=0.05,
            journeys_timer_poll_interval_s=0.05,
            log_json=False,
        ),
        clock,
    )
    producer = build_producer(
        KafkaConfig(
            stack.kafka_bootstrap_servers, enable_idempotence=stack.kafka_enable_idempotence
        )
    )
    await producer.start()
    try:
        async with (
            TopicTap(
                stack.kafka_bootstrap_servers,
                "afterglow.reviews",
                "afterglow.surveys",
                "afterglow.support",
                "afterglow.tickets",
            ) as tap,
            serve_app(ingest) as i,
            serve_app(journeys) as j,
        ):
            yield Apps(i, j, journeys.state.runtime, clock, producer, tap, zendesk)
    finally:
        await producer.stop()


@dataclass
class Shop:
    tenant: str
    secrets: dict[str, str]
    journeys_auth: dict[str, str]


def admin() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN}"}


async def open_shop(apps: Apps, tenant: str) -> Shop:
    """A Shopify shop with Zendesk as its helpdesk (webhooks in, API token out)."""
    r = await apps.ingest.post(
        "/admin/tenants",
        headers=admin(),
        json={
            "tenant_id": tenant,
            "name": tenant,
            "shopify_shop_domain": f"{tenant}.myshopify.com",
            "platforms": ["shopify", "zendesk"],
        },
    )
    assert r.status_code == 201, r.text
    secrets = r.json()["secrets"]
    agent = f"agent@{tenant}.example.com"
    apps.zendesk.zendesk_tokens[agent] = f"token-{tenant}"
    r = await apps.ingest.put(
        f"/admin/tenants/{tenant}/helpdesk",
        headers=admin(),
        json={
            "kind": "zendesk",
            "api_base_url": apps.zendesk.url,
            "username": agent,
            "secret": f"token-{tenant}",
        },
    )
    assert r.status_code == 200, r.text
    async with apps.journeys_runtime.sessionmaker.begin() as s:
        key = await apps.journeys_runtime.api_keys.create(s, tenant, ["journeys:read"])
    return Shop(tenant, secrets, {"Authorization": f"Bearer {key}"})


def b64hmac(secret: str, message: bytes) -> str:
    return base64.b64encode(hmac.new(secret.encode(), message, hashlib.sha256).digest()).decode()


async def shopify(apps: Apps, shop: Shop, topic: str, payload: dict[str, Any]) -> None:
    raw = json.dumps(payload).encode()
    r = await apps.ingest.post(
        "/webhooks/shopify",
        content=raw,
        headers={
            "Content-Type": "application/json",
            "X-Shopify-Topic": topic,
            "X-Shopify-Shop-Domain": f"{shop.tenant}.myshopify.com",
            "X-Shopify-Webhook-Id": str(uuid.uuid4()),
            "X-Shopify-Hmac-Sha256": b64hmac(shop.secrets["shopify"], raw),
        },
    )
    assert r.status_code == 200, r.text


async def zendesk_webhook(apps: Apps, shop: Shop, kind: str, detail: dict[str, Any]) -> None:
    """As Zendesk posts a ticket event (ticket.created, ticket.status_changed)."""
    base = json.loads((FIXTURES / "zendesk_ticket_created.json").read_text())
    payload = base | {
        "id": str(uuid.uuid4()),
        "type": f"zen:event-type:{kind}",
        "time": datetime.now(UTC).isoformat(),
        "detail": base["detail"] | detail,
        "event": {"current": detail["status"]} if "status" in detail else {},
    }
    body = json.dumps(payload).encode()
    ts = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    r = await apps.ingest.post(
        f"/webhooks/zendesk/{shop.tenant}",
        content=body,
        headers={
            "Content-Type": "application/json",
            "x-zendesk-webhook-id": "01GZ",
            "x-zendesk-webhook-invocation-id": str(uuid.uuid4().int % 10**9),
            "x-zendesk-webhook-signature-timestamp": ts,
            "x-zendesk-webhook-signature": b64hmac(shop.secrets["zendesk"], ts.encode() + body),
        },
    )
    assert r.status_code == 200, r.text


async def place_and_fulfil(apps: Apps, shop: Shop, customer_id: int, order_id: int) -> str:
    """A Shopify order placed and fulfilled now (by the journey's clock). Returns the
    customer key the journey is under (the Shopify customer id)."""
    now = apps.clock.now().isoformat()
    order = json.loads((FIXTURES / "shopify_order.json").read_text())
    order |= {"id": order_id, "name": f"#{order_id}", "created_at": now, "processed_at": now}
    order["customer"] = dict(order["customer"], id=customer_id)
    await shopify(apps, shop, "orders/create", order)
    fulfilment = json.loads((FIXTURES / "shopify_fulfillment.json").read_text())
    fulfilment |= {"order_id": order_id, "created_at": now, "updated_at": now}
    fulfilment.pop("shipment_status", None)  # fulfilled, not yet delivered
    await shopify(apps, shop, "fulfillments/create", fulfilment)
    return str(customer_id)


async def journey(apps: Apps, shop: Shop, customer: str, check: Any) -> dict[str, Any]:
    async def probe() -> dict[str, Any]:
        r = await apps.journeys.get(f"/v1/customers/{customer}/journey", headers=shop.journeys_auth)
        if r.status_code != 200 or not r.json().get("instances"):
            return {}
        return dict(r.json()["instances"][0])

    return await eventually(probe, lambda i: bool(i) and check(i), timeout=60)


def fulfilled(i: dict[str, Any]) -> bool:
    return "afterglow.order.fulfilled.v1" in i["anchors"]


def out(apps: Apps, shop: Shop, customer: str, etype: str) -> Any:
    return apps.tap.wait_for(
        lambda e: (
            e.tenantid == shop.tenant
            and e.subject == customer
            and e.type == f"afterglow.{etype}.v1"
        ),
        timeout=60,
    )


def seen(apps: Apps, shop: Shop, customer: str, etype: str) -> list[Any]:
    from afterglow.events import from_record

    found = []
    for r in apps.tap.records:
        try:
            e = from_record(r.key, r.value, r.headers)
        except ValueError:
            continue
        if e.tenantid == shop.tenant and e.subject == customer and e.type == etype:
            found.append(e)
    return found


class TestSupportLoop:
    async def test_a_zendesk_ticket_from_the_customers_email_pauses_the_journey(
        self, apps: Apps, tenant_id: str
    ) -> None:
        shop = await open_shop(apps, tenant_id)
        customer = await place_and_fulfil(apps, shop, 61_001, 91_001)
        await journey(apps, shop, customer, lambda i: i["status"] == "running" and fulfilled(i))
        # The requester is known to Zendesk by email only (and spelled differently).
        requester = {"id": "7001", "requester": {"email": "  JON@example.com"}}
        await zendesk_webhook(apps, shop, "ticket.created", requester)
        paused = await journey(apps, shop, customer, lambda i: i["status"] == "paused")
        assert paused["next_timer"] is None  # a paused journey holds no timer
        await zendesk_webhook(apps, shop, "ticket.status_changed", requester | {"status": "SOLVED"})
        await journey(apps, shop, customer, lambda i: i["status"] == "running")

    async def test_a_zendesk_ticket_naming_its_requester_by_id_only_pauses_the_journey(
        self, apps: Apps, tenant_id: str
    ) -> None:
        # As Zendesk really sends ticket events: requester_id, no email. Ingest asks
        # Zendesk who that is (with the shop's API token) and finds the customer.
        shop = await open_shop(apps, tenant_id)
        customer = await place_and_fulfil(apps, shop, 61_003, 91_003)
        await journey(apps, shop, customer, lambda i: i["status"] == "running" and fulfilled(i))
        user = str(uuid.uuid4().int % 10**12)
        apps.zendesk.zendesk_users[user] = {"email": EMAIL, "name": "Jon"}
        requester = {"id": "7003", "requester_id": user}
        await zendesk_webhook(apps, shop, "ticket.created", requester)
        await journey(apps, shop, customer, lambda i: i["status"] == "paused")
        await zendesk_webhook(apps, shop, "ticket.status_changed", requester | {"status": "SOLVED"})
        await journey(apps, shop, customer, lambda i: i["status"] == "running")
        assert apps.zendesk.user_lookups.count(user) == 1  # cached: the solve asked nothing more

    async def test_a_detractors_ticket_holds_the_review_ask_until_it_is_solved(
        self, apps: Apps, tenant_id: str
    ) -> None:
        shop = await open_shop(apps, tenant_id)
        customer = await place_and_fulfil(apps, shop, 61_002, 91_002)
        await journey(apps, shop, customer, fulfilled)
        apps.clock.advance(9 * DAY)  # fulfilled + 9 days: the NPS survey
        [survey] = await out(apps, shop, customer, "survey.requested")
        answer = CloudEvent.new(
            c.SurveyResponded(
                survey_id=f"s-{customer}",
                kind="nps",
                score=3,
                band="detractor",
                comment="The box arrived crushed",
                responded_at=apps.clock.now(),
                order_id=survey.data.order_id,
                request_id=survey.data.request_id,
            ),
            tenant_id=shop.tenant,
            subject=customer,
            source="afterglow/feedback",
        )
        rec = to_record(answer)
        await apps.producer.send_and_wait(rec.topic, rec.value, key=rec.key, headers=rec.headers)

        # The escalation opens a ticket in Zendesk, with the score and the comment.
        [esc] = await out(apps, shop, customer, "support.escalation_requested")

        async def tickets() -> list[dict[str, Any]]:
            return [t for t in apps.zendesk.tickets if t["external_id"].endswith(esc.id)]

        [ticket] = await eventually(tickets, bool, timeout=60)
        assert "3/10" in ticket["description"]
        assert "The box arrived crushed" in ticket["description"]
        assert ticket["requester"] == {"email": "jon@example.com"}

        # Zendesk's webhook about that ticket comes back: the journey pauses.
        detail = {"id": str(ticket["id"]), "external_id": ticket["external_id"]}
        await zendesk_webhook(apps, shop, "ticket.created", detail)
        await journey(apps, shop, customer, lambda i: i["status"] == "paused")
        apps.clock.advance(7 * DAY)  # fulfilled + 16 days: the review ask would be due
        paused = await journey(apps, shop, customer, lambda i: i["status"] == "paused")
        assert paused["next_timer"] is None  # nothing can fire while the ticket is open
        assert not seen(apps, shop, customer, "afterglow.review.requested.v1")

        await zendesk_webhook(apps, shop, "ticket.status_changed", detail | {"status": "SOLVED"})
        [ask] = await out(apps, shop, customer, "review.requested")
        assert ask.data.order_id == "shopify:91002"
