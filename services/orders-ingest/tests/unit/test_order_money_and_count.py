"""Pure rules of the order book: money in the shop's and the customer's currency, and
the one order count."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path

import pytest

from afterglow.events import catalog as c
from afterglow.ingest import domain
from afterglow.ingest.platforms import bigcommerce as bc
from afterglow.ingest.platforms import shopify, woocommerce

FIXTURES = Path(__file__).parent.parent / "fixtures"


def load(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


def pln_shop_eur_customer() -> dict:
    return load("shopify_order") | {
        "currency": "PLN",
        "presentment_currency": "EUR",
        "total_price": "2119.29",
        "subtotal_price": "2119.29",
        "total_price_set": {
            "shop_money": {"amount": "2119.29", "currency_code": "PLN"},
            "presentment_money": {"amount": "497.00", "currency_code": "EUR"},
        },
    }


def refund(amount: int, currency: str, **kw: object) -> c.OrderRefunded:
    return c.OrderRefunded(
        order_id="shopify:1",
        refund_id="r1",
        refunded_at=datetime(2026, 3, 4, tzinfo=UTC),
        amount=c.Money(amount=amount, currency=currency),
        full=False,
        **kw,  # type: ignore[arg-type]
    )


class TestShopifyMoney:
    def test_a_money_bag_gives_shop_and_presentment_money(self):
        shop, presentment = shopify.shopify_money_set(
            pln_shop_eur_customer()["total_price_set"], "total_price_set"
        )
        assert shop == c.Money(amount=211929, currency="PLN")
        assert presentment == c.Money(amount=49700, currency="EUR")

    def test_an_order_carries_both_currencies(self):
        data, record = shopify.shopify_order_placed(pln_shop_eur_customer())
        assert data.total == data.shop_total == c.Money(amount=211929, currency="PLN")
        assert data.presentment_total == c.Money(amount=49700, currency="EUR")
        assert record.presentment == data.presentment_total

    def test_without_a_money_bag_the_shop_currency_is_the_customers_when_equal(self):
        data, _ = shopify.shopify_order_placed(load("shopify_order"))
        assert data.shop_total == data.presentment_total == data.total

    def test_without_a_money_bag_another_presentment_currency_is_left_unknown(self):
        order = pln_shop_eur_customer()
        del order["total_price_set"]
        data, _ = shopify.shopify_order_placed(order)
        assert data.shop_total == c.Money(amount=211929, currency="PLN")
        assert data.presentment_total is None  # never 2119.29 EUR

    def test_the_platform_count_is_kept_as_the_platforms(self):
        order = load("shopify_order")
        order["customer"]["orders_count"] = 0
        data, _ = shopify.shopify_order_placed(order)
        assert data.platform_orders_count == 0
        assert data.customer_orders_count is None  # set by the intake from the book


class TestOrderCount:
    @pytest.mark.parametrize(
        ("platform", "book", "count"),
        [(0, 1, 1), (1, 1, 1), (5, 1, 5), (None, 1, 1), (0, 3, 3), (2, 4, 4)],
    )
    def test_the_book_or_the_larger_platform_count(self, platform, book, count):
        data, _ = shopify.shopify_order_placed(load("shopify_order"))
        data = data.model_copy(update={"platform_orders_count": platform})
        out = domain.with_order_count(data, book)
        assert (out.customer_orders_count, out.platform_orders_count) == (count, platform)

    def test_a_canonical_senders_count_is_the_platforms(self):
        data, _ = shopify.shopify_order_placed(load("shopify_order"))
        data = data.model_copy(update={"platform_orders_count": None, "customer_orders_count": 7})
        out = domain.with_order_count(data, 2)
        assert (out.customer_orders_count, out.platform_orders_count) == (7, 7)


class TestCompleteRefund:
    def test_a_refund_in_the_shop_currency_compares_with_the_total(self):
        out = domain.complete_refund(refund(211929, "PLN"), c.Money(amount=211929, currency="PLN"))
        assert out.full is True and out.shop_amount == c.Money(amount=211929, currency="PLN")

    def test_a_refund_in_the_presentment_currency_takes_its_share(self):
        out = domain.complete_refund(
            refund(10000, "EUR"),
            c.Money(amount=211929, currency="PLN"),
            c.Money(amount=49700, currency="EUR"),
        )
        assert out.shop_amount == c.Money(amount=211929 * 10000 // 49700, currency="PLN")
        assert out.presentment_amount == c.Money(amount=10000, currency="EUR")
        assert out.full is False

    def test_an_unrelated_currency_is_not_compared(self):
        out = domain.complete_refund(refund(999999, "GBP"), c.Money(amount=100, currency="PLN"))
        assert out.shop_amount is None and out.full is False
        assert out.order_total == c.Money(amount=100, currency="PLN")


class TestStatedCurrencies:
    def test_woocommerce_states_the_orders_currency(self):
        out = woocommerce.normalize_woocommerce("order.created", load("woocommerce_order"))
        data = out.emits[0].data
        assert isinstance(data, c.OrderPlaced)
        assert data.presentment_total == data.total == c.Money(amount=2935, currency="EUR")
        assert data.shop_total is None  # the store's base currency is not in the payload

    def test_bigcommerce_shop_money_only_when_the_store_currency_is_the_orders(self):
        order = load("bigcommerce_order")
        same = bc.normalize_bigcommerce_order(order, order["_products"]).emits[0].data
        assert isinstance(same, c.OrderPlaced)
        assert same.shop_total == same.presentment_total == same.total
        foreign = order | {"currency_code": "PLN", "store_default_currency_code": "USD"}
        other = bc.normalize_bigcommerce_order(foreign, order["_products"]).emits[0].data
        assert isinstance(other, c.OrderPlaced)
        assert other.presentment_total == c.Money(amount=2200, currency="PLN")
        assert other.shop_total is None  # no rate is guessed
