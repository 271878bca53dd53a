"""Shopify webhooks on the real stack: signature, storage, de-duplication, events on
the broker."""

from __future__ import annotations

import json

import pytest

from afterglow.events.testing import TopicTap

from ..ingest_support import (
    api_key,
    delivery_count,
    fixture,
    outbox_count,
    post_shopify,
    register,
)


def of(tenant_id: str, type_suffix: str):  # type: ignore[no-untyped-def]
    return lambda e: e.tenantid == tenant_id and e.type == f"afterglow.{type_suffix}.v1"


class TestShopifyOrders:
    async def test_orders_create_becomes_order_placed_on_the_broker(
        self, client, tap: TopicTap, tenant_id
    ):
        secrets = await register(client, tenant_id)
        r = await post_shopify(
            client, tenant_id, secrets["shopify"], "orders/create", fixture("shopify_order")
        )
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "processed"
        [event] = await tap.wait_for(of(tenant_id, "order.placed"))
        assert event.id == r.json()["events"][0]
        assert event.subject == "115310627314723954"
        d = event.data
        assert d.order_id == "shopify:820982911946154508"
        assert d.total.amount == 40300 and d.total.currency == "USD"
        assert d.subtotal.amount == 38800
        assert [li.unit_price.amount for li in d.line_items] == [19900, 19900]
        assert d.line_items[0].sku == "IPOD2008PINK" and d.line_items[0].product_id == "632910392"
        assert d.customer.email == "jon@example.com"
        assert d.customer.email_hash is not None and len(d.customer.email_hash) == 64
        assert d.customer.phone == "+16135550123" and d.customer.phone_hash
        assert d.customer.platform_customer_id == "115310627314723954"
        assert d.customer_orders_count == 3
        assert d.discount_codes == ["SPRING10"]
        assert d.referral_code == "ADA7K2"
        assert d.shipping_country == "US" and d.shipping_address_hash
        assert d.order_number == "#9999"

    @pytest.mark.parametrize(
        ("topic", "first_type"),
        [
            ("orders/paid", "order.placed"),
            ("orders/fulfilled", "order.fulfilled"),
            ("orders/cancelled", "order.cancelled"),
        ],
    )
    async def test_order_topics_map_to_events(self, client, tap, tenant_id, topic, first_type):
        secrets = await register(client, tenant_id)
        order = fixture("shopify_order")
        if topic == "orders/fulfilled":
            order["fulfillment_status"] = "fulfilled"
            order["fulfillments"] = [fixture("shopify_fulfillment") | {"shipment_status": None}]
        if topic == "orders/cancelled":
            order["cancelled_at"] = "2026-03-03T10:00:00-05:00"
            order["cancel_reason"] = "customer"
        r = await post_shopify(client, tenant_id, secrets["shopify"], topic, order)
        assert r.status_code == 200, r.text
        [event] = await tap.wait_for(of(tenant_id, first_type))
        assert event.data.order_id == "shopify:820982911946154508"
        if topic == "orders/cancelled":
            assert event.data.reason == "customer"
        if topic == "orders/fulfilled":
            assert event.data.tracking_number == "1Z2345" and event.data.carrier == "UPS"

    async def test_orders_paid_after_create_does_not_place_twice(self, client, runtime, tenant_id):
        secrets = await register(client, tenant_id)
        order = fixture("shopify_order")
        await post_shopify(client, tenant_id, secrets["shopify"], "orders/create", order)
        r = await post_shopify(client, tenant_id, secrets["shopify"], "orders/paid", order)
        assert r.status_code == 200 and r.json()["events"] == []
        assert await outbox_count(runtime, tenant_id) == 1

    async def test_refund_fulfilment_and_delivery_follow_the_order(self, client, tap, tenant_id):
        secrets = await register(client, tenant_id)
        s = secrets["shopify"]
        await post_shopify(client, tenant_id, s, "orders/create", fixture("shopify_order"))
        fulfilment = fixture("shopify_fulfillment") | {"shipment_status": "in_transit"}
        await post_shopify(client, tenant_id, s, "fulfillments/create", fulfilment)
        await post_shopify(
            client, tenant_id, s, "fulfillments/update", fixture("shopify_fulfillment")
        )
        await post_shopify(client, tenant_id, s, "refunds/create", fixture("shopify_refund"))
        [fulfilled] = await tap.wait_for(of(tenant_id, "order.fulfilled"))
        [delivered] = await tap.wait_for(of(tenant_id, "order.delivered"))
        [refunded] = await tap.wait_for(of(tenant_id, "order.refunded"))
        # These payloads carry no customer: the subject comes from the stored order.
        for e in (fulfilled, delivered, refunded):
            assert e.subject == "115310627314723954"
        assert delivered.data.reported_by == "shopify"
        assert refunded.data.amount.amount == 19900
        assert refunded.data.order_total.amount == 40300
        assert refunded.data.full is False
        assert refunded.data.refund_id == "890088186047892319"

    async def test_gdpr_topics(self, client, tap, runtime, tenant_id):
        secrets = await register(client, tenant_id)
        s = secrets["shopify"]
        r1 = await post_shopify(
            client, tenant_id, s, "customers/redact", fixture("shopify_customers_redact")
        )
        r2 = await post_shopify(client, tenant_id, s, "shop/redact", fixture("shopify_shop_redact"))
        r3 = await post_shopify(
            client,
            tenant_id,
            s,
            "customers/data_request",
            fixture("shopify_customers_data_request"),
        )
        assert [r.status_code for r in (r1, r2, r3)] == [200, 200, 200]
        erasures = await tap.wait_for(of(tenant_id, "customer.erasure_requested"), count=2)
        by_scope = {e.data.scope: e for e in erasures}
        assert by_scope["customer"].subject == "191167"
        assert by_scope["tenant"].subject == "*"
        # data_request has no catalog event: stored for the operator, nothing emitted.
        assert r3.json()["events"] == []
        assert await delivery_count(runtime, tenant_id) == 3


class TestShopifyContract:
    async def test_tampered_body_is_refused_and_nothing_stored(self, client, runtime, tenant_id):
        secrets = await register(client, tenant_id)
        raw = json.dumps(fixture("shopify_order")).encode()
        from ..ingest_support import b64hmac

        sig = b64hmac(secrets["shopify"], raw)
        tampered = raw.replace(b"403.00", b"4.00")
        r = await post_shopify(
            client, tenant_id, "", "orders/create", None, body=tampered, signature=sig
        )
        assert r.status_code == 401
        assert await delivery_count(runtime, tenant_id) == 0
        assert await outbox_count(runtime, tenant_id) == 0

    async def test_every_auth_failure_looks_the_same(self, client, tenant_id):
        secrets = await register(client, tenant_id)
        order = fixture("shopify_order")
        wrong = await post_shopify(client, tenant_id, "not-the-secret", "orders/create", order)
        unknown = await post_shopify(client, "t-nobody", secrets["shopify"], "orders/create", order)
        assert wrong.status_code == unknown.status_code == 401
        assert wrong.json() == unknown.json()
        missing = await client.post(
            "/webhooks/shopify",
            content=b"{}",
            headers={
                "X-Shopify-Shop-Domain": f"{tenant_id}.myshopify.com",
                "X-Shopify-Topic": "orders/create",
            },
        )
        assert missing.status_code == 401 and missing.json() == wrong.json()

    async def test_replayed_delivery_id_answers_200_without_emitting(
        self, client, runtime, tenant_id
    ):
        secrets = await register(client, tenant_id)
        order = fixture("shopify_order")
        first = await post_shopify(
            client, tenant_id, secrets["shopify"], "orders/create", order, webhook_id="wh-1"
        )
        again = await post_shopify(
            client, tenant_id, secrets["shopify"], "orders/create", order, webhook_id="wh-1"
        )
        assert first.status_code == again.status_code == 200
        assert again.json()["status"] == "duplicate"
        assert again.json()["delivery_id"] == first.json()["delivery_id"]
        assert await outbox_count(runtime, tenant_id) == 1
        assert await delivery_count(runtime, tenant_id) == 1

    async def test_unknown_topic_is_archived(self, client, runtime, tenant_id):
        secrets = await register(client, tenant_id)
        r = await post_shopify(client, tenant_id, secrets["shopify"], "products/update", {"id": 1})
        # Answered 200 once stored (was 202 archived, when normalized in the request).
        assert r.status_code == 200 and r.json()["status"] == "archived"
        assert await delivery_count(runtime, tenant_id) == 1
        assert await outbox_count(runtime, tenant_id) == 0

    async def test_oversize_body_is_413(self, client, runtime, tenant_id):
        secrets = await register(client, tenant_id)
        big = {"id": 1, "pad": "x" * (1024 * 1024)}
        r = await post_shopify(client, tenant_id, secrets["shopify"], "orders/create", big)
        assert r.status_code == 413
        assert r.json()["error"]["code"] == "payload_too_large"
        assert await delivery_count(runtime, tenant_id) == 0

    async def test_malformed_json_is_400(self, client, runtime, tenant_id):
        secrets = await register(client, tenant_id)
        r = await post_shopify(
            client, tenant_id, secrets["shopify"], "orders/create", None, body=b'{"id": 1,'
        )
        assert r.status_code == 400
        assert r.json()["error"]["code"] == "malformed_json"
        assert await delivery_count(runtime, tenant_id) == 0

    async def test_missing_required_field_is_quarantined_naming_it(
        self, client, runtime, tenant_id
    ):
        # Was 422: a signed delivery that fails is retried for hours, then the hook is
        # disabled. It is stored, answered 202, and says why.
        secrets = await register(client, tenant_id)
        order = fixture("shopify_order")
        del order["total_price"]
        r = await post_shopify(client, tenant_id, secrets["shopify"], "orders/create", order)
        # Stored and answered 200; the worker that normalizes it quarantines it.
        assert r.status_code == 200 and r.json()["status"] == "quarantined"
        key = await api_key(client, tenant_id, "orders:read")
        d = await client.get(
            f"/v1/deliveries/{r.json()['delivery_id']}", headers={"Authorization": f"Bearer {key}"}
        )
        assert d.json()["last_error"] == "total_price is required (field total_price)"
        assert await delivery_count(runtime, tenant_id) == 1
        assert await outbox_count(runtime, tenant_id) == 0


class TestShopifyFastPath:
    """The Shopify route skips the router (fastpath.py): the app's middleware and error
    rendering must still apply to it as to every other route."""

    async def test_answers_carry_nosniff_and_are_measured_under_their_route(
        self, client, tenant_id
    ):
        secrets = await register(client, tenant_id)
        ok = await post_shopify(
            client, tenant_id, secrets["shopify"], "orders/create", fixture("shopify_order"),
            settle=False,
        )  # fmt: skip
        refused = await post_shopify(
            client, tenant_id, "not-the-secret", "orders/create", fixture("shopify_order"),
            settle=False,
        )  # fmt: skip
        assert ok.status_code == 200 and refused.status_code == 401
        assert refused.json()["error"]["code"] == "unauthorized"
        for r in (ok, refused):
            assert r.headers["x-content-type-options"] == "nosniff"
        metrics = (await client.get("/metrics")).text
        for status in ("200", "401"):
            assert any(
                line.startswith("afterglow_http_request_duration_seconds_count{")
                and 'route="/webhooks/shopify"' in line
                and f'status="{status}"' in line
                for line in metrics.splitlines()
            ), status

    async def test_other_methods_still_reach_the_router(self, client):
        r = await client.get("/webhooks/shopify")
        assert r.status_code == 405
        assert r.json()["error"]["code"] == "method_not_allowed"


class TestConcurrentRetries:
    async def test_racing_copies_of_one_delivery_emit_once(self, client, runtime, tenant_id):
        import asyncio

        secrets = await register(client, tenant_id)
        order = fixture("shopify_order")
        answers = await asyncio.gather(
            *(
                post_shopify(
                    client, tenant_id, secrets["shopify"], "orders/create", order, webhook_id="race"
                )
                for _ in range(6)
            )
        )
        assert {r.status_code for r in answers} == {200}
        assert sorted(r.json()["status"] for r in answers).count("processed") == 1
        assert await outbox_count(runtime, tenant_id) == 1


class TestShopRedact:
    async def test_shop_redact_blanks_stored_payloads(self, client, runtime, tenant_id):
        from sqlalchemy import select

        from afterglow.ingest.models import Delivery

        secrets = await register(client, tenant_id)
        s = secrets["shopify"]
        await post_shopify(client, tenant_id, s, "orders/create", fixture("shopify_order"))
        redact = await post_shopify(
            client, tenant_id, s, "shop/redact", fixture("shopify_shop_redact")
        )
        assert redact.status_code == 200
        async with runtime.sessionmaker() as session:
            rows = (
                (await session.execute(select(Delivery).where(Delivery.tenant_id == tenant_id)))
                .scalars()
                .all()
            )
        bodies = {r.topic: r.body for r in rows}
        assert bodies["orders/create"] == b"{}"
        assert b"shop_id" in bodies["shop/redact"]

    async def test_customers_redact_blanks_that_customers_payloads(
        self, client, runtime, tenant_id
    ):
        from sqlalchemy import select

        from afterglow.ingest.models import Delivery

        secrets = await register(client, tenant_id)
        s = secrets["shopify"]
        mine = fixture("shopify_order")  # email Jon@Example.com
        other = fixture("shopify_order") | {
            "id": 42,
            "email": "someone@else.org",
            "contact_email": None,
        }
        other["customer"] = other["customer"] | {"email": "someone@else.org"}
        await post_shopify(client, tenant_id, s, "orders/create", mine)
        await post_shopify(client, tenant_id, s, "orders/create", other)
        redact = fixture("shopify_customers_redact")
        redact["customer"]["email"] = "JON@example.com"
        assert (
            await post_shopify(client, tenant_id, s, "customers/redact", redact)
        ).status_code == 200
        async with runtime.sessionmaker() as session:
            rows = (
                (
                    await session.execute(
                        select(Delivery).where(
                            Delivery.tenant_id == tenant_id, Delivery.topic == "orders/create"
                        )
                    )
                )
                .scalars()
                .all()
            )
        blanked = sorted(r.body == b"{}" for r in rows)
        assert blanked == [False, True]
