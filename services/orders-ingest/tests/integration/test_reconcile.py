"""Reconciliation against a local fake of the platforms' order APIs: a lost webhook
becomes exactly one event, and a late webhook for the same change emits nothing more."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from ..ingest_support import (
    ADMIN,
    api_key,
    connect,
    fixture,
    outbox_count,
    post_shopify,
    post_woo,
    register,
)


def recent(minutes: int) -> str:
    return (datetime.now(UTC) - timedelta(minutes=minutes)).isoformat(timespec="seconds")


async def reconcile(client, tenant_id: str, platform: str) -> dict:
    r = await client.post(f"/admin/tenants/{tenant_id}/reconcile/{platform}", headers=ADMIN)
    assert r.status_code == 200, r.text
    assert r.json()["error"] is None, r.json()
    return r.json()


def placed(tenant_id: str):  # type: ignore[no-untyped-def]
    return lambda e: e.tenantid == tenant_id and e.type == "afterglow.order.placed.v1"


class TestShopifyReconciliation:
    async def test_lost_webhook_recovered_once_and_late_webhook_silent(
        self, client, tap, runtime, fake, tenant_id
    ):
        secrets = await register(client, tenant_id)
        await connect(client, tenant_id, "shopify", fake.url, tenant_id)
        order = fixture("shopify_order") | {"updated_at": recent(30)}
        # Three orders and a page size of 2 (test settings): pagination is followed.
        others = [order | {"id": 1000 + i, "updated_at": recent(20 - i)} for i in range(2)]
        fake.shopify[tenant_id] = [order, *others]

        counts = await reconcile(client, tenant_id, "shopify")
        assert counts["events"] == 3 and counts["seen"] == 3
        events = await tap.wait_for(placed(tenant_id), count=3)
        assert {e.data.order_id for e in events} == {
            "shopify:820982911946154508",
            "shopify:1000",
            "shopify:1001",
        }
        # A second pass sees the same changes (the watermark overlaps) and emits nothing.
        assert (await reconcile(client, tenant_id, "shopify"))["events"] == 0
        # The webhook finally arrives, hours late: stored, but the fact was already told.
        late = await post_shopify(client, tenant_id, secrets["shopify"], "orders/create", order)
        assert late.status_code == 200 and late.json()["events"] == []
        assert await outbox_count(runtime, tenant_id) == 3

        # The order is then fulfilled and that webhook is lost too.
        fake.shopify[tenant_id][0] = order | {
            "updated_at": recent(1),
            "fulfillment_status": "fulfilled",
            "fulfillments": [fixture("shopify_fulfillment") | {"shipment_status": None}],
        }
        counts = await reconcile(client, tenant_id, "shopify")
        assert counts["events"] == 1
        [fulfilled] = await tap.wait_for(
            lambda e: e.tenantid == tenant_id and e.type == "afterglow.order.fulfilled.v1"
        )
        assert fulfilled.subject == "115310627314723954"
        everything = [e for e in await tap.events(settle=0.5) if e.tenantid == tenant_id]
        assert sum(e.type == "afterglow.order.placed.v1" for e in everything) == 3

    async def test_api_failure_leaves_watermark_and_reports(self, client, fake, tenant_id):
        await register(client, tenant_id)
        await connect(client, tenant_id, "shopify", fake.url, "not-a-token")
        r = await client.post(f"/admin/tenants/{tenant_id}/reconcile/shopify", headers=ADMIN)
        assert r.status_code == 200
        assert "401" in r.json()["error"]

    async def test_without_a_connection_answers_the_reason_alone(self, client, tenant_id):
        # Nothing polled, so no counts: the answer is the reason and nothing else (the
        # documented model is counts or this reason, so no null counts may appear).
        await register(client, tenant_id)
        r = await client.post(f"/admin/tenants/{tenant_id}/reconcile/shopify", headers=ADMIN)
        assert r.status_code == 200
        assert r.json() == {"error": "no connection"}

    async def test_counts_keep_a_null_error(self, client, fake, tenant_id):
        await register(client, tenant_id)
        await connect(client, tenant_id, "shopify", fake.url, tenant_id)
        fake.shopify[tenant_id] = []
        r = await client.post(f"/admin/tenants/{tenant_id}/reconcile/shopify", headers=ADMIN)
        assert r.status_code == 200
        assert r.json() == {"seen": 0, "new_deliveries": 0, "events": 0, "error": None}

    async def test_private_api_base_is_refused_in_production(
        self, client, runtime, fake, tenant_id
    ):
        # The suite allows private addresses (its fake is on 127.0.0.1); production not.
        await register(client, tenant_id)
        await connect(client, tenant_id, "shopify", fake.url, tenant_id)
        allowed = runtime.settings
        runtime.settings = allowed.model_copy(update={"outbound_allow_private": False})
        try:
            r = await client.put(
                f"/admin/tenants/{tenant_id}/connections/shopify",
                headers=ADMIN,
                json={"api_base_url": "http://169.254.169.254", "access_token": "t"},
            )
            assert r.status_code == 422 and r.json()["error"]["field"] == "api_base_url"
            # The connection saved while allowed is checked again before each pass.
            r = await client.post(f"/admin/tenants/{tenant_id}/reconcile/shopify", headers=ADMIN)
            # (refused before any request: the error is the check's, not the fake's 401)
            assert "127.0.0.1 is not a public address" in r.json()["error"]
        finally:
            runtime.settings = allowed


class TestWooReconciliation:
    async def test_lost_webhook_then_retry_is_duplicate(
        self, client, tap, runtime, fake, tenant_id
    ):
        secrets = await register(client, tenant_id)
        await connect(client, tenant_id, "woocommerce", fake.url, f"{tenant_id}:cs_secret")
        stamp = (
            (datetime.now(UTC) - timedelta(minutes=5))
            .replace(tzinfo=None)
            .isoformat(timespec="seconds")
        )
        order = fixture("woocommerce_order") | {"date_modified_gmt": stamp}
        fake.woo[tenant_id] = [order]
        assert (await reconcile(client, tenant_id, "woocommerce"))["events"] == 1
        [event] = await tap.wait_for(placed(tenant_id))
        assert event.data.order_id == "woocommerce:727"
        # WooCommerce retries the webhook with a fresh delivery id: same order version.
        retry = await post_woo(client, tenant_id, secrets["woocommerce"], "order.created", order)
        assert retry.status_code == 200 and retry.json()["status"] == "duplicate"
        assert await outbox_count(runtime, tenant_id) == 1


class TestWorker:
    async def test_background_worker_recovers_a_lost_webhook(
        self, client, tap, runtime, fake, tenant_id
    ):
        import asyncio
        import contextlib

        from afterglow.ingest.reconcile import reconciliation_worker

        await register(client, tenant_id)
        await connect(client, tenant_id, "shopify", fake.url, tenant_id)
        fake.shopify[tenant_id] = [fixture("shopify_order") | {"updated_at": recent(3)}]
        # The app's own worker slept right after start-up (interval 1 h in tests); a
        # second instance of the same loop makes its first pass now.
        task = asyncio.create_task(reconciliation_worker(runtime))
        try:
            [event] = await tap.wait_for(placed(tenant_id))
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        assert event.data.order_id == "shopify:820982911946154508"
        assert await outbox_count(runtime, tenant_id) == 1


class TestReconciliationBoundary:
    async def test_reconciled_nul_is_cleaned_and_a_bad_order_quarantined(
        self, client, tap, fake, tenant_id
    ):
        """Polled orders go through the same cleaning and quarantine as webhooks: a NUL
        costs nothing, a negative total is kept for the operator, not dropped."""
        await register(client, tenant_id)
        await connect(client, tenant_id, "shopify", fake.url, tenant_id)
        good = fixture("shopify_order") | {"updated_at": recent(10)}
        good["customer"] = good["customer"] | {"first_name": "Jo\u0000hn"}
        bad = fixture("shopify_order") | {
            "id": 4242,
            "total_price": "-5.00",
            "updated_at": recent(9),
        }
        fake.shopify[tenant_id] = [good, bad]
        counts = await reconcile(client, tenant_id, "shopify")
        assert counts["seen"] == 2 and counts["events"] == 1
        [event] = await tap.wait_for(placed(tenant_id))
        assert event.data.customer.first_name == "John"
        key = await api_key(client, tenant_id, "orders:read")
        listed = await client.get(
            "/v1/deliveries?status=quarantined", headers={"Authorization": f"Bearer {key}"}
        )
        [quarantined] = listed.json()["items"]
        assert quarantined["last_error"] == "total_price is negative (field total_price)"
