"""Real orders, right results: refunds and past orders across ingest, loyalty and
journeys, each service's app running in this process on the real PostgreSQL and broker
(its relay, consumers and workers), driven through ingest's signed webhooks and admin
API, judged through the other services' APIs and tables.

* A WooCommerce order updated three times with a growing ``refunds[]``: one refund
  event per refund id, points clawed back to the net total, the journey exits on the
  refund that completes the total and not before.
* A history import of 500 orders from a fake Shopify GraphQL API (cursor pages, one
  THROTTLED answer): the order books and the metrics have them; no journey, no message.
* A live webhook for a two-year-old order: recorded and counted, no journey or survey,
  and the journey's decision record says why.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from afterglow.devstack.pytest_plugin import serve_app
from afterglow.devstack.stack import Stack
from afterglow.events import catalog as c
from afterglow.events.testing import TopicTap, eventually
from afterglow.ingest.app import create_app as create_ingest
from afterglow.ingest.models import Order as IngestOrder
from afterglow.ingest.settings import IngestSettings
from afterglow.journeys.app import create_app as create_journeys
from afterglow.journeys.messaging.models import Message, MessageOrder
from afterglow.journeys.models import CustomerProfile, JourneyInstance
from afterglow.journeys.settings import Settings as JourneySettings
from afterglow.kit.app import Runtime
from afterglow.loyalty.app import create_app as create_loyalty
from afterglow.loyalty.models import Account, LotRow, OrderRow
from afterglow.loyalty.settings import LoyaltySettings
from tests.fakes.fake_shopify_graphql import FakeShopifyGraphQL, running

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]

ADMIN_TOKEN = "refunds-history-admin"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
# What a past order must never cause: anything addressed to the customer.
ASKS = ("afterglow.message.requested.v1", "afterglow.survey.requested.v1")


@dataclass
class Shop:
    """ingest, loyalty and journeys, running; their clients and runtimes."""

    ingest: httpx.AsyncClient
    ingest_rt: Runtime
    loyalty: httpx.AsyncClient
    loyalty_rt: Runtime
    journeys: httpx.AsyncClient
    journeys_rt: Runtime
    orders: TopicTap

    async def tenant(self, tenant_id: str) -> dict[str, str]:
        r = await self.ingest.post(
            "/admin/tenants",
            headers=ADMIN,
            json={
                "tenant_id": tenant_id,
                "name": f"Shop {tenant_id}",
                "platforms": ["woocommerce", "shopify"],
            },
        )
        assert r.status_code == 201, r.text
        return dict(r.json()["secrets"])

    async def woo(self, tenant_id: str, secret: str, payload: dict[str, Any]) -> dict[str, Any]:
        raw = json.dumps(payload).encode()
        signature = base64.b64encode(hmac.new(secret.encode(), raw, hashlib.sha256).digest())
        r = await self.ingest.post(
            f"/webhooks/woocommerce/{tenant_id}",
            content=raw,
            headers={
                "Content-Type": "application/json",
                "X-WC-Webhook-Topic": "order.updated",
                "X-WC-Webhook-Delivery-ID": str(uuid.uuid4().int % 10**6),
                "X-WC-Webhook-Signature": signature.decode(),
            },
        )
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def key(self, runtime: Runtime, tenant_id: str, *scopes: str) -> dict[str, str]:
        async with runtime.sessionmaker.begin() as s:
            key = await runtime.api_keys.create(s, tenant_id, list(scopes))
        return {"Authorization": f"Bearer {key}"}

    async def journey(self, tenant_id: str, customer: str) -> dict[str, Any]:
        headers = await self.key(self.journeys_rt, tenant_id, "journeys:read")
        r = await self.journeys.get(f"/v1/customers/{customer}/journey", headers=headers)
        return dict(r.json()) if r.status_code == 200 else {}

    async def until_journey(
        self, tenant_id: str, customer: str, check: Callable[[dict[str, Any]], bool]
    ) -> dict[str, Any]:
        return await eventually(
            lambda: self.journey(tenant_id, customer), check, timeout=120, interval=0.2
        )

    async def points(self, tenant_id: str, customer: str) -> dict[str, Any]:
        headers = await self.key(self.loyalty_rt, tenant_id, "loyalty:read")
        r = await self.loyalty.get(f"/v1/accounts/{customer}", headers=headers)
        return dict(r.json()) if r.status_code == 200 else {}

    async def lots(self, tenant_id: str, order_id: str) -> dict[str, tuple[int, int]]:
        """An order's loyalty lots: source -> (points earned, points clawed back)."""
        async with self.loyalty_rt.sessionmaker() as s:
            rows = await s.execute(
                select(LotRow.source, LotRow.points, LotRow.clawed).where(
                    LotRow.tenant_id == tenant_id, LotRow.order_id == order_id
                )
            )
            return {r.source: (r.points, r.clawed) for r in rows}

    async def count(self, runtime: Runtime, model: Any, tenant_id: str) -> int:
        async with runtime.sessionmaker() as s:
            return int(
                await s.scalar(
                    select(func.count()).select_from(model).where(model.tenant_id == tenant_id)
                )
                or 0
            )

    async def asks(self, runtime: Runtime, tenant_id: str) -> list[str]:
        """Messages and surveys a service put in its outbox for this tenant: written in
        the same transaction as the state that caused them, so once that state is there,
        this is final (no waiting for something not to happen)."""
        t = runtime.tables.outbox
        async with runtime.sessionmaker() as s:
            rows = await s.execute(
                select(t.c.event_type).where(
                    t.c.key.startswith(f"{tenant_id}:"), t.c.event_type.in_(ASKS)
                )
            )
            return [r[0] for r in rows]

    async def order_events(
        self, tenant_id: str, type_: type[c.EventData], count: int = 1
    ) -> list[Any]:
        """At least ``count`` of this tenant's order events of one type, all seen so far."""
        found = await self.orders.wait_for(
            lambda e: e.tenantid == tenant_id and isinstance(e.data, type_),
            count=count,
            timeout=60,
        )
        return [e.data for e in found]


# Module scope: the apps keep consuming in their services' groups while they run.
@pytest.fixture(scope="module")
async def shop(stack: Stack) -> AsyncIterator[Shop]:
    ingest = create_ingest(
        IngestSettings(
            ingest_admin_token=ADMIN_TOKEN,
            relay_poll_interval_s=0.1,
            ingest_reconcile_interval_s=3600,
            outbound_allow_private=True,  # the fake Shopify listens on 127.0.0.1
            log_json=False,
            log_level="WARNING",
        )
    )
    loyalty = create_loyalty(
        LoyaltySettings(
            relay_poll_interval_s=0.1,
            consumer_retry_attempts=2,
            consumer_retry_base_delay_s=0.05,
            loyalty_worker_interval_s=0.2,
            log_json=False,
        )
    )
    journeys = create_journeys(
        JourneySettings(
            relay_poll_interval_s=0.1,
            consumer_retry_attempts=3,
            consumer_retry_base_delay_s=0.05,
            journeys_timer_poll_interval_s=0.2,
            log_json=False,
        )
    )
    async with (
        TopicTap(stack.kafka_bootstrap_servers, "afterglow.orders") as orders,
        serve_app(ingest) as ic,
        serve_app(loyalty) as lc,
        serve_app(journeys) as jc,
    ):
        for client in (ic, lc, jc):
            await eventually(
                lambda client=client: client.get("/readyz"),
                lambda r: r.status_code == 200,
                timeout=120,
            )
        yield Shop(
            ic,
            ingest.state.runtime,
            lc,
            loyalty.state.runtime,
            jc,
            journeys.state.runtime,
            orders,
        )


def woo_order(
    order_id: int, customer_id: int, placed: datetime, modified: datetime, refunds: list[Any]
) -> dict[str, Any]:
    def gmt(t: datetime) -> str:
        return t.astimezone(UTC).replace(tzinfo=None).isoformat(timespec="seconds")

    return {
        "id": order_id,
        "number": str(order_id),
        "status": "completed",
        "currency": "USD",
        "date_created_gmt": gmt(placed),
        "date_modified_gmt": gmt(modified),
        "date_completed_gmt": gmt(placed + timedelta(hours=2)),
        "total": "39.00",
        "customer_id": customer_id,
        "billing": {"first_name": "Ada", "email": f"ada{customer_id}@example.com"},
        "shipping": {"country": "US"},
        "line_items": [{"name": "Mug", "product_id": 93, "quantity": 1, "subtotal": "39.00"}],
        "refunds": [{"id": rid, "reason": "", "total": total} for rid, total in refunds],
    }


class TestWooCommercePartialRefunds:
    async def test_each_refund_once_points_to_the_net_and_exit_on_the_full_one(
        self, shop: Shop, tenant_id: str
    ) -> None:
        secrets = await shop.tenant(tenant_id)
        oid, cid = 4100 + uuid.uuid4().int % 1000, 7000 + uuid.uuid4().int % 1000
        customer, order_id = str(cid), f"woocommerce:{oid}"
        placed = datetime.now(UTC) - timedelta(hours=3)
        r1, r2, r3 = (9001, "-10.00"), (9002, "-9.00"), (9003, "-20.00")

        def update(minutes: int, *refunds: tuple[int, str]) -> dict[str, Any]:
            modified = placed + timedelta(hours=2, minutes=minutes)
            return woo_order(oid, cid, placed, modified, list(refunds))

        # Completed, then refunded 10.00, then 9.00 more (19.00 of 39.00): partial.
        await shop.woo(tenant_id, secrets["woocommerce"], update(0))
        await shop.woo(tenant_id, secrets["woocommerce"], update(1, r1))
        second = update(2, r1, r2)
        await shop.woo(tenant_id, secrets["woocommerce"], second)
        # WooCommerce retries with a new delivery id, and re-sends the order after an
        # unrelated edit: neither states a refund again.
        assert (await shop.woo(tenant_id, secrets["woocommerce"], second))["status"] == (
            "duplicate"
        )
        await shop.woo(tenant_id, secrets["woocommerce"], update(3, r1, r2))

        # 39.00 earned 195 points; 19.00 refunded takes back floor(195 * 19 / 39) = 95,
        # leaving the 100 that 20.00 net earns. The first-order bonus (100) is clawed
        # back in the same proportion: 48.
        lots = await eventually(
            lambda: shop.lots(tenant_id, order_id),
            lambda lots: lots.get("order") == (195, 95),
            timeout=120,
            interval=0.2,
        )
        assert lots == {"order": (195, 95), "first_order": (100, 48)}
        account = await shop.points(tenant_id, customer)
        assert (account["pending"], account["available"]) == (100 + 52, 0)
        # The journey goes on after partial refunds, saying so in its history.
        journey = await shop.until_journey(
            tenant_id,
            customer,
            lambda j: (
                sum(h["kind"] == "deferred" for i in j.get("instances", []) for h in i["history"])
                == 2
            ),
        )
        (inst,) = journey["instances"]
        assert inst["status"] == "running" and inst["order_id"] == order_id

        # The third refund brings the refunds to the total: a full refund.
        await shop.woo(tenant_id, secrets["woocommerce"], update(4, r1, r2, r3))
        journey = await shop.until_journey(
            tenant_id, customer, lambda j: j["instances"][0]["status"] == "exited"
        )
        assert journey["instances"][0]["exit_reason"] == "refunded"
        lots = await eventually(
            lambda: shop.lots(tenant_id, order_id),
            lambda lots: lots.get("order") == (195, 195),
            timeout=60,
            interval=0.2,
        )
        assert lots == {"order": (195, 195), "first_order": (100, 100)}
        account = await shop.points(tenant_id, customer)
        assert (account["pending"], account["available"]) == (0, 0)

        refunds = await shop.order_events(tenant_id, c.OrderRefunded, count=3)
        assert sorted((r.refund_id, r.amount.amount, r.full) for r in refunds) == [
            ("9001", 1000, False),
            ("9002", 900, False),
            ("9003", 2000, True),
        ]
        async with shop.ingest_rt.sessionmaker() as s:
            book = await s.get(IngestOrder, (tenant_id, order_id))
        assert book is not None and book.refunded_amount == 3900


def graphql_orders(count: int, customers: int, start: datetime) -> list[dict[str, Any]]:
    """``count`` past orders of ``customers`` customers, half a day apart, all
    fulfilled; every tenth one partly refunded. Each customer spends 600 to 900 within
    the year, enough to move loyalty's spend tier (silver at 500), which must happen
    silently."""
    out = []
    for n in range(count):
        created = start + timedelta(hours=12 * n)
        cust = 500_000 + n % customers
        amount = f"{60 + n % 30}.00"

        def money(value: str) -> dict[str, Any]:
            return {"shopMoney": {"amount": value, "currencyCode": "USD"}}

        out.append(
            {
                "id": f"gid://shopify/Order/{900_000 + n}",
                "legacyResourceId": str(900_000 + n),
                "name": f"#{1000 + n}",
                "createdAt": created.isoformat().replace("+00:00", "Z"),
                "processedAt": created.isoformat().replace("+00:00", "Z"),
                "updatedAt": (created + timedelta(days=3)).isoformat().replace("+00:00", "Z"),
                "cancelledAt": None,
                "cancelReason": None,
                "email": f"buyer{cust}@example.com",
                "phone": None,
                "customerLocale": "en",
                "displayFulfillmentStatus": "FULFILLED",
                "discountCodes": [],
                "totalPriceSet": money(amount),
                "subtotalPriceSet": money(amount),
                "customer": {
                    "id": f"gid://shopify/Customer/{cust}",
                    "legacyResourceId": str(cust),
                    "email": f"buyer{cust}@example.com",
                    "phone": None,
                    "firstName": "Buyer",
                    "emailMarketingConsent": {"marketingState": "SUBSCRIBED"},
                },
                "shippingAddress": {"address1": "1 Main St", "city": "Ottawa", "zip": "K1A"},
                "lineItems": {
                    "nodes": [
                        {
                            "sku": "MUG",
                            "title": "Mug",
                            "quantity": 1,
                            "originalUnitPriceSet": money(amount),
                            "product": {"legacyResourceId": "632910392"},
                        }
                    ]
                },
                "fulfillments": [
                    {"createdAt": (created + timedelta(days=1)).isoformat(), "trackingInfo": []}
                ],
                "refunds": [
                    {
                        "legacyResourceId": str(800_000 + n),
                        "createdAt": (created + timedelta(days=3)).isoformat(),
                        "totalRefundedSet": money("5.00"),
                    }
                ]
                if n % 10 == 0
                else [],
            }
        )
    return out


class TestHistoryImport:
    async def test_500_past_orders_fill_the_books_and_start_nothing(
        self, shop: Shop, tenant_id: str
    ) -> None:
        await shop.tenant(tenant_id)
        start = (datetime.now(UTC) - timedelta(days=300)).replace(microsecond=0)
        fake = FakeShopifyGraphQL(token=f"shpat_{uuid.uuid4().hex}")
        # 20 orders from before the import's start date, which it must leave out.
        fake.orders = graphql_orders(520, 50, start - timedelta(days=10))
        with running(fake):
            r = await shop.ingest.put(
                f"/admin/tenants/{tenant_id}/connections/shopify",
                headers=ADMIN,
                json={"api_base_url": fake.url, "access_token": fake.token},
            )
            assert r.status_code == 200, r.text
            r = await shop.ingest.post(
                f"/admin/tenants/{tenant_id}/import-history/shopify",
                headers=ADMIN,
                json={"since": start.isoformat(), "earn_points": False},
            )
        assert r.status_code == 200, r.text
        result = r.json()
        assert result["error"] is None, result
        assert (result["orders"], result["pages"], result["failed"]) == (500, 10, 0)
        # Cursor pages in order, the throttled page asked again after the wait.
        assert fake.throttled == 1 and result["throttled_waits"] >= 1
        assert fake.requests == 11 and fake.rejected == 0
        assert set(fake.operations) == {"HistoryOrders"}
        assert fake.cursors[0] is None and len(set(fake.cursors)) == 10

        # Ingest's order book has every order.
        assert await shop.count(shop.ingest_rt, IngestOrder, tenant_id) == 500

        # Journeys: every order counted in its customer's profile and in messaging's
        # order book; 50 customers, 10 orders each.
        async def journeys_orders() -> int:
            async with shop.journeys_rt.sessionmaker() as s:
                total = await s.scalar(
                    select(func.coalesce(func.sum(CustomerProfile.orders_count), 0)).where(
                        CustomerProfile.tenant_id == tenant_id
                    )
                )
            return int(total or 0)

        await eventually(journeys_orders, lambda n: n == 500, timeout=240, interval=0.5)
        await eventually(
            lambda: shop.count(shop.journeys_rt, MessageOrder, tenant_id),
            lambda n: n == 500,
            timeout=120,
            interval=0.5,
        )
        profile = (await shop.journey(tenant_id, "500007"))["profile"]
        assert profile["orders_count"] == 10 and profile["total_spent"]["currency"] == "USD"
        # ... and not one journey, message or survey.
        assert await shop.count(shop.journeys_rt, JourneyInstance, tenant_id) == 0
        assert await shop.asks(shop.journeys_rt, tenant_id) == []

        # Loyalty: the orders count (spend, tiers) but earn nothing (earn_points false).
        await eventually(
            lambda: shop.count(shop.loyalty_rt, OrderRow, tenant_id),
            lambda n: n == 500,
            timeout=240,
            interval=0.5,
        )
        async with shop.loyalty_rt.sessionmaker() as s:
            points = await s.scalar(
                select(func.coalesce(func.sum(Account.available + Account.pending), 0)).where(
                    Account.tenant_id == tenant_id
                )
            )
            tiers = (
                await s.execute(
                    select(Account.tier, func.count())
                    .where(Account.tenant_id == tenant_id)
                    .group_by(Account.tier)
                )
            ).all()
        # Past spend moved everyone up a tier: recorded, announced to no one.
        assert (dict(tiers), points) == ({"silver": 50}, 0)
        assert await shop.count(shop.loyalty_rt, LotRow, tenant_id) == 0
        assert await shop.asks(shop.loyalty_rt, tenant_id) == []
        assert await shop.count(shop.journeys_rt, Message, tenant_id) == 0

        # Every event says it is history, and why.
        placed = await shop.order_events(tenant_id, c.OrderPlaced, count=500)
        assert len(placed) == 500 and all(
            e.historical and e.origin == "import" and not e.earn_points for e in placed
        )


class TestLateLiveOrder:
    async def test_a_two_year_old_order_is_recorded_without_a_survey_and_says_why(
        self, shop: Shop, tenant_id: str
    ) -> None:
        secrets = await shop.tenant(tenant_id)
        oid, cid = 6100 + uuid.uuid4().int % 1000, 8000 + uuid.uuid4().int % 1000
        customer = str(cid)
        placed = datetime.now(UTC) - timedelta(days=730)
        order = woo_order(oid, cid, placed, placed + timedelta(days=1), [])
        await shop.woo(tenant_id, secrets["woocommerce"], order)

        journey = await shop.until_journey(tenant_id, customer, lambda j: bool(j.get("instances")))
        (inst,) = journey["instances"]
        assert inst["status"] == "skipped" and inst["order_id"] == f"woocommerce:{oid}"
        assert journey["current"] is None
        (decision,) = inst["history"]
        assert decision["kind"] == "skip"
        assert "730 days before it arrived" in decision["reason"]
        assert "limit is 30 days" in decision["reason"]
        # Recorded and counted.
        assert journey["profile"]["orders_count"] == 1
        assert journey["profile"]["total_spent"]["amount"] == 3900
        assert await shop.asks(shop.journeys_rt, tenant_id) == []

        # Loyalty records the purchase and its points, without a first-order bonus.
        account = await eventually(
            lambda: shop.points(tenant_id, customer),
            lambda a: a.get("available", 0) + a.get("pending", 0) > 0,
            timeout=120,
            interval=0.2,
        )
        assert account["available"] + account["pending"] == 195
        async with shop.loyalty_rt.sessionmaker() as s:
            lots = (
                await s.execute(
                    select(LotRow.source, LotRow.state, LotRow.expires_at).where(
                        LotRow.tenant_id == tenant_id
                    )
                )
            ).all()
        # One lot, no first-order bonus; its return window ended two years ago, so it is
        # spendable now, and its 12 months of life start now (not two years ago, which
        # would have expired it in the second it was credited).
        [(source, state, expires_at)] = lots
        assert (source, state) == ("order", "available")
        assert expires_at > datetime.now(UTC) + timedelta(days=360)
        assert await shop.asks(shop.loyalty_rt, tenant_id) == []

        (event,) = await shop.order_events(tenant_id, c.OrderPlaced)
        assert event.historical and event.origin == "late"
