"""WooCommerce, Standard Webhooks, Zendesk and AfterShip receivers; secret rotation."""

from __future__ import annotations

import base64
import time
import uuid

from ..ingest_support import (
    ADMIN,
    api_key,
    b64hmac,
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


def of(tenant_id: str, type_suffix: str):  # type: ignore[no-untyped-def]
    return lambda e: e.tenantid == tenant_id and e.type == f"afterglow.{type_suffix}.v1"


class TestWooCommerce:
    async def test_order_created_becomes_order_placed(self, client, tap, tenant_id):
        secrets = await register(client, tenant_id)
        r = await post_woo(
            client, tenant_id, secrets["woocommerce"], "order.created", fixture("woocommerce_order")
        )
        assert r.status_code == 200, r.text
        [event] = await tap.wait_for(of(tenant_id, "order.placed"))
        d = event.data
        assert event.subject == "26"
        assert d.order_id == "woocommerce:727" and d.platform == "woocommerce"
        assert d.total.amount == 2935 and d.total.currency == "EUR"
        assert [li.unit_price.amount for li in d.line_items] == [300, 1200]
        assert d.discount_codes == ["WELCOME5"] and d.referral_code == "WOO5REF"
        assert d.customer.email == "john.doe@example.com" and d.shipping_country == "US"

    async def test_retry_with_fresh_delivery_id_is_a_duplicate(self, client, runtime, tenant_id):
        secrets = await register(client, tenant_id)
        order = fixture("woocommerce_order")
        first = await post_woo(client, tenant_id, secrets["woocommerce"], "order.created", order)
        retry = await post_woo(client, tenant_id, secrets["woocommerce"], "order.created", order)
        assert first.status_code == retry.status_code == 200
        assert retry.json()["status"] == "duplicate"
        assert await outbox_count(runtime, tenant_id) == 1

    async def test_status_transitions(self, client, tap, tenant_id):
        secrets = await register(client, tenant_id)
        s = secrets["woocommerce"]
        order = fixture("woocommerce_order")
        await post_woo(client, tenant_id, s, "order.created", order)
        completed = order | {
            "status": "completed",
            "date_modified_gmt": "2026-03-04T10:00:00",
            "date_completed_gmt": "2026-03-04T10:00:00",
        }
        await post_woo(client, tenant_id, s, "order.updated", completed)
        refunded = order | {"status": "refunded", "date_modified_gmt": "2026-03-06T10:00:00"}
        await post_woo(client, tenant_id, s, "order.updated", refunded)
        [fulfilled] = await tap.wait_for(of(tenant_id, "order.fulfilled"))
        [refund] = await tap.wait_for(of(tenant_id, "order.refunded"))
        assert fulfilled.data.order_id == "woocommerce:727"
        assert refund.data.full is True and refund.data.amount.amount == 2935
        events = [e for e in await tap.events(settle=0.3) if e.tenantid == tenant_id]
        assert sum(e.type == "afterglow.order.placed.v1" for e in events) == 1

    async def test_cancelled(self, client, tap, tenant_id):
        secrets = await register(client, tenant_id)
        order = fixture("woocommerce_order") | {"status": "cancelled"}
        await post_woo(client, tenant_id, secrets["woocommerce"], "order.updated", order)
        [event] = await tap.wait_for(of(tenant_id, "order.cancelled"))
        assert event.data.order_id == "woocommerce:727"

    async def test_bad_signature(self, client, tenant_id):
        await register(client, tenant_id)
        r = await post_woo(
            client, tenant_id, "wrong", "order.created", fixture("woocommerce_order")
        )
        assert r.status_code == 401


def canonical_delivered(order_id: str = "acme:1001") -> dict:
    return {
        "type": "order.delivered",
        "customer_id": "cus_42",
        "data": {
            "order_id": order_id,
            "delivered_at": "2026-03-05T10:00:00Z",
            "reported_by": "standard_webhooks",
        },
    }


class TestStandardWebhooks:
    async def test_canonical_order_event(self, client, tap, tenant_id):
        secrets = await register(client, tenant_id)
        body = dumps(canonical_delivered())
        r = await client.post(
            f"/webhooks/standard/{tenant_id}",
            content=body,
            headers=standard_headers(secrets["standard"], body),
        )
        assert r.status_code == 200, r.text
        [event] = await tap.wait_for(of(tenant_id, "order.delivered"))
        assert event.subject == "cus_42" and event.data.order_id == "acme:1001"

    async def test_canonical_ticket_event(self, client, tap, tenant_id):
        secrets = await register(client, tenant_id)
        body = dumps(
            {
                "type": "afterglow.ticket.opened.v1",
                "customer_id": "cus_42",
                "data": {
                    "ticket_id": "gorgias:1",
                    "helpdesk": "gorgias",
                    "opened_at": "2026-03-06T08:00:00Z",
                },
            }
        )
        r = await client.post(
            f"/webhooks/standard/{tenant_id}",
            content=body,
            headers=standard_headers(secrets["standard"], body),
        )
        assert r.status_code == 200, r.text
        [event] = await tap.wait_for(of(tenant_id, "ticket.opened"))
        assert event.data.ticket_id == "gorgias:1"

    async def test_stale_timestamp_is_refused(self, client, runtime, tenant_id):
        secrets = await register(client, tenant_id)
        body = dumps(canonical_delivered())
        stale = standard_headers(secrets["standard"], body, ts=int(time.time()) - 301)
        r = await client.post(f"/webhooks/standard/{tenant_id}", content=body, headers=stale)
        assert r.status_code == 401
        assert await outbox_count(runtime, tenant_id) == 0

    async def test_several_signatures_one_valid(self, client, tenant_id):
        secrets = await register(client, tenant_id)
        body = dumps(canonical_delivered())
        h = standard_headers(secrets["standard"], body)
        h["webhook-signature"] = "v1,bm90LWl0 " + h["webhook-signature"]
        r = await client.post(f"/webhooks/standard/{tenant_id}", content=body, headers=h)
        assert r.status_code == 200

    async def test_missing_field_names_it(self, client, tenant_id):
        secrets = await register(client, tenant_id)
        payload = canonical_delivered()
        del payload["data"]["delivered_at"]
        body = dumps(payload)
        r = await client.post(
            f"/webhooks/standard/{tenant_id}",
            content=body,
            headers=standard_headers(secrets["standard"], body),
        )
        # Was 422: signed but incomplete is stored (200) and quarantined by the worker,
        # with the field named.
        r = await settled(client, tenant_id, r)
        assert r.status_code == 200 and r.json()["status"] == "quarantined"
        key = await api_key(client, tenant_id, "orders:read")
        d = await client.get(
            f"/v1/deliveries/{r.json()['delivery_id']}", headers={"Authorization": f"Bearer {key}"}
        )
        assert "data.delivered_at" in d.json()["last_error"]

    async def test_repeated_webhook_id(self, client, runtime, tenant_id):
        secrets = await register(client, tenant_id)
        body = dumps(canonical_delivered())
        h = standard_headers(secrets["standard"], body, msg_id="msg_fixed")
        first = await client.post(f"/webhooks/standard/{tenant_id}", content=body, headers=h)
        assert first.status_code == 200
        again = await client.post(f"/webhooks/standard/{tenant_id}", content=body, headers=h)
        assert again.status_code == 200 and again.json()["status"] == "duplicate"
        assert (await settled(client, tenant_id, first)).json()["status"] == "processed"
        assert await outbox_count(runtime, tenant_id) == 1


class TestZendesk:
    async def test_created_and_solved(self, client, tap, tenant_id):
        secrets = await register(client, tenant_id)
        created = fixture("zendesk_ticket_created")
        body = dumps(created)
        r = await client.post(
            f"/webhooks/zendesk/{tenant_id}",
            content=body,
            headers=zendesk_headers(secrets["zendesk"], body),
        )
        assert r.status_code == 200, r.text
        solved = created | {
            "type": "zen:event-type:ticket.status_changed",
            "id": str(uuid.uuid4()),
            "detail": created["detail"] | {"status": "SOLVED"},
            "event": {"current": "SOLVED", "previous": "OPEN"},
        }
        body2 = dumps(solved)
        r2 = await client.post(
            f"/webhooks/zendesk/{tenant_id}",
            content=body2,
            headers=zendesk_headers(secrets["zendesk"], body2),
        )
        assert r2.status_code == 200
        [opened] = await tap.wait_for(of(tenant_id, "ticket.opened"))
        [resolved] = await tap.wait_for(of(tenant_id, "ticket.resolved"))
        assert opened.data.ticket_id == resolved.data.ticket_id == "zendesk:35436"
        assert opened.data.priority == "high"
        assert opened.subject == resolved.subject == "zendesk:8447388090494"

    async def test_stale_timestamp(self, client, tenant_id):
        secrets = await register(client, tenant_id)
        body = dumps(fixture("zendesk_ticket_created"))
        h = zendesk_headers(secrets["zendesk"], body, ts="2020-01-01T00:00:00Z")
        r = await client.post(f"/webhooks/zendesk/{tenant_id}", content=body, headers=h)
        assert r.status_code == 401


class TestAfterShip:
    async def test_delivered_tracking_becomes_order_delivered(self, client, tap, tenant_id):
        secrets = await register(client, tenant_id)
        await post_shopify(
            client, tenant_id, secrets["shopify"], "orders/create", fixture("shopify_order")
        )
        body = dumps(fixture("aftership_tracking_update"))
        r = await client.post(
            f"/webhooks/aftership/{tenant_id}",
            content=body,
            headers={
                "Content-Type": "application/json",
                "aftership-hmac-sha256": b64hmac(secrets["aftership"], body),
            },
        )
        assert r.status_code == 200, r.text
        [event] = await tap.wait_for(of(tenant_id, "order.delivered"))
        # The tracker knows the shop's order id; the event carries Afterglow's.
        assert event.data.order_id == "shopify:820982911946154508"
        assert event.data.reported_by == "aftership"
        assert event.subject == "115310627314723954"

    async def test_in_transit_emits_nothing(self, client, runtime, tenant_id):
        secrets = await register(client, tenant_id)
        payload = fixture("aftership_tracking_update")
        payload["msg"]["tag"] = "InTransit"
        body = dumps(payload)
        r = await client.post(
            f"/webhooks/aftership/{tenant_id}",
            content=body,
            headers={"aftership-hmac-sha256": b64hmac(secrets["aftership"], body)},
        )
        r = await settled(client, tenant_id, r)
        assert r.status_code == 200 and r.json()["status"] == "processed"
        assert r.json()["events"] == []
        assert await outbox_count(runtime, tenant_id) == 0


class TestSecretRotation:
    async def test_old_and_new_accepted_during_rotation_old_rejected_after(self, client, tenant_id):
        secrets = await register(client, tenant_id)
        old = secrets["shopify"]
        r = await client.post(
            f"/admin/tenants/{tenant_id}/secrets/shopify",
            headers=ADMIN,
            json={"secret": "new-shopify-secret"},
        )
        assert r.status_code == 201, r.text
        order = fixture("shopify_order")
        assert (
            await post_shopify(client, tenant_id, old, "orders/create", order)
        ).status_code == 200
        assert (
            await post_shopify(client, tenant_id, "new-shopify-secret", "orders/create", order)
        ).status_code == 200
        # A second rotation ends the first one's grace: never more than two secrets.
        r = await client.delete(
            f"/admin/tenants/{tenant_id}/secrets/shopify/previous", headers=ADMIN
        )
        assert r.status_code == 200 and r.json()["expired"] == 1
        assert (
            await post_shopify(client, tenant_id, old, "orders/create", order)
        ).status_code == 401
        assert (
            await post_shopify(client, tenant_id, "new-shopify-secret", "orders/create", order)
        ).status_code == 200

    async def test_standard_webhooks_secret_rotation(self, client, tenant_id):
        secrets = await register(client, tenant_id)
        new = "whsec_" + base64.b64encode(b"k" * 32).decode()
        await client.post(
            f"/admin/tenants/{tenant_id}/secrets/standard", headers=ADMIN, json={"secret": new}
        )
        await client.post(
            f"/admin/tenants/{tenant_id}/secrets/standard",
            headers=ADMIN,
            json={"secret": "whsec_" + base64.b64encode(b"z" * 32).decode()},
        )
        body = dumps(canonical_delivered())
        # Two rotations: the first secret is gone, the second still in its grace period.
        r_old = await client.post(
            f"/webhooks/standard/{tenant_id}",
            content=body,
            headers=standard_headers(secrets["standard"], body),
        )
        r_mid = await client.post(
            f"/webhooks/standard/{tenant_id}", content=body, headers=standard_headers(new, body)
        )
        assert r_old.status_code == 401
        assert r_mid.status_code == 200
        assert (await settled(client, tenant_id, r_mid)).json()["status"] == "processed"


class TestWooPing:
    async def test_webhook_creation_ping_is_acknowledged(self, client, runtime, tenant_id):
        await register(client, tenant_id)
        r = await client.post(
            f"/webhooks/woocommerce/{tenant_id}",
            content=b"webhook_id=15",
            headers={"Content-Type": "application/x-www-form-urlencoded"},
        )
        assert r.status_code == 200
        assert await outbox_count(runtime, tenant_id) == 0


class TestWooBySource:
    async def test_tenant_from_the_store_url(self, client, tap, tenant_id):
        store = f"https://{tenant_id}.example.com"
        r = await client.post(
            "/admin/tenants",
            headers=ADMIN,
            json={
                "tenant_id": tenant_id,
                "name": "woo",
                "woocommerce_store_url": store + "/",
                "platforms": ["woocommerce"],
            },
        )
        secret = r.json()["secrets"]["woocommerce"]
        raw = dumps(fixture("woocommerce_order"))
        headers = {
            "Content-Type": "application/json",
            "X-WC-Webhook-Topic": "order.created",
            "X-WC-Webhook-Source": store.upper() + "/",
            "X-WC-Webhook-Signature": b64hmac(secret, raw),
        }
        ok = await client.post("/webhooks/woocommerce", content=raw, headers=headers)
        assert ok.status_code == 200, ok.text
        [event] = await tap.wait_for(of(tenant_id, "order.placed"))
        assert event.data.order_id == "woocommerce:727"
        stranger = headers | {"X-WC-Webhook-Source": "https://elsewhere.example.com/"}
        assert (
            await client.post("/webhooks/woocommerce", content=raw, headers=stranger)
        ).status_code == 401
