"""The ledger properties again, on PostgreSQL, through the handlers and the redemption
function the service runs: smaller examples, real transactions."""

from __future__ import annotations

import uuid
from datetime import timedelta

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from afterglow.events.catalog import Money, OrderFulfilled, OrderRefunded
from afterglow.kit.errors import AppError
from afterglow.loyalty.deps import deps_of
from afterglow.loyalty.handlers import Handlers
from afterglow.loyalty.models import Account
from afterglow.loyalty.workers import process_account

from ..loyalty_support import Loyalty

op = st.one_of(
    st.tuples(st.just("order"), st.integers(0, 40_000)),
    st.tuples(st.just("refund"), st.integers(0, 5), st.integers(1, 30_000), st.booleans()),
    st.tuples(st.just("redeem"), st.sampled_from(["five-off", "ten-percent", "free-shipping"])),
    st.tuples(st.just("expire"), st.integers(100, 500)),
)


class TestLedgerOnDatabase:
    @settings(max_examples=12, deadline=None, suppress_health_check=list(HealthCheck))
    @given(ops=st.lists(op, min_size=1, max_size=8))
    async def test_sequences_keep_balances_equal_to_entries(self, loyalty: Loyalty, ops):
        rt, h = loyalty.runtime, Handlers(loyalty.runtime)
        tenant, customer = f"t-{uuid.uuid4().hex[:12]}", "c-prop"
        orders: list[str] = []
        now = loyalty.clock.now()

        async def apply(handler, data, *, twice: bool = True) -> None:
            event = loyalty.event(data, tenant, customer)
            async with rt.sessionmaker.begin() as s:
                await handler(s, event)
            state = await loyalty.consistent(tenant, customer)
            if twice:  # the same business event again (a new envelope id): no change
                async with rt.sessionmaker.begin() as s:
                    await handler(s, loyalty.event(data, tenant, customer))
                assert await loyalty.consistent(tenant, customer) == state

        for i, step in enumerate(ops):
            if step[0] == "order":
                oid = f"o{i}"
                await apply(h.order_placed, loyalty.order(oid, step[1]))
                # Fulfilled long ago: the return window is over, points are available.
                await apply(
                    h.order_fulfilled,
                    OrderFulfilled(order_id=oid, fulfilled_at=now - timedelta(days=40)),
                )
                orders.append(oid)
            elif step[0] == "refund" and orders:
                refund = OrderRefunded(
                    order_id=orders[step[1] % len(orders)],
                    refund_id=f"rf{i}",
                    refunded_at=now,
                    amount=Money(amount=step[2], currency="USD"),
                    full=step[3],
                )
                await apply(h.order_refunded, refund)
            elif step[0] == "redeem" and orders:
                before = await loyalty.consistent(tenant, customer)
                try:
                    async with rt.sessionmaker.begin() as s:
                        await deps_of(rt).loyalty.redeem(s, tenant, customer, step[1], f"k{i}", now)
                except AppError as exc:
                    assert exc.status_code == 409
                    assert await loyalty.consistent(tenant, customer) == before
                after = await loyalty.consistent(tenant, customer)
                assert after[0] >= 0 or after == before  # never overdrawn by a redemption
            elif step[0] == "expire" and orders:
                await process_account(rt, tenant, customer, now + timedelta(days=step[1]))
                await loyalty.consistent(tenant, customer)
        if orders:
            async with rt.sessionmaker() as s:
                acc = await s.get(Account, (tenant, customer))
                assert acc is not None and acc.pending >= 0
