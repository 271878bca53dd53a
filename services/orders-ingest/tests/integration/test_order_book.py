"""The order book on the real stack: one definition of a customer's order count, set
in the same transaction as order.placed, and money in both of the order's currencies."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest

from afterglow.events import catalog as c
from afterglow.events.testing import TopicTap

from ..ingest_support import api_key, fixture, post_shopify, register


def placed_of(tenant_id: str, order_id: str):  # type: ignore[no-untyped-def]
    return lambda e: (
        e.tenantid == tenant_id
        and e.type == "afterglow.order.placed.v1"
        and e.data.order_id == order_id
    )


def shopify_order(
    order_id: int, customer_id: int, orders_count: int | None = None, **over: Any
) -> dict[str, Any]:
    order = fixture("shopify_order") | {"id": order_id, "name": f"#{order_id}"}
    order["customer"] = dict(order["customer"], id=customer_id)
    if orders_count is None:
        order["customer"].pop("orders_count", None)
    else:
        order["customer"]["orders_count"] = orders_count
    return order | over


def pln_order(order_id: int, customer_id: int) -> dict[str, Any]:
    """A shop in PLN selling to a customer who pays in EUR (Shopify's MoneyBag)."""
    return shopify_order(
        order_id,
        customer_id,
        0,
        currency="PLN",
        presentment_currency="EUR",
        total_price="2119.29",
        subtotal_price="2119.29",
        total_price_set={
            "shop_money": {"amount": "2119.29", "currency_code": "PLN"},
            "presentment_money": {"amount": "497.00", "currency_code": "EUR"},
        },
    )


class TestCustomerOrderCount:
    @pytest.mark.parametrize(("platform_count", "expected"), [(0, 1), (1, 1), (5, 5), (None, 1)])
    async def test_first_order_count_is_the_book_or_the_larger_platform_count(
        self, client, tap: TopicTap, tenant_id, platform_count, expected
    ):
        secrets = await register(client, tenant_id)
        order = shopify_order(9001, 4242, platform_count)
        r = await post_shopify(client, tenant_id, secrets["shopify"], "orders/create", order)
        assert r.status_code == 200, r.text
        [event] = await tap.wait_for(placed_of(tenant_id, "shopify:9001"))
        assert event.data.customer_orders_count == expected
        assert event.data.platform_orders_count == platform_count
        assert event.data.is_first_order() is (expected == 1)

    async def test_a_stale_platform_count_does_not_make_a_second_order_first(
        self, client, tap: TopicTap, tenant_id
    ):
        secrets = await register(client, tenant_id)
        for oid in (9101, 9102):
            # Shopify's fixture sends orders_count 0 even for the customer's second order.
            order = shopify_order(oid, 777, 0)
            r = await post_shopify(client, tenant_id, secrets["shopify"], "orders/create", order)
            assert r.status_code == 200, r.text
        [first] = await tap.wait_for(placed_of(tenant_id, "shopify:9101"))
        [second] = await tap.wait_for(placed_of(tenant_id, "shopify:9102"))
        assert (first.data.customer_orders_count, second.data.customer_orders_count) == (1, 2)
        assert first.data.is_first_order() and not second.data.is_first_order()

    async def test_the_same_order_again_keeps_its_count(self, client, tap, tenant_id, runtime):
        secrets = await register(client, tenant_id)
        order = shopify_order(9201, 888, 0)
        await post_shopify(client, tenant_id, secrets["shopify"], "orders/create", order)
        # orders/paid repeats the placement: no second event, and no second count.
        r = await post_shopify(client, tenant_id, secrets["shopify"], "orders/paid", order)
        assert r.json()["events"] == []
        await post_shopify(
            client, tenant_id, secrets["shopify"], "orders/create", shopify_order(9202, 888, 0)
        )
        [second] = await tap.wait_for(placed_of(tenant_id, "shopify:9202"))
        assert second.data.customer_orders_count == 2

    async def test_a_replayed_order_is_not_counted_again(self, client, tap: TopicTap, tenant_id):
        secrets = await register(client, tenant_id)
        auth = {"Authorization": f"Bearer {await api_key(client, tenant_id, 'orders:write')}"}
        r = await post_shopify(
            client, tenant_id, secrets["shopify"], "orders/create", shopify_order(9251, 889, 0)
        )
        [first] = await tap.wait_for(placed_of(tenant_id, "shopify:9251"))
        replayed = await client.post(
            f"/v1/deliveries/{r.json()['delivery_id']}/replay", headers=auth
        )
        assert replayed.status_code == 200, replayed.text
        [_, again] = await tap.wait_for(placed_of(tenant_id, "shopify:9251"), count=2)
        assert again.id == first.id  # the same event: downstream inboxes drop it
        assert again.data.customer_orders_count == 1
        await post_shopify(
            client, tenant_id, secrets["shopify"], "orders/create", shopify_order(9252, 889, 0)
        )
        [second] = await tap.wait_for(placed_of(tenant_id, "shopify:9252"))
        assert second.data.customer_orders_count == 2

    async def test_concurrent_orders_of_one_customer_each_get_their_own_number(
        self, client, tap: TopicTap, tenant_id
    ):
        """Read-then-count in two READ COMMITTED transactions would call several of
        these the first; the counter's upsert makes them wait and count in turn."""
        secrets = await register(client, tenant_id)
        ids = list(range(9301, 9309))
        responses = await asyncio.gather(
            *(
                post_shopify(
                    client, tenant_id, secrets["shopify"], "orders/create", shopify_order(i, 999, 0)
                )
                for i in ids
            )
        )
        assert all(r.status_code == 200 for r in responses), [r.text for r in responses]
        events = await tap.wait_for(
            lambda e: e.tenantid == tenant_id and e.type == "afterglow.order.placed.v1",
            count=len(ids),
        )
        counts = sorted(e.data.customer_orders_count for e in events)
        assert counts == list(range(1, len(ids) + 1))
        assert sum(e.data.is_first_order() for e in events) == 1

    async def test_customers_are_counted_apart(self, client, tap: TopicTap, tenant_id):
        secrets = await register(client, tenant_id)
        for oid, customer in ((9401, 1), (9402, 2)):
            await post_shopify(
                client,
                tenant_id,
                secrets["shopify"],
                "orders/create",
                shopify_order(oid, customer, None),
            )
        a = (await tap.wait_for(placed_of(tenant_id, "shopify:9401")))[0]
        b = (await tap.wait_for(placed_of(tenant_id, "shopify:9402")))[0]
        assert (a.data.customer_orders_count, b.data.customer_orders_count) == (1, 1)


class TestOrderMoney:
    async def test_shop_and_presentment_money_are_both_carried(
        self, client, tap: TopicTap, tenant_id
    ):
        secrets = await register(client, tenant_id)
        r = await post_shopify(
            client, tenant_id, secrets["shopify"], "orders/create", pln_order(9501, 55)
        )
        assert r.status_code == 200, r.text
        [event] = await tap.wait_for(placed_of(tenant_id, "shopify:9501"))
        d: c.OrderPlaced = event.data
        assert d.total == c.Money(amount=211929, currency="PLN")
        assert d.shop_total == c.Money(amount=211929, currency="PLN")
        assert d.presentment_total == c.Money(amount=49700, currency="EUR")

    async def test_a_refund_in_the_customers_currency_gets_its_shop_amount(
        self, client, tap: TopicTap, tenant_id
    ):
        secrets = await register(client, tenant_id)
        await post_shopify(
            client, tenant_id, secrets["shopify"], "orders/create", pln_order(9601, 56)
        )
        refund = fixture("shopify_refund") | {"order_id": 9601, "id": int(uuid.uuid4().int % 1e9)}
        refund["transactions"] = [
            dict(refund["transactions"][0], order_id=9601, amount="248.50", currency="EUR")
        ]
        r = await post_shopify(client, tenant_id, secrets["shopify"], "refunds/create", refund)
        assert r.status_code == 200, r.text
        [event] = await tap.wait_for(
            lambda e: e.tenantid == tenant_id and e.type == "afterglow.order.refunded.v1"
        )
        d: c.OrderRefunded = event.data
        assert d.amount == c.Money(amount=24850, currency="EUR")
        assert d.presentment_amount == d.amount
        # Half the EUR total is half the PLN total; never 248.50 compared with 2,119.29.
        assert d.shop_amount == c.Money(amount=211929 * 24850 // 49700, currency="PLN")
        assert d.order_total == c.Money(amount=211929, currency="PLN")
        assert d.full is False

    async def test_a_full_refund_in_the_customers_currency_is_full(
        self, client, tap: TopicTap, tenant_id
    ):
        secrets = await register(client, tenant_id)
        await post_shopify(
            client, tenant_id, secrets["shopify"], "orders/create", pln_order(9701, 57)
        )
        refund = fixture("shopify_refund") | {"order_id": 9701}
        refund["transactions"] = [
            dict(refund["transactions"][0], order_id=9701, amount="497.00", currency="EUR")
        ]
        await post_shopify(client, tenant_id, secrets["shopify"], "refunds/create", refund)
        [event] = await tap.wait_for(
            lambda e: e.tenantid == tenant_id and e.type == "afterglow.order.refunded.v1"
        )
        assert event.data.shop_amount == c.Money(amount=211929, currency="PLN")
        assert event.data.full is True
