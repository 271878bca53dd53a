"""Reward codes in the tenant's shop, against local fakes of Shopify's Admin GraphQL,
WooCommerce's and BigCommerce's coupon APIs (shop_fakes), on the real stack: the
request comes by event, as loyalty and referrals send it, and the answers go out as
events."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from afterglow.devstack.stack import Stack
from afterglow.events import CloudEvent, KafkaConfig, build_producer, to_record
from afterglow.events.catalog import (
    DiscountRequested,
    DiscountRevokeRequested,
    MessageRequested,
    Money,
    OrderPlaced,
)
from afterglow.events.testing import TopicTap, eventually
from tests.fakes.shop_fakes import FakeShops, running_shops

from ..ingest_support import api_key, connect, register

CUSTOMER = "7390123"  # a Shopify customer id: ingest's subject for that customer
LOYALTY = "afterglow/loyalty"


@pytest.fixture(scope="module")
def shops() -> Iterator[FakeShops]:
    with running_shops() as fake:
        yield fake


@pytest.fixture(scope="module")
async def producer(stack: Stack) -> AsyncIterator[Any]:
    p = build_producer(
        KafkaConfig(
            bootstrap_servers=stack.kafka_bootstrap_servers,
            enable_idempotence=stack.kafka_enable_idempotence,
        )
    )
    await p.start()
    yield p
    await p.stop()


@pytest.fixture
async def taps(stack: Stack) -> AsyncIterator[TopicTap]:
    async with TopicTap(
        stack.kafka_bootstrap_servers, "afterglow.discounts", "afterglow.messages"
    ) as t:
        yield t


async def publish(producer: Any, data: Any, tenant: str, subject: str, source: str) -> None:
    rec = to_record(CloudEvent.new(data, tenant_id=tenant, subject=subject, source=source))
    await producer.send_and_wait(rec.topic, rec.value, key=rec.key, headers=rec.headers)


def request(code: str, **kw: Any) -> DiscountRequested:
    now = datetime.now(UTC)
    fields: dict[str, Any] = {
        "code": code,
        "title": "Loyalty reward: $5 off",
        "value_kind": "fixed_amount",
        "amount": Money(amount=500, currency="USD"),
        "starts_at": now - timedelta(minutes=1),
        "ends_at": now + timedelta(days=90),
        "reference": f"rd-{code}",
        "announce": MessageRequested(
            request_id=f"loyalty:reward_code:rd-{code}",
            kind="reward_code",
            category="transactional",
            priority="high",
            variables={"reward_code": code, "reward": "$5 off"},
        ),
    }
    return DiscountRequested(**(fields | kw))


def of(tenant: str, kind: str) -> Any:
    return lambda e: e.tenantid == tenant and e.type == f"afterglow.{kind}.v1"


async def actions(client: Any, tenant: str) -> list[dict[str, Any]]:
    key = await api_key(client, tenant, "orders:read")
    r = await client.get("/v1/platform-actions", headers={"Authorization": f"Bearer {key}"})
    assert r.status_code == 200, r.text
    return list(r.json()["items"])


async def shopify_tenant(client: Any, shops: FakeShops, tenant: str) -> Any:
    await register(client, tenant)
    await connect(client, tenant, "shopify", shops.url, f"shpat_{tenant}")
    return shops.shop(f"shpat_{tenant}")


async def created_in_shopify(
    client: Any, shops: FakeShops, producer: Any, taps: TopicTap, tenant: str, code: str
) -> Any:
    shop = await shopify_tenant(client, shops, tenant)
    await publish(producer, request(code), tenant, CUSTOMER, LOYALTY)
    await taps.wait_for(of(tenant, "discount.created"), timeout=60)
    return shop


class TestShopifyDiscount:
    async def test_one_discount_for_that_customer_exists_before_the_code_is_announced(
        self, client, shops, producer, taps, tenant_id
    ):
        shop = await shopify_tenant(client, shops, tenant_id)
        shop.gate.clear()  # the shop holds every call until the test opens it
        code = "AG-7QK2M9XW4P3R"
        await publish(producer, request(code), tenant_id, CUSTOMER, LOYALTY)

        async def claimed() -> list[dict[str, Any]]:
            return await actions(client, tenant_id)

        # The worker has made its call and waits for the shop...
        await eventually(claimed, lambda a: bool(a) and a[0]["attempts"] >= 1, timeout=60)
        # ... and nobody was told of the code meanwhile.
        told = [e.type for e in await taps.events(settle=0.5) if e.tenantid == tenant_id]
        assert told == ["afterglow.discount.requested.v1"]
        shop.gate.set()

        [msg] = await taps.wait_for(of(tenant_id, "message.requested"), timeout=60)
        # When the announcement exists, the discount already does: exactly one.
        assert list(shop.discounts) == [code]
        made = shop.discounts[code]["input"]
        assert made["code"] == code
        assert made["context"] == {"customers": {"add": [f"gid://shopify/Customer/{CUSTOMER}"]}}
        assert made["appliesOncePerCustomer"] is True and made["usageLimit"] == 1
        assert made["customerGets"]["value"] == {
            "discountAmount": {"amount": "5.00", "appliesOnEachItem": False}
        }
        assert made["startsAt"] and made["endsAt"]
        assert (msg.subject, msg.source) == (CUSTOMER, LOYALTY)
        assert msg.data.kind == "reward_code" and msg.data.variables["reward_code"] == code
        [created] = await taps.wait_for(of(tenant_id, "discount.created"))
        assert created.data.platform_discount_id == shop.discounts[code]["id"]
        [row] = await actions(client, tenant_id)
        assert (row["status"], row["platform"], row["last_error"]) == ("active", "shopify", None)
        # The customer's data export lists the code created for them.
        key = await api_key(client, tenant_id, "customers:export")
        r = await client.get(
            f"/v1/customers/{CUSTOMER}/export", headers={"Authorization": f"Bearer {key}"}
        )
        assert [d["code"] for d in r.json()["records"]["shop_discounts"]] == [code]

    async def test_a_lost_answer_is_retried_without_creating_a_second_discount(
        self, client, shops, producer, taps, tenant_id
    ):
        shop = await shopify_tenant(client, shops, tenant_id)
        # The shop creates the discount, then answers after the worker stopped waiting.
        shop.slow_creates, shop.slow_s = 1, 5.0
        code = "AG-LOSTANSWER01"
        await publish(producer, request(code), tenant_id, CUSTOMER, LOYALTY)
        await taps.wait_for(of(tenant_id, "discount.created"), timeout=60)
        assert list(shop.discounts) == [code]
        # The retry looked the code up and adopted it, instead of creating it again.
        assert shop.calls.count("discountCodeBasicCreate") == 1
        assert "codeDiscountNodeByCode" in shop.calls
        msgs = await taps.wait_for(of(tenant_id, "message.requested"))
        assert len(msgs) == 1
        [row] = await actions(client, tenant_id)
        assert row["status"] == "active"

    async def test_a_repeated_request_creates_nothing_more(
        self, client, shops, producer, taps, tenant_id
    ):
        code = "AG-REPEATED0001"
        shop = await created_in_shopify(client, shops, producer, taps, tenant_id, code)
        await publish(producer, request(code.lower()), tenant_id, CUSTOMER, LOYALTY)
        # Same key, same partition: a later event of this customer is applied after it.
        await publish(
            producer,
            DiscountRevokeRequested(code=code, reason="manual", requested_at=datetime.now(UTC)),
            tenant_id,
            CUSTOMER,
            LOYALTY,
        )
        await taps.wait_for(of(tenant_id, "discount.revoked"), timeout=60)
        assert shop.calls.count("discountCodeBasicCreate") == 1

    async def test_a_throttled_answer_waits_for_the_bucket_then_succeeds(
        self, client, shops, producer, taps, tenant_id
    ):
        shop = await shopify_tenant(client, shops, tenant_id)
        shop.available, shop.restore_rate = 0.0, 20.0  # an empty bucket: THROTTLED first
        code = "AG-THROTTLED001"
        await publish(producer, request(code), tenant_id, CUSTOMER, LOYALTY)
        await taps.wait_for(of(tenant_id, "discount.created"), timeout=60)
        assert shop.throttled >= 1
        assert list(shop.discounts) == [code]

    async def test_an_order_using_the_code_marks_it_used(
        self, client, shops, producer, taps, tenant_id
    ):
        code = "AG-SPENTATCHECK"
        await created_in_shopify(client, shops, producer, taps, tenant_id, code)
        order = OrderPlaced(
            order_id="shopify:5501",
            platform="shopify",
            placed_at=datetime.now(UTC),
            customer={"platform_customer_id": CUSTOMER},
            total=Money(amount=4500, currency="USD"),
            discount_codes=["OTHER10", code.lower()],
        )
        await publish(producer, order, tenant_id, CUSTOMER, "afterglow/orders-ingest")
        [used] = await taps.wait_for(of(tenant_id, "discount.used"), timeout=60)
        assert (used.data.code, used.data.order_id, used.data.reference) == (
            code,
            "shopify:5501",
            f"rd-{code}",
        )
        [row] = await actions(client, tenant_id)
        assert (row["status"], row["used_order_id"]) == ("used", "shopify:5501")

    async def test_a_clawback_disables_it_in_the_shop(
        self, client, shops, producer, taps, tenant_id
    ):
        code = "AG-CLAWEDBACK01"
        shop = await created_in_shopify(client, shops, producer, taps, tenant_id, code)
        revoke = DiscountRevokeRequested(
            code=code, reason="clawback", requested_at=datetime.now(UTC)
        )
        await publish(producer, revoke, tenant_id, CUSTOMER, "afterglow/referrals")
        [revoked] = await taps.wait_for(of(tenant_id, "discount.revoked"), timeout=60)
        assert revoked.data.reason == "clawback"
        assert shop.discounts[code]["status"] == "EXPIRED"
        assert "discountCodeDeactivate" in shop.calls
        [row] = await actions(client, tenant_id)
        assert row["status"] == "disabled"

    async def test_an_expired_code_is_disabled_in_the_shop(
        self, client, shops, producer, taps, tenant_id
    ):
        shop = await shopify_tenant(client, shops, tenant_id)
        code = "AG-EXPIRESSOON1"
        soon = request(code, ends_at=datetime.now(UTC) + timedelta(seconds=2))
        await publish(producer, soon, tenant_id, CUSTOMER, LOYALTY)
        [revoked] = await taps.wait_for(of(tenant_id, "discount.revoked"), timeout=60)
        assert revoked.data.reason == "expired"
        assert shop.discounts[code]["status"] == "EXPIRED"

    async def test_without_a_shop_connection_it_fails_and_nobody_is_told(
        self, client, producer, taps, tenant_id
    ):
        await register(client, tenant_id)
        await publish(producer, request("AG-NOCONNECTION"), tenant_id, CUSTOMER, LOYALTY)
        [failed] = await taps.wait_for(of(tenant_id, "discount.failed"), timeout=60)
        assert "no shop connection" in failed.data.reason
        mine = [e for e in await taps.events(settle=0.5) if e.tenantid == tenant_id]
        assert "afterglow.message.requested.v1" not in [e.type for e in mine]
        [row] = await actions(client, tenant_id)
        assert row["status"] == "failed" and "no shop connection" in row["last_error"]

    async def test_a_guest_cannot_get_a_code_limited_to_them(
        self, client, shops, producer, taps, tenant_id
    ):
        await shopify_tenant(client, shops, tenant_id)
        await publish(producer, request("AG-GUESTEMAIL01"), tenant_id, "email:ab12", LOYALTY)
        [failed] = await taps.wait_for(of(tenant_id, "discount.failed"), timeout=60)
        assert "cannot be limited" in failed.data.reason


class TestOtherPlatforms:
    async def test_woocommerce_coupon_is_limited_to_the_customers_email(
        self, client, shops, producer, taps, tenant_id
    ):
        await register(client, tenant_id)
        key, secret = f"ck_{tenant_id}", "cs_secret"
        shops.woo[key] = {"secret": secret, "customers": {"42": {"email": "ada@example.com"}},
                          "coupons": {}}  # fmt: skip
        await connect(client, tenant_id, "woocommerce", shops.url, f"{key}:{secret}")
        await publish(producer, request("AG-WOOCOUPON001"), tenant_id, "42", LOYALTY)
        await taps.wait_for(of(tenant_id, "message.requested"), timeout=60)
        [coupon] = shops.woo[key]["coupons"].values()
        assert coupon["code"] == "ag-woocoupon001"
        assert coupon["email_restrictions"] == ["ada@example.com"]
        assert (coupon["usage_limit"], coupon["usage_limit_per_user"]) == (1, 1)
        assert (coupon["discount_type"], coupon["amount"]) == ("fixed_cart", "5.00")

        revoke = DiscountRevokeRequested(
            code="AG-WOOCOUPON001", reason="clawback", requested_at=datetime.now(UTC)
        )
        await publish(producer, revoke, tenant_id, "42", LOYALTY)
        await taps.wait_for(of(tenant_id, "discount.revoked"), timeout=60)
        assert shops.woo[key]["coupons"] == {}

    async def test_bigcommerce_coupon_is_single_use(self, client, shops, producer, taps, tenant_id):
        await register(client, tenant_id)
        token = f"bc_{tenant_id}"
        shops.bigcommerce[token] = {}
        await connect(client, tenant_id, "bigcommerce", f"{shops.url}/stores/abc123", token)
        await publish(
            producer,
            request("AG-BIGCOMMERCE1", value_kind="percentage", amount=None, percent=10),
            tenant_id,
            "17",
            LOYALTY,
        )
        await taps.wait_for(of(tenant_id, "message.requested"), timeout=60)
        [coupon] = shops.bigcommerce[token].values()
        assert (coupon["type"], coupon["amount"], coupon["max_uses"]) == (
            "percentage_discount",
            "10",
            1,
        )
        assert coupon["max_uses_per_customer"] == 1 and coupon["enabled"] is True
