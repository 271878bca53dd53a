"""Admin API (tenants, API keys announced on the broker), internal REST with
idempotency keys, operators' deliveries listing and replay."""

from __future__ import annotations

import json

from sqlalchemy import text

from ..ingest_support import ADMIN, api_key, fixture, outbox_count, post_shopify, register

ORDER = {
    "type": "order.placed",
    "customer_id": "cus_42",
    "data": {
        "order_id": "pos:1001",
        "platform": "api",
        "placed_at": "2026-03-02T14:30:00Z",
        "customer": {"email": "ada@example.com"},
        "total": {"amount": 12999, "currency": "USD"},
    },
}


class TestAdmin:
    async def test_admin_token_required(self, client, tenant_id):
        body = {"tenant_id": tenant_id, "name": "x"}
        assert (await client.post("/admin/tenants", json=body)).status_code == 401
        wrong = {"Authorization": "Bearer nope"}
        assert (await client.post("/admin/tenants", json=body, headers=wrong)).status_code == 401

    async def test_duplicate_tenant_is_409(self, client, tenant_id):
        await register(client, tenant_id)
        r = await client.post(
            "/admin/tenants", headers=ADMIN, json={"tenant_id": tenant_id, "name": "x"}
        )
        assert r.status_code == 409

    async def test_credentials_are_sealed_at_rest(self, client, runtime, tenant_id):
        secrets = await register(client, tenant_id)
        r = await client.put(
            f"/admin/tenants/{tenant_id}/connections/shopify",
            headers=ADMIN,
            json={"api_base_url": "https://shop.example.com", "access_token": "shpat_s3cret"},
        )
        assert r.status_code == 200, r.text
        async with runtime.engine.connect() as conn:
            stored = (
                (
                    await conn.execute(
                        text("SELECT secret FROM ingest.webhook_secrets WHERE tenant_id = :t"),
                        {"t": tenant_id},
                    )
                )
                .scalars()
                .all()
            )
            token = (
                await conn.execute(
                    text(
                        "SELECT access_token FROM ingest.platform_connections WHERE tenant_id = :t"
                    ),
                    {"t": tenant_id},
                )
            ).scalar_one()
        assert len(stored) == len(secrets) and all(v.startswith("agsb1:") for v in stored)
        assert not set(stored) & set(secrets.values())
        assert token.startswith("agsb1:") and "shpat_s3cret" not in token
        # ... and the service still verifies with them (the sealed value opens).
        ok = await post_shopify(
            client, tenant_id, secrets["shopify"], "orders/create", fixture("shopify_order")
        )
        assert ok.status_code == 200, ok.text

    async def test_api_key_is_announced_and_revocation_too(self, client, tap, tenant_id):
        await register(client, tenant_id)
        r = await client.post(
            f"/admin/tenants/{tenant_id}/api-keys", headers=ADMIN, json={"scopes": ["orders:write"]}
        )
        key_id = r.json()["key_id"]
        [issued] = await tap.wait_for(
            lambda e: e.tenantid == tenant_id and e.type == "afterglow.tenant.api_key_issued.v1"
        )
        assert issued.subject == key_id and issued.data.key_id == key_id
        assert issued.data.scopes == ["orders:write"]
        assert len(issued.data.key_hash) == 64 and r.json()["key"] not in issued.model_dump_json()
        key = r.json()["key"]
        ok = await client.post(
            "/v1/orders",
            json=ORDER,
            headers={"Authorization": f"Bearer {key}", "Idempotency-Key": "k1"},
        )
        assert ok.status_code == 201
        r = await client.delete(f"/admin/tenants/{tenant_id}/api-keys/{key_id}", headers=ADMIN)
        assert r.status_code == 200
        [revoked] = await tap.wait_for(
            lambda e: e.tenantid == tenant_id and e.type == "afterglow.tenant.api_key_revoked.v1"
        )
        assert revoked.subject == key_id
        after = await client.post(
            "/v1/orders",
            json=ORDER,
            headers={"Authorization": f"Bearer {key}", "Idempotency-Key": "k2"},
        )
        assert after.status_code == 401


class TestRest:
    async def test_idempotency_key(self, client, tap, runtime, tenant_id):
        await register(client, tenant_id)
        key = await api_key(client, tenant_id, "orders:write")
        h = {"Authorization": f"Bearer {key}", "Idempotency-Key": "order-1001"}
        first = await client.post("/v1/orders", json=ORDER, headers=h)
        again = await client.post("/v1/orders", json=ORDER, headers=h)
        assert first.status_code == again.status_code == 201
        assert first.json() == again.json()
        other = ORDER | {"customer_id": "cus_43"}
        conflict = await client.post("/v1/orders", json=other, headers=h)
        assert conflict.status_code == 409
        assert conflict.json()["error"]["field"] == "Idempotency-Key"
        [event] = await tap.wait_for(
            lambda e: e.tenantid == tenant_id and e.type == "afterglow.order.placed.v1"
        )
        assert event.subject == "cus_42" and event.data.total.amount == 12999
        assert await outbox_count(runtime, tenant_id) == 1

    async def test_required_header_scope_and_fields(self, client, tenant_id):
        await register(client, tenant_id)
        key = await api_key(client, tenant_id, "support:write")
        auth = {"Authorization": f"Bearer {key}"}
        assert (await client.post("/v1/orders", json=ORDER)).status_code == 401
        assert (
            await client.post("/v1/orders", json=ORDER, headers=auth | {"Idempotency-Key": "a"})
        ).status_code == 403
        missing = await client.post("/v1/support-events", json=ORDER, headers=auth)
        assert missing.status_code == 422 and missing.json()["error"]["field"] == "Idempotency-Key"
        wrong_type = await client.post(
            "/v1/support-events", json=ORDER, headers=auth | {"Idempotency-Key": "b"}
        )
        assert wrong_type.status_code == 422 and wrong_type.json()["error"]["field"] == "type"
        ticket = {
            "type": "ticket.opened",
            "customer_id": "cus_42",
            "data": {"ticket_id": "t1", "helpdesk": "helpdesk"},
        }
        bad = await client.post(
            "/v1/support-events", json=ticket, headers=auth | {"Idempotency-Key": "c"}
        )
        assert bad.status_code == 422 and bad.json()["error"]["field"] == "data.opened_at"
        ticket["data"]["opened_at"] = "2026-03-06T08:00:00Z"
        ok = await client.post(
            "/v1/support-events", json=ticket, headers=auth | {"Idempotency-Key": "c"}
        )
        assert ok.status_code == 201, ok.text


class TestDeliveries:
    async def test_list_filter_paginate_and_replay(self, client, tap, tenant_id):
        secrets = await register(client, tenant_id)
        s = secrets["shopify"]
        created = await post_shopify(
            client, tenant_id, s, "orders/create", fixture("shopify_order")
        )
        await post_shopify(client, tenant_id, s, "products/update", {"id": 1})
        await post_shopify(
            client,
            tenant_id,
            s,
            "customers/data_request",
            fixture("shopify_customers_data_request"),
        )
        key = await api_key(client, tenant_id, "orders:read", "orders:write")
        auth = {"Authorization": f"Bearer {key}"}
        archived = await client.get("/v1/deliveries", params={"status": "archived"}, headers=auth)
        assert [d["topic"] for d in archived.json()["items"]] == ["products/update"]
        page1 = await client.get("/v1/deliveries", params={"limit": 2}, headers=auth)
        page2 = await client.get(
            "/v1/deliveries",
            params={"limit": 2, "cursor": page1.json()["next_cursor"]},
            headers=auth,
        )
        ids = [d["id"] for d in page1.json()["items"] + page2.json()["items"]]
        assert len(set(ids)) == 3 and page2.json()["next_cursor"] is None
        by_topic = await client.get(
            "/v1/deliveries",
            params={"topic": "orders/create", "from": "2020-01-01T00:00:00Z"},
            headers=auth,
        )
        assert [d["id"] for d in by_topic.json()["items"]] == [created.json()["delivery_id"]]

        [original] = await tap.wait_for(
            lambda e: e.tenantid == tenant_id and e.type == "afterglow.order.placed.v1"
        )
        replay = await client.post(
            f"/v1/deliveries/{created.json()['delivery_id']}/replay", headers=auth
        )
        assert replay.status_code == 200, replay.text
        assert replay.json()["events"] == [original.id]
        # Published again with the same id: downstream inboxes drop it.
        again = await tap.wait_for(lambda e: e.id == original.id, count=2)
        assert len(again) == 2
        archived_id = archived.json()["items"][0]["id"]
        r = await client.post(f"/v1/deliveries/{archived_id}/replay", headers=auth)
        assert (
            r.status_code == 200 and r.json()["status"] == "archived" and r.json()["events"] == []
        )
        other = await client.post("/v1/deliveries/nope/replay", headers=auth)
        assert other.status_code == 404
        detail = await client.get(f"/v1/deliveries/{created.json()['delivery_id']}", headers=auth)
        assert detail.status_code == 200 and detail.json()["replays"] == 1
        assert json.loads(detail.json()["body"])["id"] == 820982911946154508
        assert detail.json()["headers"]["x-shopify-topic"] == "orders/create"


class TestTenantIsolation:
    async def test_another_tenants_deliveries_are_invisible(self, client, tenant_id):
        secrets = await register(client, tenant_id)
        created = await post_shopify(
            client, tenant_id, secrets["shopify"], "orders/create", fixture("shopify_order")
        )
        other = f"{tenant_id}-b"
        await register(client, other)
        key = await api_key(client, other, "orders:read", "orders:write")
        auth = {"Authorization": f"Bearer {key}"}
        listed = await client.get("/v1/deliveries", headers=auth)
        assert listed.status_code == 200 and listed.json()["items"] == []
        replay = await client.post(
            f"/v1/deliveries/{created.json()['delivery_id']}/replay", headers=auth
        )
        assert replay.status_code == 404
