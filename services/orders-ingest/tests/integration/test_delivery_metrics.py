"""Webhook deliveries by platform and status, as GET /metrics serves them (the ingest
dashboard and the quarantine alert of deploy/ read them): a stored delivery, its
repeat, one quarantined at once and one whose signature fails each count once under
their own status."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from ..ingest_support import fixture, post_shopify, register

NAME = "afterglow_ingest_webhook_deliveries_total"
STATUSES = ("received", "duplicate", "quarantined", "unauthorized")


async def shopify_counts(client: httpx.AsyncClient) -> dict[str, float]:
    response = await client.get("/metrics")
    assert response.status_code == 200
    counts = dict.fromkeys(STATUSES, 0.0)
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            if s.name == NAME and s.labels.get("platform") == "shopify":
                counts[s.labels["status"]] = s.value
    return counts


async def test_each_answered_delivery_counts_once_under_its_status(client, tenant_id) -> None:
    secret = (await register(client, tenant_id))["shopify"]
    before = await shopify_counts(client)
    order = fixture("shopify_order")

    stored = await post_shopify(
        client, tenant_id, secret, "orders/create", order, webhook_id="w-1", settle=False
    )
    again = await post_shopify(
        client, tenant_id, secret, "orders/create", order, webhook_id="w-1", settle=False
    )
    # No topic the receiver knows how to key: quarantined on the request itself.
    odd = await post_shopify(client, tenant_id, secret, "", {"id": 1}, settle=False)
    forged = await post_shopify(
        client, tenant_id, secret, "orders/create", order, signature="AAAA", settle=False
    )
    assert [r.status_code for r in (stored, again, odd, forged)] == [200, 200, 202, 401]
    assert (stored.json()["status"], again.json()["status"]) == ("received", "duplicate")
    assert odd.json()["status"] == "quarantined"

    after = await shopify_counts(client)
    assert {k: after[k] - before[k] for k in STATUSES} == dict.fromkeys(STATUSES, 1.0)
