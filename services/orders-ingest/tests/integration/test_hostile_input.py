"""Hostile and odd input (issue 14): never a 5xx, never a lost order, never a forged
event. One test per finding, then properties over random signed bodies for every
receiver, checked through the API."""

from __future__ import annotations

import json
import uuid
from typing import Any

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select

from afterglow.events.testing import TopicTap
from afterglow.ingest import intake
from afterglow.ingest.models import Delivery

from ..ingest_support import (
    ADMIN,
    api_key,
    b64hmac,
    delivery_count,
    dumps,
    fixture,
    outbox_count,
    post_shopify,
    post_woo,
    register,
    settled,
    standard_headers,
    zendesk_headers,
)

RECEIVERS = ("shopify", "woocommerce", "standard", "zendesk", "aftership", "bigcommerce")
STORED = {"processed", "archived", "quarantined", "fetch_pending", "failed"}


def of(tenant_id: str, type_suffix: str):  # type: ignore[no-untyped-def]
    return lambda e: e.tenantid == tenant_id and e.type == f"afterglow.{type_suffix}.v1"


async def shop(client: httpx.AsyncClient, tenant_id: str) -> dict[str, str]:
    """A tenant with a secret for every receiver, BigCommerce's token included."""
    secrets = await register(client, tenant_id)
    r = await client.post(f"/admin/tenants/{tenant_id}/secrets/bigcommerce", headers=ADMIN, json={})
    assert r.status_code == 201, r.text
    return secrets | {"bigcommerce": r.json()["secret"]}


def signed(
    platform: str, tenant_id: str, secrets: dict[str, str], body: bytes, topic: str
) -> tuple[str, dict[str, str]]:
    """The URL and headers each platform sends with ``body``."""
    s = secrets[platform]
    json_type = {"Content-Type": "application/json"}
    if platform == "shopify":
        return "/webhooks/shopify", json_type | {
            "X-Shopify-Topic": topic,
            "X-Shopify-Shop-Domain": f"{tenant_id}.myshopify.com",
            "X-Shopify-Webhook-Id": str(uuid.uuid4()),
            "X-Shopify-Hmac-Sha256": b64hmac(s, body),
        }
    if platform == "woocommerce":
        return f"/webhooks/woocommerce/{tenant_id}", json_type | {
            "X-WC-Webhook-Topic": topic,
            "X-WC-Webhook-Delivery-ID": str(uuid.uuid4().int % 10**6),
            "X-WC-Webhook-Signature": b64hmac(s, body),
        }
    if platform == "standard":
        return f"/webhooks/standard/{tenant_id}", standard_headers(s, body)
    if platform == "zendesk":
        return f"/webhooks/zendesk/{tenant_id}", zendesk_headers(s, body)
    if platform == "aftership":
        return f"/webhooks/aftership/{tenant_id}", json_type | {
            "aftership-hmac-sha256": b64hmac(s, body)
        }
    return f"/webhooks/bigcommerce/{tenant_id}", json_type | {"X-Afterglow-Webhook-Token": s}


def canonical_order(**data: Any) -> dict[str, Any]:
    return {
        "type": "order.placed",
        "customer_id": "cus_42",
        "data": {
            "order_id": f"pos:{uuid.uuid4().hex[:8]}",
            "platform": "api",
            "placed_at": "2026-03-02T14:30:00Z",
            "customer": {"email": "ada@example.com"},
            "total": {"amount": 12999, "currency": "USD"},
        }
        | data,
    }


# A valid delivery per receiver, for the properties to spoil.
VALID: dict[str, tuple[str, dict[str, Any]]] = {
    "shopify": ("orders/create", fixture("shopify_order")),
    "woocommerce": ("order.created", fixture("woocommerce_order")),
    "standard": ("", canonical_order()),
    "zendesk": ("", fixture("zendesk_ticket_created")),
    "aftership": ("", fixture("aftership_tracking_update")),
    "bigcommerce": ("", fixture("bigcommerce_order_created")),
}


async def send(
    client: httpx.AsyncClient,
    platform: str,
    tenant_id: str,
    secrets: dict[str, str],
    body: bytes,
    topic: str | None = None,
) -> httpx.Response:
    url, headers = signed(platform, tenant_id, secrets, body, topic or VALID[platform][0])
    return await client.post(url, content=body, headers=headers)


async def stored(client: httpx.AsyncClient, tenant_id: str, r: Any) -> dict[str, Any]:
    """The delivery a 2xx answer names, once processed, read back through the
    operators' API."""
    await settled(client, tenant_id, r)
    key = await api_key(client, tenant_id, "orders:read")
    d = await client.get(
        f"/v1/deliveries/{r.json()['delivery_id']}", headers={"Authorization": f"Bearer {key}"}
    )
    assert d.status_code == 200, d.text
    return dict(d.json())


def nested(depth: int) -> bytes:
    return b'{"a":' * depth + b"1" + b"}" * depth


# --- 1. authentication headers parsed strictly --------------------------------------


class TestHeaders:
    @pytest.mark.parametrize("stamp", ["\u00b2".encode(), b"9" * 5000, "\uff11".encode()])
    async def test_unicode_digit_timestamp_is_401_not_500(self, client, tenant_id, stamp):
        secrets = await register(client, tenant_id)
        body = dumps(canonical_order())
        h = standard_headers(secrets["standard"], body)
        headers = [(k.encode(), v.encode()) for k, v in h.items() if k != "webhook-timestamp"]
        r = await client.post(
            f"/webhooks/standard/{tenant_id}",
            content=body,
            headers=[*headers, (b"webhook-timestamp", stamp)],
        )
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "unauthorized"

    @pytest.mark.parametrize("platform", RECEIVERS)
    async def test_non_ascii_or_huge_signature_header_is_401_not_500(
        self, client, tenant_id, platform
    ):
        secrets = await shop(client, tenant_id)
        body = dumps(VALID[platform][1])
        url, h = signed(platform, tenant_id, secrets, body, VALID[platform][0] or "x")
        for bad in ("\u00b2".encode(), b"A" * 5000, "\u00e9t\u00e9".encode()):
            # Every header the receiver authenticates with is spoiled in turn.
            for name in [k for k in h if k.lower() != "content-type"]:
                spoiled = [(k.encode(), v.encode()) for k, v in h.items() if k != name]
                r = await client.post(url, content=body, headers=[*spoiled, (name.encode(), bad)])
                assert r.status_code in (200, 202, 401), (name, r.status_code, r.text)
                if r.status_code == 401:
                    continue
                # Only headers that do not authenticate may be odd and still pass.
                assert name.lower() in {
                    "x-shopify-topic",
                    "x-shopify-webhook-id",
                    "x-shopify-shop-domain",
                    "x-wc-webhook-topic",
                    "x-wc-webhook-delivery-id",
                    "x-zendesk-webhook-id",
                    "x-zendesk-webhook-invocation-id",
                }, name


# --- 2. depth ----------------------------------------------------------------------


class TestDepth:
    @pytest.mark.parametrize("platform", RECEIVERS)
    async def test_deep_nesting_is_400_not_500(self, client, runtime, tenant_id, platform):
        secrets = await shop(client, tenant_id)
        r = await send(client, platform, tenant_id, secrets, nested(10_000))
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "too_deep"
        assert await delivery_count(runtime, tenant_id) == 0

    async def test_5000_digit_number_is_400_not_500(self, client, runtime, tenant_id):
        secrets = await shop(client, tenant_id)
        body = b'{"id": ' + b"9" * 5000 + b"}"
        r = await send(client, "shopify", tenant_id, secrets, body)
        assert r.status_code == 400 and r.json()["error"]["code"] == "malformed_json"


# --- 3. NUL bytes --------------------------------------------------------------------


class TestNul:
    async def test_nul_in_customer_name_is_stripped_and_journey_starts(
        self, client, tap: TopicTap, tenant_id
    ):
        """The order reaches the broker with clean text, which every consumer (journeys
        included, whose profile and contact rows are PostgreSQL text) can store."""
        secrets = await register(client, tenant_id)
        order = fixture("shopify_order")
        order["customer"]["first_name"] = "Jo\u0000hn"
        order["email"] = "jon\u0000@example.com"
        order["line_items"][0]["sku"] = "IPOD\u00002008"
        order["line_items"][0]["title"] = "IPod\u0000 Nano\u001b[31m"
        r = await post_shopify(client, tenant_id, secrets["shopify"], "orders/create", order)
        assert r.status_code == 200 and r.json()["status"] == "processed", r.text
        [event] = await tap.wait_for(of(tenant_id, "order.placed"))
        d = event.data
        assert d.customer.first_name == "John" and d.customer.email == "jon@example.com"
        assert d.line_items[0].sku == "IPOD2008"
        assert d.line_items[0].title == "IPod Nano[31m"
        assert "\u0000" not in json.dumps(d.model_dump(mode="json"))


# --- 5. ordinary odd values ----------------------------------------------------------


def spoil_shopify(change: str) -> dict[str, Any]:
    o = fixture("shopify_order")
    if change == "quantity_negative":
        o["line_items"][0]["quantity"] = -1
    elif change.startswith("total_"):
        o["total_price"] = {"1e30": "1e30", "1e309": "1e309", "2^70": 2**70}[change[6:]]
    elif change == "customer_string":
        o["customer"] = "x"
    elif change == "line_items_string":
        o["line_items"] = "abc"
    elif change == "line_items_numbers":
        o["line_items"] = [1, 2]
    elif change == "shipping_address_list":
        o["shipping_address"] = [1]
    elif change == "created_at_9e99":
        o["processed_at"] = o["created_at"] = 9e99
    elif change == "created_at_year_9999":
        o["processed_at"] = o["created_at"] = "9999-12-31T23:00:00-05:00"
    elif change == "customer_id_too_long":
        o["customer"]["id"] = "9" * 300
    return o


class TestOddValues:
    @pytest.mark.parametrize(
        "change",
        [
            "quantity_negative",
            "total_1e30",
            "total_1e309",
            "total_2^70",
            "customer_string",
            "line_items_string",
            "line_items_numbers",
            "shipping_address_list",
            "created_at_9e99",
            "created_at_year_9999",
            "customer_id_too_long",
        ],
    )
    async def test_odd_shopify_values_are_quarantined_not_500(
        self, client, runtime, tenant_id, change
    ):
        secrets = await register(client, tenant_id)
        order = spoil_shopify(change)
        r = await post_shopify(client, tenant_id, secrets["shopify"], "orders/create", order)
        # Answered 200 once stored; quarantined by the worker that normalizes it.
        assert r.status_code == 200, r.text
        assert r.json() | {"delivery_id": None} == {
            "delivery_id": None,
            "status": "quarantined",
            "events": [],
        }
        d = await stored(client, tenant_id, r)
        assert d["status"] == "quarantined" and d["last_error"]
        assert json.loads(d["body"]) == order  # the raw delivery, kept for replay
        assert await outbox_count(runtime, tenant_id) == 0

    async def test_quantity_zero_line_is_dropped_and_the_order_kept(self, client, tap, tenant_id):
        secrets = await register(client, tenant_id)
        order = fixture("shopify_order")
        order["line_items"][0]["quantity"] = 0
        r = await post_shopify(client, tenant_id, secrets["shopify"], "orders/create", order)
        assert r.status_code == 200 and r.json()["status"] == "processed"
        [event] = await tap.wait_for(of(tenant_id, "order.placed"))
        assert len(event.data.line_items) == len(order["line_items"]) - 1

    async def test_over_long_text_is_cut_and_over_long_contact_data_dropped(
        self, client, tap, tenant_id
    ):
        secrets = await register(client, tenant_id)
        order = fixture("shopify_order")
        order["customer"]["first_name"] = "A" * 5000
        order["email"] = order["contact_email"] = "a" * 400 + "@example.com"
        order["customer"]["email"] = None
        order["customer_locale"] = "x" * 50
        order["phone"] = "+1" + "5" * 40
        order["line_items"][0]["sku"] = "S" * 5000
        order["customer"]["id"] = 10**60  # 61 digits: within the catalog's 100
        r = await post_shopify(client, tenant_id, secrets["shopify"], "orders/create", order)
        assert r.status_code == 200 and r.json()["status"] == "processed", r.text
        [event] = await tap.wait_for(of(tenant_id, "order.placed"))
        cust = event.data.customer
        assert cust.first_name == "A" * 100 and cust.email is None and cust.locale is None
        assert cust.phone is None
        assert event.data.line_items[0].sku == "S" * 200
        assert event.subject == str(10**60)

    async def test_discount_codes_as_bare_strings_are_taken(self, client, tap, tenant_id):
        secrets = await register(client, tenant_id)
        order = fixture("shopify_order") | {"discount_codes": ["X"]}
        r = await post_shopify(client, tenant_id, secrets["shopify"], "orders/create", order)
        assert r.status_code == 200, r.text
        [event] = await tap.wait_for(of(tenant_id, "order.placed"))
        assert event.data.discount_codes == ["X"]

    @pytest.mark.parametrize(
        "change",
        [{"billing": "x"}, {"meta_data": [1]}, {"status": "refunded", "refunds": [1]}],
    )
    async def test_odd_woocommerce_values_are_quarantined_not_500(
        self, client, runtime, tenant_id, change
    ):
        secrets = await register(client, tenant_id)
        order = fixture("woocommerce_order") | change
        r = await post_woo(client, tenant_id, secrets["woocommerce"], "order.updated", order)
        assert r.status_code == 200 and r.json()["status"] == "quarantined", r.text
        assert await delivery_count(runtime, tenant_id) == 1

    async def test_woocommerce_form_body_is_not_500(self, client, runtime, tenant_id):
        secrets = await register(client, tenant_id)
        body = b"id=727&status=processing"
        r = await client.post(
            f"/webhooks/woocommerce/{tenant_id}",
            content=body,
            headers={
                "Content-Type": "application/x-www-form-urlencoded",
                "X-WC-Webhook-Topic": "order.created",
                "X-WC-Webhook-Signature": b64hmac(secrets["woocommerce"], body),
            },
        )
        assert r.status_code == 400 and r.json()["error"]["code"] == "malformed_json"
        ping = await client.post(
            f"/webhooks/woocommerce/{tenant_id}",
            content=b"webhook_id=12",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert ping.status_code == 200 and ping.json() == {"status": "ping"}
        assert await delivery_count(runtime, tenant_id) == 0

    @pytest.mark.parametrize("amount", [2**63, 2**63 + 1, 2**70, -(2**64)])
    async def test_rest_amount_beyond_bigint_is_422_not_500(
        self, client, runtime, tenant_id, amount
    ):
        await register(client, tenant_id)
        key = await api_key(client, tenant_id, "orders:write")
        r = await client.post(
            "/v1/orders",
            json=canonical_order(total={"amount": amount, "currency": "USD"}),
            headers={"Authorization": f"Bearer {key}", "Idempotency-Key": str(uuid.uuid4())},
        )
        assert r.status_code == 422, r.text
        # Named by the kit's JSON-object bound (``data``) or the catalog's Money bound.
        assert r.json()["error"]["field"] in ("data", "data.total.amount")
        assert await delivery_count(runtime, tenant_id) == 0

    async def test_rest_control_characters_are_422(self, client, runtime, tenant_id):
        await register(client, tenant_id)
        key = await api_key(client, tenant_id, "orders:write")
        r = await client.post(
            "/v1/orders",
            json=canonical_order(customer={"first_name": "Ada\u0000"}),
            headers={"Authorization": f"Bearer {key}", "Idempotency-Key": str(uuid.uuid4())},
        )
        assert r.status_code == 422, r.text
        assert r.json()["error"]["field"] in ("data", "data.customer.first_name")

    @pytest.mark.parametrize("placed_at", ["9999-12-31T23:00:00Z", "1900-01-01T00:00:00Z"])
    async def test_rest_order_in_year_9999_is_422_not_a_dead_letter(
        self, client, runtime, tenant_id, placed_at
    ):
        # Accepted, it reached journeys, whose check-in timer (placed + days) overflowed
        # datetime: the event was dead-lettered and the customer had no journey.
        await register(client, tenant_id)
        key = await api_key(client, tenant_id, "orders:write")
        r = await client.post(
            "/v1/orders",
            json=canonical_order(placed_at=placed_at),
            headers={"Authorization": f"Bearer {key}", "Idempotency-Key": str(uuid.uuid4())},
        )
        assert r.status_code == 422, r.text
        assert r.json()["error"]["field"] == "data.placed_at"
        assert await delivery_count(runtime, tenant_id) == 0


# --- 6. wrong values accepted --------------------------------------------------------


class TestNegativeAmounts:
    async def test_negative_total_is_quarantined(self, client, runtime, tenant_id):
        secrets = await register(client, tenant_id)
        order = fixture("shopify_order") | {"total_price": "-100.00"}
        r = await post_shopify(client, tenant_id, secrets["shopify"], "orders/create", order)
        assert r.status_code == 200 and r.json()["status"] == "quarantined"
        d = await stored(client, tenant_id, r)
        assert d["last_error"] == "total_price is negative (field total_price)"
        assert await outbox_count(runtime, tenant_id) == 0

    async def test_negative_refund_is_quarantined(self, client, runtime, tenant_id):
        secrets = await register(client, tenant_id)
        s = secrets["shopify"]
        await post_shopify(client, tenant_id, s, "orders/create", fixture("shopify_order"))
        refund = fixture("shopify_refund")
        refund["transactions"][0]["amount"] = "-50.00"
        r = await post_shopify(client, tenant_id, s, "refunds/create", refund)
        assert r.status_code == 200 and r.json()["status"] == "quarantined"
        d = await stored(client, tenant_id, r)
        assert "negative" in d["last_error"]
        assert await outbox_count(runtime, tenant_id) == 1  # the order.placed only


# --- quarantine: listed, counted, replayable -----------------------------------------


class TestQuarantine:
    async def test_quarantined_delivery_is_listed_counted_and_replayable(
        self, client, runtime, tap: TopicTap, tenant_id
    ):
        secrets = await register(client, tenant_id)
        key = await api_key(client, tenant_id, "orders:read", "orders:write")
        auth = {"Authorization": f"Bearer {key}"}

        def quarantined_total() -> float:
            return intake.QUARANTINED_TOTAL.labels("shopify")._value.get()

        before = quarantined_total()
        bad = fixture("shopify_order") | {"total_price": "-1.00"}
        r = await post_shopify(client, tenant_id, secrets["shopify"], "orders/create", bad)
        assert r.status_code == 200 and r.json()["status"] == "quarantined"
        listed = await client.get("/v1/deliveries?status=quarantined", headers=auth)
        assert [d["id"] for d in listed.json()["items"]] == [r.json()["delivery_id"]]
        metrics = (await client.get("/metrics")).text
        assert 'afterglow_ingest_quarantined_total{platform="shopify"}' in metrics
        assert quarantined_total() == before + 1
        # Replaying before a fix changes nothing and says why.
        again = await client.post(f"/v1/deliveries/{r.json()['delivery_id']}/replay", headers=auth)
        assert again.status_code == 422 and again.json()["error"]["field"] == "total_price"

        # A delivery an earlier normalizer quarantined, whose payload today's takes.
        good = fixture("shopify_order") | {"id": 5550001}
        async with runtime.sessionmaker.begin() as session:
            out = await intake.quarantine(
                session,
                tenant_id=tenant_id,
                platform="shopify",
                topic="orders/create",
                dedupe_key="wh-quarantined-earlier",
                headers={},
                body=dumps(good),
                reason="a bug since fixed",
                received_at=runtime.clock.now(),
            )
        replay = await client.post(f"/v1/deliveries/{out.delivery_id}/replay", headers=auth)
        assert replay.status_code == 200 and replay.json()["status"] == "processed"
        [event] = await tap.wait_for(
            lambda e: of(tenant_id, "order.placed")(e) and e.data.order_id == "shopify:5550001"
        )
        d = await stored(client, tenant_id, replay)
        assert d["status"] == "processed" and d["last_error"] is None
        assert d["event_ids"] == [event.id]

    async def test_replayed_quarantine_does_not_place_an_order_twice(
        self, client, runtime, tenant_id
    ):
        """A quarantined delivery never emitted: replayed, its facts go through the fact
        table like a first delivery's (the order was placed meanwhile by another)."""
        secrets = await register(client, tenant_id)
        key = await api_key(client, tenant_id, "orders:write")
        order = fixture("shopify_order")
        await post_shopify(client, tenant_id, secrets["shopify"], "orders/create", order)
        async with runtime.sessionmaker.begin() as session:
            out = await intake.quarantine(
                session,
                tenant_id=tenant_id,
                platform="shopify",
                topic="orders/paid",
                dedupe_key="wh-paid",
                headers={},
                body=dumps(order),
                reason="a bug since fixed",
                received_at=runtime.clock.now(),
            )
        r = await client.post(
            f"/v1/deliveries/{out.delivery_id}/replay",
            headers={"Authorization": f"Bearer {key}"},
        )
        assert r.status_code == 200 and r.json()["events"] == []
        assert await outbox_count(runtime, tenant_id) == 1


# --- 7. privacy ----------------------------------------------------------------------


class TestPrivacy:
    async def test_order_without_customer_is_anonymous_with_unknown_consent(
        self, client, tap: TopicTap, tenant_id
    ):
        """A POS order with no customer, email or phone: subject ``order:<id>``, which
        journeys and loyalty skip (their tests: no journey, no points account)."""
        secrets = await register(client, tenant_id)
        order = fixture("shopify_order") | {
            "customer": None,
            "email": None,
            "contact_email": None,
            "phone": None,
            "shipping_address": None,
            "source_name": "pos",
            "buyer_accepts_marketing": False,
        }
        r = await post_shopify(client, tenant_id, secrets["shopify"], "orders/create", order)
        assert r.status_code == 200, r.text
        [event] = await tap.wait_for(of(tenant_id, "order.placed"))
        assert event.subject == f"order:shopify:{order['id']}"
        assert event.data.customer.accepts_marketing is None

    async def test_woocommerce_consent_is_unknown(self, client, tap: TopicTap, tenant_id):
        secrets = await register(client, tenant_id)
        r = await post_woo(
            client, tenant_id, secrets["woocommerce"], "order.created", fixture("woocommerce_order")
        )
        assert r.status_code == 200
        [event] = await tap.wait_for(of(tenant_id, "order.placed"))
        assert event.data.customer.accepts_marketing is None

    async def test_redact_blanks_stored_payloads(self, client, runtime, tenant_id):
        secrets = await register(client, tenant_id)
        s = secrets["shopify"]
        order = fixture("shopify_order")
        order["customer"] |= {"id": 191167, "email": "john@example.com"}
        order["email"] = order["contact_email"] = "john@example.com"
        await post_shopify(client, tenant_id, s, "orders/create", order)
        # A quarantined delivery of the same customer, by id only: found by its email.
        odd = order | {"id": 77, "total_price": "-1"}
        q = await post_shopify(client, tenant_id, s, "orders/create", odd)
        assert q.json()["status"] == "quarantined"
        # A delivery that spoke about them without their email: found by its subject.
        refund = fixture("shopify_refund") | {"order_id": order["id"]}
        await post_shopify(client, tenant_id, s, "refunds/create", refund)
        redact = fixture("shopify_customers_redact")
        r = await post_shopify(client, tenant_id, s, "customers/redact", redact)
        assert r.status_code == 200, r.text

        async with runtime.sessionmaker() as session:
            rows = (
                (await session.execute(select(Delivery).where(Delivery.tenant_id == tenant_id)))
                .scalars()
                .all()
            )
        by_topic = {(d.topic, d.status): d for d in rows}
        for blanked in (
            by_topic[("orders/create", "processed")],
            by_topic[("orders/create", "quarantined")],
            by_topic[("refunds/create", "processed")],
        ):
            assert blanked.body == b"{}"
            assert blanked.headers == {"x-afterglow-redacted": "customers/redact"}
        kept = json.loads(by_topic[("customers/redact", "processed")].body)
        assert kept["customer"] == {"id": 191167}
        assert kept["orders_to_redact"] == redact["orders_to_redact"]

        key = await api_key(client, tenant_id, "customers:export")
        export = await client.get(
            "/v1/customers/191167/export", headers={"Authorization": f"Bearer {key}"}
        )
        assert export.status_code == 200, export.text
        assert "john@example.com" not in export.text
        assert "555-625-1199" not in export.text


class TestHtmlEntities:
    async def test_woocommerce_html_entities_unescaped(self, client, tap: TopicTap, tenant_id):
        secrets = await register(client, tenant_id)
        order = fixture("woocommerce_order")
        order["line_items"][0]["name"] = "Ship Your Idea &ndash; Color: Black"
        order["line_items"][1]["name"] = "Fish &amp; Chips"
        order["billing"]["first_name"] = "Zo&euml;"
        r = await post_woo(client, tenant_id, secrets["woocommerce"], "order.created", order)
        assert r.status_code == 200, r.text
        [event] = await tap.wait_for(of(tenant_id, "order.placed"))
        titles = [li.title for li in event.data.line_items]
        assert titles == ["Ship Your Idea \u2013 Color: Black", "Fish & Chips"]
        assert event.data.customer.first_name == "Zo\u00eb"


# --- properties: every receiver, random hostile bodies -------------------------------

hostile_value = st.one_of(
    st.text(max_size=20),
    st.text(alphabet=st.sampled_from("\u0000\u001b\u0085\u00b2&;#a"), max_size=10),
    st.sampled_from(["-100.00", "1e309", "x" * 3000, "&amp;", "\u00b2", 2**70, 9e99, -1, 0]),
    st.integers(),
    st.floats(allow_nan=False, allow_infinity=False),
    st.booleans(),
    st.none(),
    st.lists(st.integers(), max_size=3),
    st.dictionaries(st.text(max_size=5), st.integers(), max_size=2),
)


def spoiled(payload: Any, data: st.DataObject) -> Any:
    """The payload with a few values, at any depth, replaced by hostile ones."""
    if isinstance(payload, dict) and payload:
        keys = data.draw(st.lists(st.sampled_from(sorted(payload)), max_size=3, unique=True))
        out = dict(payload)
        for k in keys:
            if data.draw(st.booleans()):
                out[k] = data.draw(hostile_value)
            else:
                out[k] = spoiled(out[k], data)
        return out
    if isinstance(payload, list) and payload:
        return [spoiled(v, data) for v in payload]
    return data.draw(hostile_value) if data.draw(st.booleans()) else payload


raw_body = st.one_of(
    st.builds(nested, st.integers(60, 3000)),
    st.just(b'{"n": ' + b"9" * 5000 + b"}"),
    st.just(b"[1, 2]"),
    st.just(b'"x"'),
    st.binary(max_size=40),
    st.just(b'{"a": "\\u0000"}'),
)


class TestProperties:
    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(data=st.data())
    async def test_signed_hostile_bodies_never_5xx_and_never_lost(self, client, tenant_id, data):
        secrets = getattr(self, "_secrets", {}).get(tenant_id)
        if secrets is None:
            secrets = await shop(client, tenant_id)
            self._secrets = {tenant_id: secrets}
        platform = data.draw(st.sampled_from(RECEIVERS))
        topic, valid = VALID[platform]
        if data.draw(st.integers(0, 4)) == 0:
            body = data.draw(raw_body)
        else:
            body = json.dumps(spoiled(valid, data)).encode()
        r = await send(client, platform, tenant_id, secrets, body, topic)
        assert r.status_code < 500, (platform, body[:300], r.text)
        assert r.status_code in (200, 202, 400), (platform, body[:300], r.text)
        if r.status_code in (200, 202):
            d = await stored(client, tenant_id, r)
            assert d["status"] in STORED, d
            if d["status"] == "quarantined":
                assert d["last_error"]

    @settings(max_examples=60, deadline=None, suppress_health_check=list(HealthCheck))
    @given(
        platform=st.sampled_from(RECEIVERS),
        header=st.sampled_from(["signature", "timestamp"]),
        value=st.one_of(
            st.text(min_size=1, max_size=30).filter(lambda s: s.strip() and not s.isascii()),
            st.sampled_from(["\u00b2", "9" * 5000, "\uff11\uff12", "1" * 13]),
        ),
    )
    async def test_hostile_auth_headers_are_401(self, client, tenant_id, platform, header, value):
        secrets = getattr(self, "_secrets", {}).get(tenant_id)
        if secrets is None:
            secrets = await shop(client, tenant_id)
            self._secrets = {tenant_id: secrets}
        body = dumps(VALID[platform][1])
        url, h = signed(platform, tenant_id, secrets, body, VALID[platform][0] or "x")
        names = {
            "shopify": ("X-Shopify-Hmac-Sha256", "X-Shopify-Hmac-Sha256"),
            "woocommerce": ("X-WC-Webhook-Signature", "X-WC-Webhook-Signature"),
            "standard": ("webhook-signature", "webhook-timestamp"),
            "zendesk": (
                "x-zendesk-webhook-signature",
                "x-zendesk-webhook-signature-timestamp",
            ),
            "aftership": ("aftership-hmac-sha256", "aftership-hmac-sha256"),
            "bigcommerce": ("X-Afterglow-Webhook-Token", "X-Afterglow-Webhook-Token"),
        }[platform]
        name = names[0] if header == "signature" else names[1]
        headers = [(k.encode(), v.encode()) for k, v in h.items() if k != name]
        headers.append((name.encode(), value.encode("utf-8")))
        r = await client.post(url, content=body, headers=headers)
        assert r.status_code == 401, (platform, name, value[:20], r.text)
