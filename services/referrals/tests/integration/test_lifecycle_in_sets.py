"""A run of order lifecycle events (fulfilled, delivered, refunded, cancelled) in one
partition batch is applied in sets (ReferralService.orders_changed) with exactly the
outcome of applying the events one by one, in order (handlers.fulfilled, delivered,
refunded, cancelled: the per-event path).

As in test_placed_in_sets: the batch goes through the consumer runtime's own
transaction, the same scenario is applied event by event in a second tenant, both
tenants must end in the same rows and outbox events, and the outcomes are checked
against values worked out by hand."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from afterglow.events import CloudEvent
from afterglow.events.catalog import OrderRefunded
from afterglow.referrals.models import Order

from ..referrals_support import Service
from .test_placed_in_sets import (
    apply_batch,
    apply_one_by_one,
    issue_codes,
    outbox_events,
    referral_state,
)

# order id -> (state, reason, refunded amount, window started) worked out by hand for
# lifecycle() (every order totals 5000).
EXPECTED = {
    # Fulfilled (the delivery after it changes nothing), refunded in two halves: the
    # second reaches the total and rejects it; the cancellation after finds it decided.
    "o1": ("rejected", "refunded", 5000, True),
    # Only a delivery was reported: it starts the window.
    "o2": ("pending", None, 0, True),
    # Fulfilled, then a full refund.
    "o3": ("rejected", "refunded", 5000, True),
    # Cancelled before its fulfilment: the fulfilment finds the referral decided.
    "o4": ("rejected", "cancelled", 0, False),
    # A partial refund short of the total: the referral stays, the amount is kept.
    "o5": ("pending", None, 1000, False),
    # Placed in the middle of the batch, fulfilled after it.
    "o6": ("pending", None, 0, True),
}


def placements(service: Service, tenant: str, codes: dict[str, str]) -> list[CloudEvent[Any]]:
    """Five referred orders (of two advocates, under the cap) and one that is not."""
    t0 = service.clock.now()
    code_of = {"o1": "adv1", "o2": "adv1", "o3": "adv2", "o4": "adv2", "o5": "adv3"}
    events = [
        CloudEvent.new(
            service.placed(
                order_id=order,
                email=f"ref-{order}@example.com",
                referral_code=codes[advocate],
                at=t0 + timedelta(minutes=i * 70),  # clear of the velocity rule
            ),
            tenant_id=tenant,
            subject=f"ref-{order}",
            source="tests",
        )
        for i, (order, advocate) in enumerate(code_of.items())
    ]
    plain = service.placed(order_id="o-plain", email="plain@example.com", at=t0)
    events.append(CloudEvent.new(plain, tenant_id=tenant, subject="plain", source="tests"))
    return events


def lifecycle(service: Service, tenant: str, codes: dict[str, str]) -> list[CloudEvent[Any]]:
    """One partition batch of lifecycle events, a placement splitting it in two runs."""
    t0 = service.clock.now()

    def at(hours: int) -> Any:
        return t0 + timedelta(hours=hours)

    def ev(order: str, data: Any) -> CloudEvent[Any]:
        return CloudEvent.new(data, tenant_id=tenant, subject=f"ref-{order}", source="tests")

    def refund(order: str, amount: int, full: bool, hours: int) -> CloudEvent[Any]:
        data = service.refunded(order, amount=amount, full=full)
        # The refund id is in the rejection's detail: the same in both tenants.
        update = {"refunded_at": at(hours), "refund_id": f"rf-{order}-{hours}"}
        return ev(order, data.model_copy(update=update))

    def cancel(order: str, hours: int) -> CloudEvent[Any]:
        data = service.cancelled(order).model_copy(update={"cancelled_at": at(hours)})
        return ev(order, data)

    o6 = service.placed(
        order_id="o6", email="ref-o6@example.com", referral_code=codes["adv3"], at=at(10)
    )
    return [
        ev("o1", service.fulfilled("o1", at(1))),
        ev("o2", service.delivered("o2", at(2))),
        ev("o1", service.delivered("o1", at(3))),
        refund("o1", 2500, False, 4),
        ev("o3", service.fulfilled("o3", at(4))),
        cancel("o4", 5),
        ev("o-plain", service.fulfilled("o-plain", at(5))),
        ev("o-unknown", service.fulfilled("o-unknown", at(5))),  # never placed here
        ev("o6", o6),
        refund("o1", 2500, False, 6),
        refund("o3", 5000, True, 6),
        ev("o4", service.fulfilled("o4", at(6))),
        refund("o5", 1000, False, 7),
        cancel("o1", 8),
        ev("o6", service.fulfilled("o6", at(11))),
    ]


async def order_lifecycle(service: Service, tenant: str) -> dict[str, tuple[Any, ...]]:
    async with service.runtime.sessionmaker() as s:
        rows = await s.scalars(select(Order).where(Order.tenant_id == tenant))
        return {
            o.order_id: (o.fulfilled_at, o.refunded_amount, o.refunded_at, o.cancelled_at)
            for o in rows
        }


async def prepared(service: Service) -> tuple[str, dict[str, str]]:
    """A tenant with its codes and the orders placed (not what is under test)."""
    tenant = f"t-{uuid.uuid4().hex[:10]}"
    codes = await issue_codes(service, tenant)
    await apply_batch(service, placements(service, tenant, codes))
    return tenant, codes


class TestOrderLifecycleInSets:
    async def test_a_batch_of_lifecycle_events_ends_as_applying_them_one_by_one(self, service):
        (in_sets, codes_a), (one_by_one, codes_b) = await prepared(service), await prepared(service)

        batch = lifecycle(service, in_sets, codes_a)
        applied = await apply_batch(service, batch)
        await apply_one_by_one(service, lifecycle(service, one_by_one, codes_b))

        assert applied == [e.id for e in batch]
        got = await referral_state(service, in_sets)
        assert got == await referral_state(service, one_by_one)
        assert {o: (r[0], r[1], r[10], r[8] is not None) for o, r in got.items()} == EXPECTED
        # The window started with the first fulfilment (o1) or the delivery (o2).
        t0 = batch[0].data.fulfilled_at - timedelta(hours=1)
        assert got["o1"][8] == t0 + timedelta(hours=1)
        assert got["o2"][8] == t0 + timedelta(hours=2)
        assert got["o2"][9] == got["o2"][8] + timedelta(days=30)
        orders = await order_lifecycle(service, in_sets)
        assert orders == await order_lifecycle(service, one_by_one)
        # Refunded in full by its second half; cancelled after.
        assert orders["o1"] == (
            t0 + timedelta(hours=1),
            5000,
            t0 + timedelta(hours=6),
            t0 + timedelta(hours=8),
        )
        assert orders["o5"] == (None, 1000, None, None)
        assert orders["o4"][0] == t0 + timedelta(hours=6)  # the order's own record
        assert orders["o-plain"][0] == t0 + timedelta(hours=5)
        assert "o-unknown" not in orders
        emitted = await outbox_events(service, in_sets)
        assert emitted == await outbox_events(service, one_by_one)
        rejections = [reason for kind, _, reason in emitted if kind.endswith("rejected.v1")]
        assert sorted(rejections) == ["cancelled", "refunded", "refunded"]
        # Each rejected conversion had its friend's code issued: it is clawed back.
        assert sum(kind.endswith("revoke_requested.v1") for kind, _, _ in emitted) == 3

    async def test_a_repeated_batch_changes_nothing(self, service):
        tenant, codes = await prepared(service)
        batch = lifecycle(service, tenant, codes)
        await apply_batch(service, batch)
        before = (
            await referral_state(service, tenant),
            await order_lifecycle(service, tenant),
            await outbox_events(service, tenant),
        )
        assert await apply_batch(service, batch) == []  # redelivered: the inbox skips it
        # The same fulfilments, deliveries and cancellations under new event ids: an
        # order is fulfilled or cancelled once (a refund under a new id is a new refund).
        again = [
            CloudEvent.new(e.data, tenant_id=tenant, subject=e.subject, source="tests")
            for e in batch
            if not isinstance(e.data, OrderRefunded)
        ]
        assert len(await apply_batch(service, again)) == len(again)
        after = (
            await referral_state(service, tenant),
            await order_lifecycle(service, tenant),
            await outbox_events(service, tenant),
        )
        assert after == before
