"""ReferralService.orders_placed does not read back the orders it just created: it
builds them (store.created_order) from what it inserted. That row must have every
column the orders table has, or an attribution would read a column that is missing."""

from __future__ import annotations

from datetime import UTC, datetime

from afterglow.events.catalog import CustomerInfo, Money, OrderPlaced
from afterglow.referrals import store
from afterglow.referrals.models import Order


class TestCreatedOrder:
    def test_has_every_column_of_the_orders_table_with_its_default(self):
        data = OrderPlaced(
            order_id="o1",
            platform="api",
            placed_at=datetime(2026, 1, 5, tzinfo=UTC),
            customer=CustomerInfo(email="a@example.com"),
            total=Money(amount=5000, currency="USD"),
        )
        row = store.created_order(store.order_row("t1", "c1", data))
        assert set(vars(row)) == {c.name for c in Order.__table__.columns}
        assert (row.refunded_amount, row.fulfilled_at, row.cancelled_at) == (0, None, None)
        assert (row.customer_id, row.total_amount, row.currency) == ("c1", 5000, "USD")
