"""Order-driven rules on PostgreSQL through the handlers the consumer runs."""

from __future__ import annotations

import uuid
from datetime import timedelta

from sqlalchemy import func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert

from afterglow.events.catalog import (
    ANONYMOUS_SUBJECT_PREFIX,
    Money,
    OrderCancelled,
    OrderDelivered,
    OrderFulfilled,
    OrderRefunded,
)
from afterglow.loyalty.domain import ProgramRules
from afterglow.loyalty.handlers import Handlers
from afterglow.loyalty.models import Account, EntryRow, OrderRow, ProgramRulesRow

from ..loyalty_support import Loyalty


async def set_rules(loyalty: Loyalty, tenant: str, **changes) -> None:
    rules = ProgramRules(**changes).model_dump(mode="json")
    async with loyalty.runtime.sessionmaker.begin() as s:
        stmt = pg_insert(ProgramRulesRow).values(
            tenant_id=tenant, rules=rules, version=1, updated_at=loyalty.clock.now()
        )
        await s.execute(
            stmt.on_conflict_do_update(index_elements=["tenant_id"], set_={"rules": rules})
        )


async def points_earned_events(loyalty: Loyalty, tenant: str) -> int:
    """points.earned events the service has written for the tenant (its outbox)."""
    t = loyalty.runtime.tables.outbox
    async with loyalty.runtime.sessionmaker() as s:
        stmt = (
            select(func.count())
            .select_from(t)
            .where(
                t.c.key.startswith(f"{tenant}:"),
                t.c.event_type == "afterglow.points.earned.v1",
            )
        )
        return int((await s.execute(stmt)).scalar_one())


def refund(order_id: str, refund_id: str, amount: int, *, full: bool, at) -> OrderRefunded:
    return OrderRefunded(
        order_id=order_id,
        refund_id=refund_id,
        refunded_at=at,
        amount=Money(amount=amount, currency="USD"),
        full=full,
    )


class TestOrderRules:
    def setup(self, loyalty: Loyalty):
        return Handlers(loyalty.runtime), f"t-{uuid.uuid4().hex[:12]}", "c-1"

    async def run(self, loyalty: Loyalty, handler, data, tenant, customer) -> None:
        async with loyalty.runtime.sessionmaker.begin() as s:
            await handler(s, loyalty.event(data, tenant, customer))

    async def test_fulfilled_only_program_earns_at_fulfilment(self, loyalty: Loyalty):
        h, tenant, c = self.setup(loyalty)
        await set_rules(loyalty, tenant, earning_statuses=["fulfilled"])
        await self.run(
            loyalty, h.order_placed, loyalty.order("o1", 10_000, customer_orders_count=4), tenant, c
        )
        assert await loyalty.consistent(tenant, c) == (0, 0)
        now = loyalty.clock.now()
        await self.run(
            loyalty, h.order_fulfilled, OrderFulfilled(order_id="o1", fulfilled_at=now), tenant, c
        )
        assert await loyalty.consistent(tenant, c) == (0, 500)

    async def test_cancel_voids_pending_points_and_first_order_bonus(self, loyalty: Loyalty):
        h, tenant, c = self.setup(loyalty)
        await self.run(
            loyalty, h.order_placed, loyalty.order("o1", 10_000, customer_orders_count=1), tenant, c
        )
        assert await loyalty.consistent(tenant, c) == (0, 600)
        cancel = OrderCancelled(order_id="o1", cancelled_at=loyalty.clock.now())
        await self.run(loyalty, h.order_cancelled, cancel, tenant, c)
        assert await loyalty.consistent(tenant, c) == (0, 0)

    async def test_refund_claws_back_under_the_rule_that_earned(self, loyalty: Loyalty):
        h, tenant, c = self.setup(loyalty)
        now = loyalty.clock.now()
        await self.run(
            loyalty, h.order_placed, loyalty.order("o1", 10_001, customer_orders_count=3), tenant, c
        )
        await self.run(
            loyalty,
            h.order_fulfilled,
            OrderFulfilled(order_id="o1", fulfilled_at=now - timedelta(days=31)),
            tenant,
            c,
        )
        assert await loyalty.consistent(tenant, c) == (500, 0)  # 500.05 rounded down
        await set_rules(loyalty, tenant, points_per_unit=20)  # today's rule is 4x richer
        refund = OrderRefunded(
            order_id="o1",
            refund_id="r1",
            refunded_at=now,
            amount=Money(amount=2_500, currency="USD"),
            full=False,
        )
        await self.run(loyalty, h.order_refunded, refund, tenant, c)
        # floor(500 * 2500 / 10001) = 124 under the earning rule, not 500 under today's.
        assert await loyalty.consistent(tenant, c) == (376, 0)
        async with loyalty.runtime.sessionmaker() as s:
            entry = (
                await s.execute(
                    EntryRow.__table__.select().where(
                        EntryRow.tenant_id == tenant, EntryRow.kind == "clawback"
                    )
                )
            ).one()
        assert entry.rule_snapshot["points_per_unit"] == 5
        full = OrderRefunded(
            order_id="o1",
            refund_id="r2",
            refunded_at=now,
            amount=Money(amount=7_501, currency="USD"),
            full=True,
        )
        await self.run(loyalty, h.order_refunded, full, tenant, c)
        assert await loyalty.consistent(tenant, c) == (0, 0)

    async def test_tier_multiplier_applies_to_the_next_order(self, loyalty: Loyalty):
        h, tenant, c = self.setup(loyalty)
        big = loyalty.order("o1", 60_000, customer_orders_count=5)
        await self.run(loyalty, h.order_placed, big, tenant, c)
        assert await loyalty.consistent(tenant, c) == (0, 3_000)  # earned as bronze, x1
        await self.run(
            loyalty, h.order_placed, loyalty.order("o2", 10_000, customer_orders_count=6), tenant, c
        )
        assert await loyalty.consistent(tenant, c) == (0, 3_000 + 625)  # silver, x1.25


class TestRefundBeforeEarning:
    """A program earning at fulfilment: a refund or cancellation may arrive first, when
    there is nothing to claw back yet; the order must then earn net of it, or not at all."""

    async def setup(self, loyalty: Loyalty, earning_at: str = "fulfilled"):
        tenant = f"t-{uuid.uuid4().hex[:12]}"
        await set_rules(loyalty, tenant, earning_statuses=[earning_at])
        return Handlers(loyalty.runtime), tenant, "c-1"

    async def run(self, loyalty: Loyalty, tenant: str, c: str, *steps) -> None:
        """Each (handler, data) in its own transaction, as the consumer runs them."""
        for handler, data in steps:
            async with loyalty.runtime.sessionmaker.begin() as s:
                await handler(s, loyalty.event(data, tenant, c))

    def placed(self, h: Handlers, loyalty: Loyalty):
        return h.order_placed, loyalty.order("o1", 10_000, customer_orders_count=1)

    def refunded(self, h: Handlers, loyalty: Loyalty, refund_id: str, amount: int, full=False):
        return h.order_refunded, refund("o1", refund_id, amount, full=full, at=loyalty.clock.now())

    def fulfilled(self, h: Handlers, loyalty: Loyalty):
        return h.order_fulfilled, OrderFulfilled(order_id="o1", fulfilled_at=loyalty.clock.now())

    async def test_partial_refund_before_fulfilment_earns_on_the_net_amount(self, loyalty: Loyalty):
        h, tenant, c = await self.setup(loyalty)
        await self.run(
            loyalty,
            tenant,
            c,
            self.placed(h, loyalty),
            self.refunded(h, loyalty, "r1", 4_000),
            self.fulfilled(h, loyalty),
        )
        # 5 points per unit on $60 net = 300, plus the first-order bonus: not 500 + 100.
        assert await loyalty.consistent(tenant, c) == (0, 400)
        assert await points_earned_events(loyalty, tenant) == 2
        # A later refund of half the rest takes back half of what was earned on the $60;
        # the $40 refunded before it earned is not counted a second time.
        await self.run(loyalty, tenant, c, self.refunded(h, loyalty, "r2", 3_000))
        assert await loyalty.consistent(tenant, c) == (0, 200)
        await self.run(loyalty, tenant, c, self.refunded(h, loyalty, "r3", 3_000))
        assert await loyalty.consistent(tenant, c) == (0, 0)  # all $100 refunded

    async def test_full_refund_before_fulfilment_earns_nothing(self, loyalty: Loyalty):
        h, tenant, c = await self.setup(loyalty)
        await self.run(
            loyalty,
            tenant,
            c,
            self.placed(h, loyalty),
            self.refunded(h, loyalty, "r1", 10_000, full=True),
            self.fulfilled(h, loyalty),
        )
        assert await loyalty.consistent(tenant, c) == (0, 0)
        assert await points_earned_events(loyalty, tenant) == 0

    async def test_refunds_adding_up_to_the_total_earn_nothing(self, loyalty: Loyalty):
        h, tenant, c = await self.setup(loyalty, "delivered")
        delivered = OrderDelivered(
            order_id="o1", delivered_at=loyalty.clock.now(), reported_by="api"
        )
        await self.run(
            loyalty,
            tenant,
            c,
            self.placed(h, loyalty),
            self.refunded(h, loyalty, "r1", 6_000),
            self.refunded(h, loyalty, "r2", 4_000),
            (h.order_delivered, delivered),
        )
        assert await loyalty.consistent(tenant, c) == (0, 0)
        assert await points_earned_events(loyalty, tenant) == 0

    async def test_cancellation_before_fulfilment_earns_nothing(self, loyalty: Loyalty):
        h, tenant, c = await self.setup(loyalty)
        cancel = OrderCancelled(order_id="o1", cancelled_at=loyalty.clock.now())
        await self.run(
            loyalty,
            tenant,
            c,
            self.placed(h, loyalty),
            (h.order_cancelled, cancel),
            self.fulfilled(h, loyalty),
        )
        assert await loyalty.consistent(tenant, c) == (0, 0)
        assert await points_earned_events(loyalty, tenant) == 0

    async def test_earning_at_placed_claws_back_a_later_refund_as_before(self, loyalty: Loyalty):
        h, tenant, c = await self.setup(loyalty, "placed")
        await self.run(loyalty, tenant, c, self.placed(h, loyalty))
        assert await loyalty.consistent(tenant, c) == (0, 600)
        await self.run(
            loyalty,
            tenant,
            c,
            self.refunded(h, loyalty, "r1", 4_000),
            self.fulfilled(h, loyalty),
        )
        # 40% of each lot comes back: 200 of the order's 500, 40 of the bonus's 100.
        assert await loyalty.consistent(tenant, c) == (0, 360)
        assert await points_earned_events(loyalty, tenant) == 2


class TestOrderWithoutCustomer:
    async def test_order_without_customer_opens_no_points_account(self, loyalty: Loyalty):
        """A POS sale with no customer id, email or phone has the subject
        ``order:<order id>``: no account, no points, and its later events change nothing."""
        h, tenant = Handlers(loyalty.runtime), f"t-{uuid.uuid4().hex[:12]}"
        anonymous = f"{ANONYMOUS_SUBJECT_PREFIX}shopify:9001"
        now = loyalty.clock.now()
        for handler, data in (
            (h.order_placed, loyalty.order("shopify:9001", 10_000, customer_orders_count=1)),
            (h.order_fulfilled, OrderFulfilled(order_id="shopify:9001", fulfilled_at=now)),
        ):
            async with loyalty.runtime.sessionmaker.begin() as s:
                await handler(s, loyalty.event(data, tenant, anonymous))
        async with loyalty.runtime.sessionmaker() as s:
            assert await s.get(Account, (tenant, anonymous)) is None
            assert await s.get(OrderRow, (tenant, "shopify:9001")) is None
        assert await points_earned_events(loyalty, tenant) == 0
        # The same order with a customer earns: the rule is the subject's.
        async with loyalty.runtime.sessionmaker.begin() as s:
            await h.order_placed(
                s, loyalty.event(loyalty.order("shopify:9002", 10_000), tenant, "c-1")
            )
        assert await points_earned_events(loyalty, tenant) >= 1
