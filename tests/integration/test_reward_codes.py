"""A loyalty reward, from redemption to checkout, across services.

Loyalty (the real app) redeems points for a $5 reward and asks for its code by event;
orders-ingest (the real app, holding the shop's token) creates it in a local fake of
Shopify's Admin GraphQL API, limited to that customer, and only then releases the
message carrying the code. A signed Shopify ``orders/create`` webhook whose
``discount_codes`` holds the code then marks it spent.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from afterglow.devstack.pytest_plugin import serve_app
from afterglow.devstack.stack import Stack
from afterglow.events.testing import TopicTap
from afterglow.ingest.app import create_app as ingest_app
from afterglow.loyalty.app import create_app as loyalty_app
from afterglow.loyalty.settings import LoyaltySettings
from tests.fakes.shop_fakes import FakeShops, running_shops

INGEST_TESTS = Path(__file__).parents[2] / "services/orders-ingest/tests"

ADMIN = "admin-token-reward-codes"
SHOPIFY_ORDER = INGEST_TESTS / "fixtures/shopify_order.json"
CUSTOMER = 7390123  # the Shopify customer: ingest's subject and loyalty's customer id

pytestmark = pytest.mark.timeout(300)


@dataclass
class Apps:
    ingest: httpx.AsyncClient
    loyalty: httpx.AsyncClient
    loyalty_runtime: Any
    tap: TopicTap
    shops: FakeShops


@pytest.fixture(scope="module")
def shops() -> Iterator[FakeShops]:
    with running_shops() as fake:
        yield fake


@pytest.fixture(scope="module")
async def apps(stack: Stack, ingest_settings: Any, shops: FakeShops) -> AsyncIterator[Apps]:
    ingest = ingest_app(
        ingest_settings(
            ADMIN,
            ingest_discount_poll_s=0.2,
        )
    )
    loyalty = loyalty_app(LoyaltySettings(relay_poll_interval_s=0.1, log_json=False))
    async with (
        TopicTap(stack.kafka_bootstrap_servers, "afterglow.messages", "afterglow.discounts") as tap,
        serve_app(ingest) as i,
        serve_app(loyalty) as lo,
    ):
        yield Apps(i, lo, loyalty.state.runtime, tap, shops)


async def shopify_tenant(apps: Apps, tenant: str) -> str:
    """A Shopify tenant whose shop is the fake; returns its webhook secret."""
    admin = {"Authorization": f"Bearer {ADMIN}"}
    r = await apps.ingest.post(
        "/admin/tenants",
        headers=admin,
        json={
            "tenant_id": tenant,
            "name": tenant,
            "shopify_shop_domain": f"{tenant}.myshopify.com",
            "platforms": ["shopify"],
        },
    )
    assert r.status_code == 201, r.text
    secret = str(r.json()["secrets"]["shopify"])
    r = await apps.ingest.put(
        f"/admin/tenants/{tenant}/connections/shopify",
        headers=admin,
        json={"api_base_url": apps.shops.url, "access_token": f"shpat_{tenant}"},
    )
    assert r.status_code == 200, r.text
    return secret


async def post_order(apps: Apps, tenant: str, secret: str, order: dict[str, Any]) -> None:
    raw = json.dumps(order).encode()
    sig = base64.b64encode(hmac.new(secret.encode(), raw, hashlib.sha256).digest()).decode()
    r = await apps.ingest.post(
        "/webhooks/shopify",
        content=raw,
        headers={
            "Content-Type": "application/json",
            "X-Shopify-Topic": "orders/create",
            "X-Shopify-Shop-Domain": f"{tenant}.myshopify.com",
            "X-Shopify-Webhook-Id": str(uuid.uuid4()),
            "X-Shopify-Hmac-Sha256": sig,
        },
    )
    assert r.status_code == 200, r.text


def of(tenant: str, kind: str) -> Any:
    return lambda e: e.tenantid == tenant and e.type == f"afterglow.{kind}.v1"


class TestRewardCodeAtCheckout:
    async def test_a_redeemed_reward_exists_in_the_shop_before_it_is_announced_and_is_spent(
        self, apps: Apps, tenant_id: str
    ):
        secret = await shopify_tenant(apps, tenant_id)
        async with apps.loyalty_runtime.sessionmaker.begin() as s:
            key = await apps.loyalty_runtime.api_keys.create(s, tenant_id, ["loyalty:write"])
        h = {"Authorization": f"Bearer {key}"}
        r = await apps.loyalty.post(
            f"/v1/accounts/{CUSTOMER}/adjustments", json={"points": 600, "reason": "t"}, headers=h
        )
        assert r.status_code == 201, r.text
        r = await apps.loyalty.post(
            f"/v1/accounts/{CUSTOMER}/redemptions",
            json={"reward_id": "five-off"},
            headers={**h, "Idempotency-Key": "redeem-1"},
        )
        assert r.status_code == 201, r.text
        code = r.json()["code"]
        shop = apps.shops.shop(f"shpat_{tenant_id}")

        [msg] = await apps.tap.wait_for(
            lambda e: of(tenant_id, "message.requested")(e) and e.data.kind == "reward_code",
            timeout=120,
        )
        # When the message is requested, the discount exists in the shop: one, for them.
        assert list(shop.discounts) == [code]
        made = shop.discounts[code]["input"]
        assert made["context"] == {"customers": {"add": [f"gid://shopify/Customer/{CUSTOMER}"]}}
        assert (made["usageLimit"], made["appliesOncePerCustomer"]) == (1, True)
        assert msg.subject == str(CUSTOMER) and msg.data.variables["reward_code"] == code

        # The customer spends it at checkout; Shopify's webhook names the code.
        order = json.loads(SHOPIFY_ORDER.read_text())
        now = datetime.now(UTC).isoformat()
        order |= {"id": 4401, "name": "#4401", "created_at": now, "processed_at": now}
        order["customer"] = dict(order["customer"], id=CUSTOMER)
        order["discount_codes"] = [{"code": code.lower(), "amount": "5.00", "type": "fixed_amount"}]
        await post_order(apps, tenant_id, secret, order)
        [used] = await apps.tap.wait_for(of(tenant_id, "discount.used"), timeout=120)
        assert (used.data.code, used.data.order_id) == (code, "shopify:4401")
        assert used.data.reference == r.json()["redemption_id"]
