"""The catalog's shared rules: what "first order" means, and reading an amount in a
given currency."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from afterglow.events import catalog as c


def placed(count: int | None, **kw: object) -> c.OrderPlaced:
    return c.OrderPlaced(
        order_id="o1",
        platform="api",
        placed_at=datetime(2026, 1, 1, tzinfo=UTC),
        customer=c.CustomerInfo(),
        total=c.Money(amount=100, currency="PLN"),
        customer_orders_count=count,
        **kw,  # type: ignore[arg-type]
    )


class TestIsFirstOrder:
    @pytest.mark.parametrize(("count", "first"), [(0, True), (1, True), (2, False), (5, False)])
    def test_the_count_decides_when_ingest_set_it(self, count, first):
        assert c.is_first_order(count) is first
        # What the consumer saw itself does not override the order book's count.
        assert c.is_first_order(count, earlier_orders_seen=3) is first
        assert placed(count).is_first_order(earlier_orders_seen=3) is first

    @pytest.mark.parametrize(("earlier", "first"), [(0, True), (1, False), (4, False)])
    def test_without_a_count_the_consumers_own_history_decides(self, earlier, first):
        assert c.is_first_order(None, earlier_orders_seen=earlier) is first
        assert placed(None).is_first_order(earlier_orders_seen=earlier) is first


class TestAmounts:
    def test_an_order_lists_each_currency_once_shop_money_first(self):
        order = placed(
            1,
            shop_total=c.Money(amount=100, currency="PLN"),
            presentment_total=c.Money(amount=23, currency="EUR"),
        )
        assert [(m.currency, m.amount) for m in order.amounts()] == [("PLN", 100), ("EUR", 23)]
        assert c.amount_in("EUR", order.amounts()) == c.Money(amount=23, currency="EUR")
        assert c.amount_in("USD", order.amounts()) is None

    def test_an_order_without_the_new_fields_still_states_its_total(self):
        assert placed(1).amounts() == [c.Money(amount=100, currency="PLN")]

    def test_a_refund_lists_its_amounts(self):
        refund = c.OrderRefunded(
            order_id="o1",
            refund_id="r1",
            refunded_at=datetime(2026, 1, 2, tzinfo=UTC),
            amount=c.Money(amount=50, currency="EUR"),
            shop_amount=c.Money(amount=213, currency="PLN"),
            full=False,
        )
        assert [m.currency for m in refund.amounts()] == ["PLN", "EUR"]
