"""Event handlers. Each runs in the consumer's inbox transaction, so a redelivered event
is skipped and the state change commits with the events it causes."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.events import CloudEvent
from afterglow.events.catalog import (
    CustomerErasureRequested,
    OrderCancelled,
    OrderDelivered,
    OrderFulfilled,
    OrderPlaced,
    OrderRefunded,
    ReferralInvited,
)
from afterglow.kit.app import ConsumerSpec, Runtime
from afterglow.referrals.service import ReferralService


def consumers(runtime: Runtime) -> list[ConsumerSpec]:
    svc: ReferralService = runtime.extras["referrals"]

    async def invited(session: AsyncSession, event: CloudEvent[Any]) -> None:
        data: ReferralInvited = event.data
        await svc.issue_code(
            session,
            event.tenantid,
            event.subject,
            invited_at=data.invited_at,
            source="invited",
            cause_id=event.id,
            send_invite=True,
        )

    async def placed(session: AsyncSession, event: CloudEvent[Any]) -> None:
        data: OrderPlaced = event.data
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

    async def fulfilled(session: AsyncSession, event: CloudEvent[Any]) -> None:
        data: OrderFulfilled = event.data
        await svc.order_fulfilled(session, event.tenantid, data.order_id, data.fulfilled_at)

    async def delivered(session: AsyncSession, event: CloudEvent[Any]) -> None:
        # Some platforms report the delivery and never the fulfilment; a delivered order
        # was fulfilled by then, so its return window starts at the latest there.
        data: OrderDelivered = event.data
        await svc.order_fulfilled(session, event.tenantid, data.order_id, data.delivered_at)

    async def refunded(session: AsyncSession, event: CloudEvent[Any]) -> None:
        data: OrderRefunded = event.data
        await svc.order_refunded(session, event.tenantid, data)

    async def cancelled(session: AsyncSession, event: CloudEvent[Any]) -> None:
        data: OrderCancelled = event.data
        await svc.order_cancelled(session, event.tenantid, data)

    async def erasure(session: AsyncSession, event: CloudEvent[Any]) -> None:
        data: CustomerErasureRequested = event.data
        customer = None if data.scope == "tenant" else event.subject
        await svc.erase(session, event.tenantid, customer)

    # One consumer group for every topic: on the embedded broker each group costs
    # seconds to join at start-up, and ordering only matters within a partition anyway.
    return [
        ConsumerSpec(
            "events",
            {
                "afterglow.referral.invited.v1": invited,
                "afterglow.order.placed.v1": placed,
                "afterglow.order.fulfilled.v1": fulfilled,
                "afterglow.order.delivered.v1": delivered,
                "afterglow.order.refunded.v1": refunded,
                "afterglow.order.cancelled.v1": cancelled,
                "afterglow.customer.erasure_requested.v1": erasure,
            },
        )
    ]
