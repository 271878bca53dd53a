"""The background worker on PostgreSQL: replicas share due accounts without doubling."""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta

from sqlalchemy import func, select

from afterglow.events.catalog import OrderFulfilled
from afterglow.loyalty.handlers import Handlers
from afterglow.loyalty.models import EntryRow
from afterglow.loyalty.workers import process_account

from ..loyalty_support import Loyalty


class TestWorkerReplicas:
    async def test_two_replicas_release_pending_points_once(self, loyalty: Loyalty):
        rt, h = loyalty.runtime, Handlers(loyalty.runtime)
        tenant, customer = f"t-{uuid.uuid4().hex[:12]}", "c-w"
        now = loyalty.clock.now()
        async with rt.sessionmaker.begin() as s:
            order = loyalty.order("o-w", 10_000, customer_orders_count=2)
            await h.order_placed(s, loyalty.event(order, tenant, customer))
        async with rt.sessionmaker.begin() as s:
            done = OrderFulfilled(order_id="o-w", fulfilled_at=now)
            await h.order_fulfilled(s, loyalty.event(done, tenant, customer))
        later = now + timedelta(days=31)
        results = await asyncio.gather(
            *(process_account(rt, tenant, customer, later) for _ in range(6))
        )
        assert any(results)  # some replica got the account; the others skipped or no-op'd
        assert await loyalty.consistent(tenant, customer) == (500, 0)
        async with rt.sessionmaker() as s:
            releases = await s.scalar(
                select(func.count()).where(
                    EntryRow.tenant_id == tenant, EntryRow.kind == "earn_available"
                )
            )
        assert releases == 1
