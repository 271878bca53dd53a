"""Event handlers. A batch runs in the consumer's inbox transaction, so a redelivered
event is skipped and the state change commits with the events it causes.

Lock order: a batch first locks every code it may touch with one statement, ordered by
(tenant, code id) (:meth:`ReferralService.lock_codes`), then applies its events one by
one in partition order, each locking its order row (one customer's, in this partition
only). Codes are shared across partitions (an advocate's code, many referees): taken in
whatever order the events came, two batches deadlocked on them."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.events import BatchHandler, CloudEvent, Handler
from afterglow.events.batch import each_in_order
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

    one_by_one: dict[str, Callable[[AsyncSession, CloudEvent[Any]], Awaitable[None]]] = {
        "afterglow.referral.invited.v1": invited,
        "afterglow.order.placed.v1": placed,
        "afterglow.order.fulfilled.v1": fulfilled,
        "afterglow.order.delivered.v1": delivered,
        "afterglow.order.refunded.v1": refunded,
        "afterglow.order.cancelled.v1": cancelled,
        "afterglow.customer.erasure_requested.v1": erasure,
    }

    async def apply(session: AsyncSession, events: list[CloudEvent[Any]]) -> None:
        codes: set[tuple[str, str]] = set()
        advocates: set[tuple[str, str]] = set()
        for e in events:
            if isinstance(e.data, OrderPlaced) and not e.data.historical:
                codes.update((e.tenantid, c) for c in e.data.discount_codes)
                if e.data.referral_code:
                    codes.add((e.tenantid, e.data.referral_code))
            elif isinstance(e.data, ReferralInvited):
                advocates.add((e.tenantid, e.subject))
        await svc.lock_codes(session, codes, advocates)
        await each_in_order(session, events, lambda s, e: one_by_one[e.type](s, e))

    batch: Handler = BatchHandler(apply)
    # One consumer group for every topic: on the embedded broker each group costs
    # seconds to join at start-up, and ordering only matters within a partition anyway.
    return [ConsumerSpec("events", dict.fromkeys(one_by_one, batch))]
