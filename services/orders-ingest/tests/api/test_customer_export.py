"""A customer's data export: the orders and raw deliveries ingest holds about them."""

from __future__ import annotations

import uuid
from typing import Any

from ..ingest_support import api_key, fixture, post_shopify, register

EXPORT = "/v1/customers/{}/export"


def order_of(customer_id: int, email: str) -> dict[str, Any]:
    order = fixture("shopify_order")
    order["id"] = uuid.uuid4().int % 10**15
    order["name"] = f"#{order['id'] % 10000}"
    order["customer"]["id"] = customer_id
    order["customer"]["email"] = email
    order["email"] = email
    return order


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def shop_with_orders(client, tenant_id: str) -> tuple[dict[str, str], dict, dict]:  # type: ignore[no-untyped-def]
    """Ada's order with a refund, and Bob's order, in one shop."""
    secrets = await register(client, tenant_id)
    ada = order_of(1001, "ada@example.com")
    bob = order_of(2002, "bob@example.com")
    for order in (ada, bob):
        r = await post_shopify(client, tenant_id, secrets["shopify"], "orders/create", order)
        assert r.status_code == 200, r.text
    refund = fixture("shopify_refund")
    refund["order_id"] = ada["id"]
    r = await post_shopify(client, tenant_id, secrets["shopify"], "refunds/create", refund)
    assert r.status_code == 200, r.text
    return secrets, ada, bob


class TestCustomerExport:
    async def test_export_holds_the_customers_orders_and_deliveries_only(self, client, tenant_id):
        _, ada, bob = await shop_with_orders(client, tenant_id)
        other_tenant = f"{tenant_id}-other"
        other_secrets = await register(client, other_tenant)
        elsewhere = order_of(1001, "ada@example.com")  # Ada's id in another shop
        r = await post_shopify(
            client, other_tenant, other_secrets["shopify"], "orders/create", elsewhere
        )
        assert r.status_code == 200, r.text
        key = await api_key(client, tenant_id, "customers:export")

        r = await client.get(EXPORT.format("1001"), headers=bearer(key))

        assert r.status_code == 200, r.text
        export = r.json()
        assert (export["service"], export["tenant_id"], export["customer_id"]) == (
            "orders-ingest",
            tenant_id,
            "1001",
        )
        records = export["records"]
        assert [o["platform_order_id"] for o in records["orders"]] == [str(ada["id"])]
        assert (records["orders"][0]["total_amount"], records["orders"][0]["currency"]) == (
            40300,
            "USD",
        )
        deliveries = records["deliveries"]
        assert [d["topic"] for d in deliveries] == ["orders/create", "refunds/create"]
        assert deliveries[0]["payload"]["id"] == ada["id"]
        assert deliveries[0]["payload"]["customer"]["email"] == "ada@example.com"
        assert deliveries[1]["payload"]["order_id"] == ada["id"]
        assert all(d["subjects"] == ["1001"] for d in deliveries)
        # The contact linking Ada's helpdesk tickets to her: her email, not Bob's.
        [link] = [x for x in records["customer_links"] if x["kind"] == "email"]
        assert (link["subject"], link["email"]) == ("1001", "ada@example.com")
        # The sender's signature headers are not the customer's data.
        assert all("headers" not in d and "dedupe_key" not in d for d in deliveries)
        blob = r.text
        assert str(bob["id"]) not in blob and "bob@example.com" not in blob
        assert str(elsewhere["id"]) not in blob

    async def test_the_export_needs_its_own_scope(self, client, tenant_id):
        await register(client, tenant_id)
        reader = await api_key(client, tenant_id, "orders:read", "orders:write")

        denied = await client.get(EXPORT.format("1001"), headers=bearer(reader))
        anonymous = await client.get(EXPORT.format("1001"))

        assert denied.status_code == 403
        assert "customers:export" in denied.json()["error"]["message"]
        assert anonymous.status_code == 401
        assert anonymous.json()["error"]["code"]

    async def test_an_unknown_customer_gets_every_table_empty(self, client, tenant_id):
        await register(client, tenant_id)
        key = await api_key(client, tenant_id, "customers:export")

        r = await client.get(EXPORT.format("nobody-here"), headers=bearer(key))

        assert r.status_code == 200
        assert r.json()["records"] == {
            "orders": [],
            "customer_links": [],
            "ticket_customers": [],
            "escalations": [],
            "deliveries": [],
            "shop_discounts": [],
        }

    async def test_after_a_redact_the_payloads_read_empty(self, client, tenant_id):
        secrets, ada, _ = await shop_with_orders(client, tenant_id)
        redact = fixture("shopify_customers_redact")
        redact["shop_domain"] = f"{tenant_id}.myshopify.com"
        redact["customer"] = {"id": 1001, "email": "ada@example.com", "phone": None}
        redact["orders_to_redact"] = [ada["id"]]
        r = await post_shopify(client, tenant_id, secrets["shopify"], "customers/redact", redact)
        assert r.status_code == 200, r.text
        key = await api_key(client, tenant_id, "customers:export")

        deliveries = (await client.get(EXPORT.format("1001"), headers=bearer(key))).json()[
            "records"
        ]["deliveries"]

        by_topic = {d["topic"]: d["payload"] for d in deliveries}
        assert by_topic["orders/create"] == {}  # blanked: it carried Ada's email
        assert "ada@example.com" not in str(by_topic["orders/create"])
        assert set(by_topic) == {"orders/create", "refunds/create", "customers/redact"}
