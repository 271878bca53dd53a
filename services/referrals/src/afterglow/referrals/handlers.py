"""Event handlers. A batch runs in the consumer's inbox transaction, so a redelivered
event is skipped and the state change commits with the events it causes.

Lock order: a batch applies its events in partition order: a run of consecutive
order.placed events as one set (:meth:`ReferralService.orders_placed`, which locks the
run's referred orders in (tenant, order id) order, then, if it attributes any, every
code of the batch in (tenant, code id) order, with one statement, held to the commit:
:class:`~afterglow.referrals.service.BatchCodes`), a run of consecutive order lifecycle
events (fulfilled, delivered, refunded, cancelled) as one set
(:meth:`ReferralService.orders_changed`, which locks the run's orders, then their open
referrals, each in (tenant, order id) order), every other event one by one, each
locking its order row; a batch holding such an event locks all its codes first. An
order's events are one customer's, in this partition only. Codes are shared across
partitions (an advocate's code, many referees): taken in whatever order the events
came, two batches deadlocked on them; taken at the start of every batch, the
partitions' batches queued on them. The consumer applies a whole poll, its partitions
one after another, as one transaction (ReferralsSettings.consumer_coalesce_records), so
an instance's partitions no longer wait on each other's codes; a second replica, and a
poll applied partition by partition after that transaction failed, still lock them in
the one order above."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.events import CloudEvent, ConsumerGroup, on_batch
from afterglow.events.batch import event_span
from afterglow.events.catalog import (
    CustomerErasureRequested,
    OrderCancelled,
    OrderDelivered,
    OrderFulfilled,
    OrderPlaced,
    OrderRefunded,
    ReferralInvited,
)
from afterglow.kit.app import Runtime
from afterglow.referrals.deps import deps_of
from afterglow.referrals.service import ReferralService


async def invited(
    svc: ReferralService, session: AsyncSession, event: CloudEvent[ReferralInvited]
) -> None:
    data = event.data
    await svc.issue_code(
        session,
        event.tenantid,
        event.subject,
        invited_at=data.invited_at,
        source="invited",
        cause_id=event.id,
        send_invite=True,
    )


async def placed(
    svc: ReferralService, session: AsyncSession, event: CloudEvent[OrderPlaced]
) -> None:
    """One order.placed alone: the per-event rule. The consumer applies runs of them in
    sets (ReferralService.orders_placed), which must end exactly as this applied to
    each in order; tests/integration/test_placed_in_sets.py compares the two."""
    data = event.data
    # Every order is remembered, referred or not: it is how a later referee is
    # recognised as an existing customer, or as the advocate in disguise.
    order = await svc.remember_order(session, event.tenantid, event.subject, data)
    if data.historical:
        # A past order (history import, late delivery) is remembered, so a later
        # referee is still recognised as an existing customer, but it converts no
        # referral: rewarding an advocate, and messaging both sides, for an order
        # from years ago (or one the import found with a code) is not a referral.
        return
    found = await svc.code_for_order(session, event.tenantid, data)
    if found is None:
        return
    code, via = found
    await svc.attribute(
        session, code, order, via=via, platform_orders_count=data.customer_orders_count
    )


async def fulfilled(
    svc: ReferralService, session: AsyncSession, event: CloudEvent[OrderFulfilled]
) -> None:
    data = event.data
    await svc.order_fulfilled(session, event.tenantid, data.order_id, data.fulfilled_at)


async def delivered(
    svc: ReferralService, session: AsyncSession, event: CloudEvent[OrderDelivered]
) -> None:
    # Some platforms report the delivery and never the fulfilment; a delivered order
    # was fulfilled by then, so its return window starts at the latest there.
    data = event.data
    await svc.order_fulfilled(session, event.tenantid, data.order_id, data.delivered_at)


async def refunded(
    svc: ReferralService, session: AsyncSession, event: CloudEvent[OrderRefunded]
) -> None:
    await svc.order_refunded(session, event.tenantid, event.data)


async def cancelled(
    svc: ReferralService, session: AsyncSession, event: CloudEvent[OrderCancelled]
) -> None:
    await svc.order_cancelled(session, event.tenantid, event.data)


async def erasure(
    svc: ReferralService, session: AsyncSession, event: CloudEvent[CustomerErasureRequested]
) -> None:
    customer = None if event.data.scope == "tenant" else event.subject
    await svc.erase(session, event.tenantid, customer)


def _service(runtime: Runtime) -> ReferralService:
    """The service object the lifespan built (afterglow.referrals.deps)."""
    return deps_of(runtime).referrals


ONE_BY_ONE: dict[type, Callable[[ReferralService, AsyncSession, Any], Awaitable[None]]] = {
    ReferralInvited: invited,
    OrderPlaced: placed,
    OrderFulfilled: fulfilled,
    OrderDelivered: delivered,
    OrderRefunded: refunded,
    OrderCancelled: cancelled,
    CustomerErasureRequested: erasure,
}


async def apply(svc: ReferralService, session: AsyncSession, events: list[CloudEvent[Any]]) -> None:
    codes: set[tuple[str, str]] = set()
    advocates: set[tuple[str, str]] = set()
    for e in events:
        if isinstance(e.data, OrderPlaced) and not e.data.historical:
            codes.update((e.tenantid, c) for c in e.data.discount_codes)
            if e.data.referral_code:
                codes.add((e.tenantid, e.data.referral_code))
        elif isinstance(e.data, ReferralInvited):
            advocates.add((e.tenantid, e.subject))
    policies = await svc.policies(session, {t for t, _ in codes}) if codes else None
    # The codes of every order of the batch: read without a lock, locked all at once
    # when a run first attributes an order (BatchCodes). A batch with an event applied
    # alone (an invitation, an erasure: they change codes, and lock them as they go)
    # locks them all at its start instead, so its locks are still taken in one order.
    batch_codes = svc.batch_codes(codes, advocates)
    if any(_set_kind(e) is None for e in events):
        await batch_codes.lock(session)
    run: list[CloudEvent[Any]] = []

    async def flush() -> None:
        if not run:
            return
        if isinstance(run[0].data, OrderPlaced):
            await svc.orders_placed(
                session, [(e.tenantid, e.subject, e.data) for e in run], batch_codes, policies
            )
        else:
            await svc.orders_changed(session, [(e.tenantid, e.data) for e in run])
        run.clear()

    for event in events:
        kind = _set_kind(event)
        if run and kind != _set_kind(run[0]):
            await flush()  # a run ends where another kind of event comes
        if kind is not None:
            run.append(event)
            continue
        batch_codes.forget()
        with event_span(event):
            await ONE_BY_ONE[type(event.data)](svc, session, event)
            # The next event sees this one's writes through fresh ORM objects.
            await session.flush()
        session.expunge_all()
    await flush()


# The events that go in sets: a run of consecutive ones of a kind is one set-based use
# case (ReferralService.orders_placed, ReferralService.orders_changed) that ends as the
# per-event handlers above applied in order; every other event is applied alone, after
# the run before it.
LIFECYCLE = (OrderFulfilled, OrderDelivered, OrderRefunded, OrderCancelled)


def _set_kind(event: CloudEvent[Any]) -> str | None:
    if isinstance(event.data, OrderPlaced):
        return "placed"
    if isinstance(event.data, LIFECYCLE):
        return "lifecycle"
    return None


# One consumer group for every topic: on the embedded broker each group costs seconds to
# join at start-up, and ordering only matters within a partition anyway. One batch
# function for every class, so a batch's codes are locked together, in order.
CONSUMERS = (
    ConsumerGroup("events", *(on_batch(cls, apply) for cls in ONE_BY_ONE), context=_service),
)
