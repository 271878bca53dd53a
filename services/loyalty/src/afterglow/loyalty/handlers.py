"""Event handlers. Each runs in one transaction with the inbox insert (exactly once per
event id); natural keys (order id, refund id, survey id, referral id) also make a
re-sent business event with a new id change nothing."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.events import CloudEvent, ConsumerGroup, on_batch
from afterglow.events.batch import in_segments
from afterglow.events.catalog import (
    CustomerErasureRequested,
    OrderCancelled,
    OrderDelivered,
    OrderFulfilled,
    OrderPlaced,
    OrderRefunded,
    ReferralConverted,
    ReviewSubmitted,
    SurveyResponded,
    is_anonymous_subject,
)
from afterglow.kit.app import Runtime
from afterglow.loyalty import store
from afterglow.loyalty.deps import deps_of
from afterglow.loyalty.service import Changed, LoyaltyService, Placed


class Handlers:
    """Each event unpacked into its use case (service.py); the event id is the cause
    the events it leads to derive their ids from."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    @property
    def loyalty(self) -> LoyaltyService:
        # Read when an event is handled, not when the group is built: a group's handlers
        # are also built from a bare runtime to list what they read (the contract
        # tests), with no deps on it.
        return deps_of(self.rt).loyalty

    async def order_placed(self, session: AsyncSession, event: CloudEvent[OrderPlaced]) -> None:
        if is_anonymous_subject(event.subject):
            # An order without a customer (no id, email or phone): no points account
            # for it; its later events find no order here and change nothing.
            return
        await self.loyalty.order_placed(
            session, event.tenantid, event.subject, event.data, event.id
        )

    async def orders_placed(
        self, session: AsyncSession, events: list[CloudEvent[OrderPlaced]]
    ) -> None:
        """A run of order.placed events, in sets (what order_placed does for each)."""
        await self.loyalty.orders_placed(
            session,
            [
                Placed(e.tenantid, e.subject, e.data, e.id)
                for e in events
                # See order_placed: no account for an order without a customer.
                if not is_anonymous_subject(e.subject)
            ],
        )

    async def orders_changed(self, session: AsyncSession, events: list[CloudEvent[Any]]) -> None:
        """A run of order.fulfilled, order.delivered, order.refunded and order.cancelled
        events, in sets (what their handlers below do for each, in order)."""
        await self.loyalty.orders_changed(
            session, [Changed(e.tenantid, e.data, e.id) for e in events]
        )

    async def order_fulfilled(
        self, session: AsyncSession, event: CloudEvent[OrderFulfilled]
    ) -> None:
        await self.loyalty.order_fulfilled(session, event.tenantid, event.data, event.id)

    async def order_delivered(
        self, session: AsyncSession, event: CloudEvent[OrderDelivered]
    ) -> None:
        await self.loyalty.order_delivered(session, event.tenantid, event.data, event.id)

    async def order_refunded(self, session: AsyncSession, event: CloudEvent[OrderRefunded]) -> None:
        await self.loyalty.order_refunded(session, event.tenantid, event.data, event.id)

    async def order_cancelled(
        self, session: AsyncSession, event: CloudEvent[OrderCancelled]
    ) -> None:
        await self.loyalty.order_cancelled(session, event.tenantid, event.data, event.id)

    async def review_submitted(
        self, session: AsyncSession, event: CloudEvent[ReviewSubmitted]
    ) -> None:
        await self.loyalty.review_bonus(
            session, event.tenantid, event.subject, event.data.review_id, event.id
        )

    async def survey_responded(
        self, session: AsyncSession, event: CloudEvent[SurveyResponded]
    ) -> None:
        await self.loyalty.survey_bonus(
            session, event.tenantid, event.subject, event.data.survey_id, event.id
        )

    async def referral_converted(
        self, session: AsyncSession, event: CloudEvent[ReferralConverted]
    ) -> None:
        # The subject is the advocate.
        await self.loyalty.referral_bonus(
            session, event.tenantid, event.subject, event.data.referral_id, event.id
        )

    async def erasure_requested(
        self, session: AsyncSession, event: CloudEvent[CustomerErasureRequested]
    ) -> None:
        await self.loyalty.erase(
            session, event.tenantid, event.subject, whole_tenant=_tenant_wide(event)
        )


ONE_BY_ONE: dict[type, Callable[[Handlers, AsyncSession, Any], Awaitable[None]]] = {
    OrderPlaced: Handlers.order_placed,
    OrderFulfilled: Handlers.order_fulfilled,
    OrderDelivered: Handlers.order_delivered,
    OrderRefunded: Handlers.order_refunded,
    OrderCancelled: Handlers.order_cancelled,
    ReviewSubmitted: Handlers.review_submitted,
    SurveyResponded: Handlers.survey_responded,
    ReferralConverted: Handlers.referral_converted,
    CustomerErasureRequested: Handlers.erasure_requested,
}


# The events applied in sets, by the batch function of their run: every order event
# (the hot path: each order is placed, fulfilled or delivered, and some refunded).
IN_SETS: dict[type, Callable[[Handlers, AsyncSession, list[Any]], Awaitable[None]]] = {
    OrderPlaced: Handlers.orders_placed,
    OrderFulfilled: Handlers.orders_changed,
    OrderDelivered: Handlers.orders_changed,
    OrderRefunded: Handlers.orders_changed,
    OrderCancelled: Handlers.orders_changed,
}


async def apply(h: Handlers, session: AsyncSession, events: list[CloudEvent[Any]]) -> None:
    """Lock order: the batch's existing accounts first, by (tenant, customer), in one
    statement; then the events in partition order. Each run of consecutive order.placed
    events is applied in sets (Handlers.orders_placed), and so is each run of
    consecutive other order events (Handlers.orders_changed); the other events one by
    one. The rules are read once per tenant per batch."""
    session.info[store.RULES_CACHE] = {}
    pending: list[CloudEvent[Any]] = []

    def take(event: CloudEvent[Any]) -> bool:
        if type(event.data) in IN_SETS:
            pending.append(event)
            return True
        return False

    async def flush() -> None:
        # Consecutive events of one batch function make a run; runs go in order, each
        # seeing the writes of the one before.
        runs: list[list[CloudEvent[Any]]] = []
        for event in pending:
            if runs and IN_SETS[type(runs[-1][0].data)] is IN_SETS[type(event.data)]:
                runs[-1].append(event)
            else:
                runs.append([event])
        pending.clear()
        for run in runs:
            await IN_SETS[type(run[0].data)](h, session, run)
            await _fresh(session)

    async def one(event: CloudEvent[Any]) -> None:
        await ONE_BY_ONE[type(event.data)](h, session, event)
        await _fresh(session)

    try:
        await store.lock_accounts(
            session, {(e.tenantid, e.subject) for e in events if not _tenant_wide(e)}
        )
        await in_segments(events, take=take, flush=flush, one=one)
    finally:
        session.info.pop(store.RULES_CACHE, None)


async def _fresh(session: AsyncSession) -> None:
    """The next event sees the writes so far through fresh ORM objects (each_in_order's
    rule): never an account or order left stale by a Core statement."""
    await session.flush()
    session.expunge_all()


def _tenant_wide(event: CloudEvent[Any]) -> bool:
    return isinstance(event.data, CustomerErasureRequested) and event.data.scope == "tenant"


# One group for every topic: on the embedded broker each group costs seconds to join.
# One batch function for every class, so the batch's accounts are locked together.
CONSUMERS = (
    ConsumerGroup("ledger", *(on_batch(cls, apply) for cls in ONE_BY_ONE), context=Handlers),
)
