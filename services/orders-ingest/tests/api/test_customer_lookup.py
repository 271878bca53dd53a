"""Finding a customer by the hash of their email (the console's search by email)."""

from __future__ import annotations

import uuid

from afterglow.kit.contact_hash import email_hash

from ..ingest_support import api_key, fixture, post_shopify, register

LOOKUP = "/v1/customer-links"


async def place(client, tenant_id: str, secret: str, customer_id: int, email: str) -> None:  # type: ignore[no-untyped-def]
    order = fixture("shopify_order")
    order["id"] = uuid.uuid4().int % 10**15
    order["customer"]["id"] = customer_id
    order["customer"]["email"] = order["email"] = email
    r = await post_shopify(client, tenant_id, secret, "orders/create", order)
    assert r.status_code == 200, r.text


class TestCustomerLookup:
    async def test_the_hash_of_a_typed_email_finds_the_customer_of_this_shop_only(
        self, client, tenant_id
    ):
        secrets = await register(client, tenant_id)
        await place(client, tenant_id, secrets["shopify"], 1001, "ada@example.com")
        await place(client, tenant_id, secrets["shopify"], 2002, "bob@example.com")
        other = f"{tenant_id}-other"
        other_secrets = await register(client, other)
        await place(client, other, other_secrets["shopify"], 3003, "ada@example.com")
        key = await api_key(client, tenant_id, "orders:read")

        # As a person types it: spaces and capitals normalize away, as ingest's do.
        r = await client.get(
            LOOKUP,
            params={"email_hash": email_hash("  Ada@Example.com ")},
            headers={"Authorization": f"Bearer {key}"},
        )

        assert r.status_code == 200, r.text
        assert r.json() == {"customer_ids": ["1001"]}  # not the other shop's 3003
        nobody = await client.get(
            LOOKUP,
            params={"email_hash": email_hash("eve@example.com")},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert nobody.json() == {"customer_ids": []}

    async def test_an_address_in_place_of_its_hash_is_refused(self, client, tenant_id):
        await register(client, tenant_id)
        key = await api_key(client, tenant_id, "orders:read")
        r = await client.get(
            LOOKUP,
            params={"email_hash": "ada@example.com"},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert r.status_code == 422
        assert r.json()["error"]["field"] == "email_hash"

    async def test_it_needs_orders_read(self, client, tenant_id):
        await register(client, tenant_id)
        key = await api_key(client, tenant_id, "customers:export")
        r = await client.get(
            LOOKUP,
            params={"email_hash": email_hash("ada@example.com")},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert r.status_code == 403

    async def test_an_order_posted_over_rest_links_its_email_too(self, client, tenant_id):
        await register(client, tenant_id)
        key = await api_key(client, tenant_id, "orders:write", "orders:read")
        r = await client.post(
            "/v1/orders",
            headers={"Authorization": f"Bearer {key}", "Idempotency-Key": "rest-1"},
            json={
                "type": "order.placed",
                "customer_id": "cus_rest",
                "data": {
                    "order_id": "rest-1",
                    "platform": "api",
                    "placed_at": "2026-03-01T10:00:00Z",
                    "customer": {"email": "Rest@Example.com"},
                    "total": {"amount": 1000, "currency": "USD"},
                },
            },
        )
        assert r.status_code == 201, r.text
        found = await client.get(
            LOOKUP,
            params={"email_hash": email_hash("rest@example.com")},
            headers={"Authorization": f"Bearer {key}"},
        )
        assert found.json() == {"customer_ids": ["cus_rest"]}
