"""History import (WooCommerce and BigCommerce pages, the CLI), refunds fetched from
BigCommerce, and late live orders, against the local fake of the platforms' APIs. The
Shopify GraphQL import, with what journeys and loyalty make of it, is in
tests/e2e/test_refunds_and_history.py."""

from __future__ import annotations

import asyncio
import json
from datetime import UTC, datetime, timedelta
from typing import Any

from afterglow.events import catalog as c
from afterglow.ingest import cli

from ..ingest_support import ADMIN, connect, fixture, post_woo, register


def gmt(t: datetime) -> str:
    return t.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="seconds")


def woo(order_id: int, created: datetime, **over: Any) -> dict[str, Any]:
    return fixture("woocommerce_order") | {
        "id": order_id,
        "status": "completed",
        "currency": "USD",
        "total": "39.00",
        "date_created_gmt": gmt(created),
        "date_modified_gmt": gmt(created + timedelta(days=2)),
        "date_completed_gmt": gmt(created + timedelta(days=1)),
        "refunds": [],
        **over,
    }


def bc(order_id: int, created: datetime, **over: Any) -> dict[str, Any]:
    return fixture("bigcommerce_order") | {
        "id": order_id,
        "date_created": created.strftime("%a, %d %b %Y %H:%M:%S +0000"),
        "total_inc_tax": "39.0000",
        "currency_code": "USD",
        **over,
    }


async def import_history(client, tenant_id: str, platform: str, since: datetime, **body: Any):
    r = await client.post(
        f"/admin/tenants/{tenant_id}/import-history/{platform}",
        headers=ADMIN,
        json={"since": since.isoformat(), **body},
    )
    assert r.status_code == 200, r.text
    return r.json()


def mine(tenant_id: str, type_: type[c.EventData]):  # type: ignore[no-untyped-def]
    return lambda e: e.tenantid == tenant_id and isinstance(e.data, type_)


class TestWooCommerceImport:
    async def test_pages_of_past_orders_become_historical_events_once(
        self, client, tap, fake, tenant_id
    ):
        await register(client, tenant_id)
        await connect(client, tenant_id, "woocommerce", fake.url, f"{tenant_id}:cs_secret")
        since = datetime(2024, 1, 1, tzinfo=UTC)
        refunds = [{"id": 11, "total": "-10.00"}, {"id": 12, "total": "-9.00"}]
        fake.woo[tenant_id] = [
            woo(501, since - timedelta(days=3)),  # before the import's start: left out
            woo(502, since + timedelta(days=1)),
            woo(503, since + timedelta(days=2), refunds=refunds),
            woo(504, since + timedelta(days=3), status="cancelled"),
        ]
        result = await import_history(client, tenant_id, "woocommerce", since)
        # Page size 2 (test settings): three orders on two pages.
        assert (result["orders"], result["pages"], result["error"]) == (3, 2, None)
        placed = await tap.wait_for(mine(tenant_id, c.OrderPlaced), count=2)
        assert sorted(e.data.order_id for e in placed) == [
            "woocommerce:502",
            "woocommerce:503",
        ]
        refunded = await tap.wait_for(mine(tenant_id, c.OrderRefunded), count=2)
        assert sorted((e.data.refund_id, e.data.full) for e in refunded) == [
            ("11", False),
            ("12", False),
        ]
        [cancelled] = await tap.wait_for(mine(tenant_id, c.OrderCancelled))
        for e in [*placed, *refunded, cancelled]:
            assert (e.data.historical, e.data.origin, e.data.earn_points) == (
                True,
                "import",
                False,
            )
            assert e.data.historical_reason == "history import since 2024-01-01"

        # Run again (an interrupted import resumed): nothing new.
        again = await import_history(client, tenant_id, "woocommerce", since)
        assert (again["orders"], again["new_deliveries"], again["events"]) == (3, 0, 0)

    async def test_without_a_connection_or_for_a_non_shop_platform(self, client, tenant_id):
        await register(client, tenant_id)
        since = {"since": "2024-01-01T00:00:00Z"}
        r = await client.post(
            f"/admin/tenants/{tenant_id}/import-history/woocommerce", headers=ADMIN, json=since
        )
        assert r.status_code == 404 and r.json()["error"]["field"] == "platform"
        r = await client.post(
            f"/admin/tenants/{tenant_id}/import-history/zendesk", headers=ADMIN, json=since
        )
        assert r.status_code == 422 and r.json()["error"]["field"] == "platform"
        r = await client.post(
            f"/admin/tenants/{tenant_id}/import-history/woocommerce",
            headers=ADMIN,
            json={"since": "2024-01-01T00:00:00"},
        )
        assert r.status_code == 422  # a moment without a zone is ambiguous
        r = await client.post(f"/admin/tenants/{tenant_id}/import-history/woocommerce", json=since)
        assert r.status_code == 401


class TestBigCommerceImport:
    async def test_orders_and_their_refunds_with_points_credited(
        self, client, tap, fake, tenant_id
    ):
        await register(client, tenant_id)
        token = f"bc-{tenant_id}"
        await connect(client, tenant_id, "bigcommerce", f"{fake.url}/stores/abc", token)
        since = datetime(2024, 1, 1, tzinfo=UTC)
        fake.bigcommerce[f"{token}:71"] = bc(71, since + timedelta(days=1))
        fake.bigcommerce[f"{token}:72"] = bc(
            72,
            since + timedelta(days=2),
            status_id=14,
            refunded_amount="39.0000",
            _refunds=[
                {"id": 1, "created": "2024-01-05T10:00:00Z", "total_amount": 19.0},
                {"id": 2, "created": "2024-01-06T10:00:00Z", "total_amount": 20.0},
            ],
        )
        result = await import_history(client, tenant_id, "bigcommerce", since, earn_points=True)
        assert (result["orders"], result["error"]) == (2, None)
        refunded = await tap.wait_for(mine(tenant_id, c.OrderRefunded), count=2)
        assert sorted((e.data.refund_id, e.data.amount.amount, e.data.full) for e in refunded) == [
            ("1", 1900, False),
            ("2", 2000, True),
        ]
        placed = await tap.wait_for(mine(tenant_id, c.OrderPlaced), count=2)
        assert all(e.data.historical and e.data.earn_points for e in placed)
        # The order without refunds cost no refunds request.
        assert not any("/orders/71/payment_actions" in r for r in fake.bc_requests)


class TestBigCommerceWebhookRefunds:
    async def test_a_fetched_order_brings_its_refunds(self, client, tap, runtime, fake, tenant_id):
        from afterglow.ingest.bigcommerce import fetch_due

        await register(client, tenant_id)
        token = f"bcw-{tenant_id}"
        await connect(client, tenant_id, "bigcommerce", f"{fake.url}/stores/abc", token)
        r = await client.post(
            f"/admin/tenants/{tenant_id}/secrets/bigcommerce", headers=ADMIN, json={}
        )
        secret = r.json()["secret"]
        fake.bigcommerce[f"{token}:81"] = bc(
            81,
            datetime.now(UTC) - timedelta(days=1),
            status_id=14,
            refunded_amount="10.0000",
            _refunds=[{"id": 7, "created": gmt(datetime.now(UTC)), "total_amount": 10.0}],
        )
        body = {"scope": "store/order/updated", "data": {"type": "order", "id": 81}, "hash": "h81"}
        r = await client.post(
            f"/webhooks/bigcommerce/{tenant_id}",
            content=json.dumps(body).encode(),
            headers={"Content-Type": "application/json", "X-Afterglow-Webhook-Token": secret},
        )
        assert r.status_code == 200, r.text
        await fetch_due(runtime)
        [refund] = await tap.wait_for(mine(tenant_id, c.OrderRefunded))
        assert (refund.data.refund_id, refund.data.amount.amount, refund.data.full) == (
            "7",
            1000,
            False,
        )
        assert not refund.data.historical


class TestLateLiveOrders:
    async def test_an_old_order_is_late_unless_the_tenant_turned_it_off(
        self, client, tap, tenant_id
    ):
        secrets = await register(client, tenant_id)
        old = datetime.now(UTC) - timedelta(days=400)
        await post_woo(client, tenant_id, secrets["woocommerce"], "order.updated", woo(901, old))
        [late] = await tap.wait_for(mine(tenant_id, c.OrderPlaced))
        assert (late.data.historical, late.data.origin) == (True, "late")
        assert "400 days before it arrived" in late.data.historical_reason

        r = await client.patch(
            f"/admin/tenants/{tenant_id}", headers=ADMIN, json={"late_order_days": 0}
        )
        assert r.status_code == 200 and r.json()["late_order_days"] == 0
        await post_woo(client, tenant_id, secrets["woocommerce"], "order.updated", woo(902, old))
        live = await tap.wait_for(mine(tenant_id, c.OrderPlaced), count=2)
        [second] = [e for e in live if e.data.order_id == "woocommerce:902"]
        assert (second.data.historical, second.data.origin) == (False, "live")

        r = await client.patch(
            f"/admin/tenants/{tenant_id}", headers=ADMIN, json={"late_order_days": -1}
        )
        assert r.status_code == 422

    async def test_a_recent_order_is_live(self, client, tap, tenant_id):
        secrets = await register(client, tenant_id)
        recent = datetime.now(UTC) - timedelta(days=2)
        await post_woo(client, tenant_id, secrets["woocommerce"], "order.updated", woo(903, recent))
        [placed] = await tap.wait_for(mine(tenant_id, c.OrderPlaced))
        assert not placed.data.historical and placed.data.origin == "live"


class TestCli:
    async def test_import_history_from_the_shell(
        self, client, tap, runtime, fake, tenant_id, capsys
    ):
        await register(client, tenant_id)
        await connect(client, tenant_id, "woocommerce", fake.url, f"{tenant_id}:cs_secret")
        fake.woo[tenant_id] = [woo(601, datetime(2025, 2, 1, tzinfo=UTC))]
        argv = [
            "import-history",
            tenant_id,
            "woocommerce",
            "--since",
            "2025-01-01",
            "--earn-points",
        ]
        # The CLI runs its own event loop, as it does in a shell.
        code = await asyncio.to_thread(cli.main, argv, runtime.settings)
        assert code == 0
        out = json.loads(capsys.readouterr().out)
        assert (out["orders"], out["earn_points"], out["since"]) == (
            1,
            True,
            "2025-01-01T00:00:00+00:00",
        )
        [placed] = await tap.wait_for(mine(tenant_id, c.OrderPlaced), timeout=30)
        assert placed.data.origin == "import" and placed.data.earn_points
