"""Order-driven rules on PostgreSQL through the handlers the consumer runs."""

from __future__ import annotations

import uuid
from datetime import timedelta

from loyalty_support import Loyalty
from sqlalchemy.dialects.postgresql import insert as pg_insert

from afterglow.events.catalog import Money, OrderCancelled, OrderFulfilled, OrderRefunded
from afterglow.loyalty.domain import ProgramRules
from afterglow.loyalty.handlers import Handlers
from afterglow.loyalty.models import EntryRow, ProgramRulesRow


async def set_rules(loyalty: Loyalty, tenant: str, **changes) -> None:
    rules = ProgramRules(**changes).model_dump(mode="json")
    async with loyalty.runtime.sessionmaker.begin() as s:
        stmt = pg_insert(ProgramRulesRow).values(
            tenant_id=tenant, rules=rules, version=1, updated_at=loyalty.clock.now()
        )
        await s.execute(
            stmt.on_conflict_do_update(index_elements=["tenant_id"], set_={"rules": rules})
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
