"""One order, one answer to "is it the customer's first?", across services.

Signed Shopify orders/create webhooks go through orders-ingest's normaliser and intake
(the order book sets ``customer_orders_count``); the order.placed each produces on the
broker is consumed by loyalty (its first-order bonus) and by the journey orchestrator
(its onboarding message: welcome for a first order, thank-you for a repeat one), each
the real app on the real PostgreSQL and broker. For a platform count of 0 (Shopify's
own fixture), 1, 5 and absent, the two must agree.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from afterglow.devstack.pytest_plugin import serve_app
from afterglow.devstack.stack import Stack
from afterglow.events.testing import TopicTap, eventually
from afterglow.ingest.app import create_app as ingest_app
from afterglow.ingest.settings import IngestSettings
from afterglow.journeys.app import create_app as journeys_app
from afterglow.journeys.settings import Settings as JourneySettings
from afterglow.loyalty.app import create_app as loyalty_app
from afterglow.loyalty.settings import LoyaltySettings

ADMIN = "admin-token-first-order"
SHOPIFY_ORDER = (
    Path(__file__).parents[2] / "services/orders-ingest/tests/fixtures/shopify_order.json"
)
ORDER_POINTS = 2_015  # 403.00 USD at 5 points per USD
FIRST_ORDER_BONUS = 100

pytestmark = pytest.mark.timeout(300)


@dataclass
class Apps:
    ingest: httpx.AsyncClient
    loyalty: httpx.AsyncClient
    journeys: httpx.AsyncClient
    loyalty_runtime: Any
    messages: TopicTap


# Module scope: the apps consume in their services' groups; they stop with the module.
@pytest.fixture(scope="module")
async def apps(stack: Stack) -> AsyncIterator[Apps]:
    ingest = ingest_app(
        IngestSettings(
            database_url=stack.database_url,
            kafka_bootstrap_servers=stack.kafka_bootstrap_servers,
            kafka_enable_idempotence=stack.kafka_enable_idempotence,
            ingest_admin_token=ADMIN,
            relay_poll_interval_s=0.1,
            ingest_reconcile_interval_s=3600,
            log_json=False,
            log_level="WARNING",
        )
    )
    loyalty = loyalty_app(
        LoyaltySettings(
            relay_poll_interval_s=0.1,
            consumer_retry_attempts=2,
            consumer_retry_base_delay_s=0.05,
            log_json=False,
        )
    )
    journeys = journeys_app(
        JourneySettings(
            relay_poll_interval_s=0.1,
            consumer_retry_attempts=2,
            consumer_retry_base_delay_s=0.05,
            log_json=False,
        )
    )
    async with (
        TopicTap(stack.kafka_bootstrap_servers, "afterglow.messages") as messages,
        serve_app(ingest) as i,
        serve_app(loyalty) as lo,
        serve_app(journeys) as j,
    ):
        yield Apps(i, lo, j, loyalty.state.runtime, messages)


async def shopify_tenant(apps: Apps, tenant: str) -> str:
    r = await apps.ingest.post(
        "/admin/tenants",
        headers={"Authorization": f"Bearer {ADMIN}"},
        json={
            "tenant_id": tenant,
            "name": tenant,
            "shopify_shop_domain": f"{tenant}.myshopify.com",
            "platforms": ["shopify"],
        },
    )
    assert r.status_code == 201, r.text
    return str(r.json()["secrets"]["shopify"])


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
    # 200 means stored (ingest answers before it normalises; its worker then emits the
    # order.placed the services below are waited for).
    assert r.status_code == 200 and r.json()["status"] in ("received", "processed"), r.text


def order_of(customer_id: int, order_id: int, orders_count: int | None) -> dict[str, Any]:
    order = json.loads(SHOPIFY_ORDER.read_text())
    # Placed now: an order older than the tenant's late-order limit (30 days at
    # arrival) is history and starts no journey, which is not what this test is about.
    now = datetime.now(UTC).isoformat()
    order |= {"id": order_id, "name": f"#{order_id}", "created_at": now, "processed_at": now}
    order["customer"] = dict(order["customer"], id=customer_id)
    if orders_count is None:
        order["customer"].pop("orders_count", None)
    else:
        order["customer"]["orders_count"] = orders_count
    return order


async def loyalty_pending(apps: Apps, tenant: str, customer: str, done: Any) -> int:
    """The customer's pending points once ``done(points)`` holds."""
    async with apps.loyalty_runtime.sessionmaker.begin() as s:
        key = await apps.loyalty_runtime.api_keys.create(s, tenant, ["loyalty:read"])

    async def pending() -> int | None:
        r = await apps.loyalty.get(
            f"/v1/accounts/{customer}", headers={"Authorization": f"Bearer {key}"}
        )
        return r.json()["pending"] if r.status_code == 200 else None

    return int(await eventually(pending, lambda p: p is not None and done(p), timeout=120))


async def loyalty_bonus(apps: Apps, tenant: str, customer: str) -> bool:
    """Whether loyalty paid the first-order bonus, once the order's points are in."""
    points = await loyalty_pending(apps, tenant, customer, lambda p: p >= ORDER_POINTS)
    assert points in (ORDER_POINTS, ORDER_POINTS + FIRST_ORDER_BONUS)
    return points == ORDER_POINTS + FIRST_ORDER_BONUS


async def journey_welcomed(apps: Apps, tenant: str, customer: str, order_id: str) -> bool:
    """Whether the journey's onboarding for this order was a welcome (or a thank-you)."""
    [msg] = await apps.messages.wait_for(
        lambda e: (
            e.tenantid == tenant
            and e.subject == customer
            and e.type == "afterglow.message.requested.v1"
            and e.data.kind in ("welcome", "thank_you")
            and e.data.order_id == order_id
        ),
        timeout=120,
    )
    return bool(msg.data.kind == "welcome")


class TestFirstOrderAgreement:
    @pytest.mark.parametrize(
        ("platform_count", "first"), [(0, True), (1, True), (5, False), (None, True)]
    )
    async def test_loyalty_and_journeys_agree_on_a_new_customers_order(
        self, apps: Apps, tenant_id, platform_count, first
    ):
        secret = await shopify_tenant(apps, tenant_id)
        customer_id = 70_000 + (platform_count if platform_count is not None else 9)
        await post_order(apps, tenant_id, secret, order_of(customer_id, 81_001, platform_count))
        customer = str(customer_id)
        bonus = await loyalty_bonus(apps, tenant_id, customer)
        welcomed = await journey_welcomed(apps, tenant_id, customer, "shopify:81001")
        assert (bonus, welcomed) == (first, first)

    async def test_a_second_order_with_a_stale_count_is_a_repeat_for_both(
        self, apps: Apps, tenant_id
    ):
        """Shopify's count says 0 on both orders: the order book knows better."""
        secret = await shopify_tenant(apps, tenant_id)
        await post_order(apps, tenant_id, secret, order_of(4_242, 82_001, 0))
        assert await journey_welcomed(apps, tenant_id, "4242", "shopify:82001")
        assert await loyalty_bonus(apps, tenant_id, "4242")
        await post_order(apps, tenant_id, secret, order_of(4_242, 82_002, 0))
        assert not await journey_welcomed(apps, tenant_id, "4242", "shopify:82002")
        # Loyalty: the second order's points, and no second bonus.
        total = 2 * ORDER_POINTS + FIRST_ORDER_BONUS
        assert await loyalty_pending(apps, tenant_id, "4242", lambda p: p >= total) == total
