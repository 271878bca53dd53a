"""Event handlers. Each runs in the consumer's inbox transaction, so a redelivered event
is skipped and the state change commits with the events it causes."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.events import CloudEvent, ConsumerGroup, on
from afterglow.events.catalog import (
    CustomerErasureRequested,
    OrderCancelled,
    OrderDelivered,
    OrderFulfilled,
    OrderPlaced,
    OrderRefunded,
    ReferralInvited,
)
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


def _service(runtime: Any) -> ReferralService:
    """The service object the app's start-up built (afterglow.referrals.app)."""
    svc: ReferralService = runtime.extras["referrals"]
    return svc


# One consumer group for every topic: on the embedded broker each group costs seconds to
# join at start-up, and ordering only matters within a partition anyway.
CONSUMERS = (
    ConsumerGroup(
        "events",
        on(ReferralInvited, invited),
        on(OrderPlaced, placed),
        on(OrderFulfilled, fulfilled),
        on(OrderDelivered, delivered),
        on(OrderRefunded, refunded),
        on(OrderCancelled, cancelled),
        on(CustomerErasureRequested, erasure),
        context=_service,
    ),
)
