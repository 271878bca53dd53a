"""A batch of orders locks its codes late (BatchCodes): read without a lock, locked all
at once just before the conversions the limits count are read. Two things must still
hold, checked here with the codes' lock held by a transaction of the test while the
batches reach it (so the overlap is certain, not left to timing):

* the limits count every conversion another batch decided on the same code: two
  batches of different partitions never both slip under the advocate cap;
* a code changed between a batch's read and its lock (deactivated here) is decided
  from what the lock read: the batch attributes nothing by it.
"""

from __future__ import annotations

import asyncio
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, text, update

from afterglow.events import CloudEvent
from afterglow.events.testing import eventually
from afterglow.referrals.models import Code, Order

from ..referrals_support import Service
from .test_placed_in_sets import apply_batch, referral_state


def placed(service: Service, tenant: str, n: int, code: str, hours: int) -> CloudEvent[Any]:
    """Referee ``n``'s order with ``code``, ``hours`` after now (an hour apart: each alone
    in the velocity window, so only the advocate cap can reject)."""
    data = service.placed(
        order_id=f"o{n}", referral_code=code, at=service.clock.now() + timedelta(hours=hours)
    )
    return CloudEvent.new(data, tenant_id=tenant, subject=f"ref{n}", source="tests")


async def batches_waiting_on_codes(service: Service) -> int:
    """Backends waiting on a row lock in the codes' locking read. Own transaction:
    pg_stat_activity is a snapshot per transaction."""
    async with service.runtime.engine.connect() as conn:
        found = await conn.scalar(
            text(
                "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' "
                "AND query ILIKE '%referrals.codes%FOR UPDATE%'"
            )
        )
        return int(found or 0)


class TestCodesLockedLate:
    async def test_two_batches_on_one_code_never_both_slip_under_the_cap(self, service):
        tenant = f"t-{uuid.uuid4().hex[:10]}"
        code = await service.issue_code(tenant, "adv1")
        # Three orders each, interleaved in time, six referees. The cap (4 in the test
        # settings) counts the conversions placed before an order: whichever batch
        # decides second, one of its orders has four before it (A then B: o5 sees o0-o4;
        # B then A: o4 sees o0-o3) and is rejected. Two batches counting at once would
        # each see only their own orders and accept all six.
        first = [placed(service, tenant, n, code, n) for n in (0, 2, 4)]
        second = [placed(service, tenant, n, code, n) for n in (1, 3, 5)]
        async with service.runtime.sessionmaker.begin() as holder:
            await holder.execute(select(Code.id).where(Code.tenant_id == tenant).with_for_update())
            both = asyncio.gather(apply_batch(service, first), apply_batch(service, second))
            # Both batches have read the code and wait for its lock.
            await eventually(lambda: batches_waiting_on_codes(service), lambda n: n == 2)
        await both

        got = await referral_state(service, tenant)
        states = sorted((r[0], r[1]) for r in got.values())
        assert states == [("pending", None)] * 5 + [("rejected", "advocate_cap")]

    async def test_a_code_deactivated_before_the_lock_attributes_nothing(self, service):
        tenant = f"t-{uuid.uuid4().hex[:10]}"
        code = await service.issue_code(tenant, "adv1")
        batch = [placed(service, tenant, 1, code, 0)]
        async with service.runtime.sessionmaker.begin() as holder:
            await holder.execute(select(Code.id).where(Code.tenant_id == tenant).with_for_update())
            applying = asyncio.ensure_future(apply_batch(service, batch))
            # The batch read the code while it still attributed, and waits for its lock.
            await eventually(lambda: batches_waiting_on_codes(service), lambda n: n == 1)
            await holder.execute(
                update(Code).where(Code.tenant_id == tenant).values(deactivated_at=func.now())
            )
        assert await applying == [batch[0].id]

        assert await referral_state(service, tenant) == {}
        async with service.runtime.sessionmaker() as s:
            remembered = await s.scalars(select(Order.order_id).where(Order.tenant_id == tenant))
            assert list(remembered) == ["o1"]  # the order is remembered all the same
