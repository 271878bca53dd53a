"""Event handlers: one batch function for the survey, review, order, referral-link and
erasure events, run in the consumer's transaction with the inbox claim (exactly once
per event id); ticket events have theirs (afterglow.feedback.support).

A batch is applied in sets (DESIGN.md, "Throughput"): the first survey requests, the
review requests and the orders of a run of events are collected and written with one
statement per table (their messages in the events' order); any other event (a survey
reminder, a referral link, an erasure) first flushes what was collected, then is
applied alone, so each event sees every earlier one's writes, as one by one. Surveys,
review asks and orders touch different rows (one per request id, none, one per order
id), so collecting them together changes no outcome."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.events import CloudEvent, ConsumerGroup, on_batch
from afterglow.events.batch import in_segments
from afterglow.events.catalog import (
    CustomerErasureRequested,
    OrderPlaced,
    ReferralCodeIssued,
    ReviewRequested,
    SurveyRequested,
)
from afterglow.feedback import service, support
from afterglow.feedback.deps import deps_of
from afterglow.feedback.settings import FeedbackSettings
from afterglow.kit.app import Runtime


def _settings(runtime: Runtime) -> FeedbackSettings:
    return deps_of(runtime).settings


async def survey_requested(
    runtime: Runtime, session: AsyncSession, event: CloudEvent[SurveyRequested]
) -> None:
    await service.handle_survey_requested(
        session, runtime.outbox, _settings(runtime), event, runtime.clock.now()
    )


async def review_requested(
    runtime: Runtime, session: AsyncSession, event: CloudEvent[ReviewRequested]
) -> None:
    await service.handle_review_requested(
        session, runtime.outbox, _settings(runtime), event, runtime.clock.now()
    )


async def order_placed(
    runtime: Runtime, session: AsyncSession, event: CloudEvent[OrderPlaced]
) -> None:
    # Historical orders (history import, late delivery) are remembered too: their
    # buyers' reviews are verified purchases. Nothing here asks for anything: a
    # survey or review ask comes only from a journey, which a past order never starts.
    data = event.data
    await service.remember_order(
        session, event.tenantid, event.subject, data.order_id, data.placed_at, _items(data)
    )


async def code_issued(
    runtime: Runtime, session: AsyncSession, event: CloudEvent[ReferralCodeIssued]
) -> None:
    data = event.data
    await service.save_referral_link(
        session, event.tenantid, event.subject, data.code, data.share_url, data.issued_at
    )


async def erasure(
    runtime: Runtime, session: AsyncSession, event: CloudEvent[CustomerErasureRequested]
) -> None:
    customer = None if event.data.scope == "tenant" else event.subject
    await service.erase(session, event.tenantid, customer)


ONE_BY_ONE: dict[type, Callable[[Runtime, AsyncSession, Any], Awaitable[None]]] = {
    SurveyRequested: survey_requested,
    ReviewRequested: review_requested,
    OrderPlaced: order_placed,
    ReferralCodeIssued: code_issued,
    CustomerErasureRequested: erasure,
}


async def apply(runtime: Runtime, session: AsyncSession, events: list[CloudEvent[Any]]) -> None:
    now = runtime.clock.now()
    settings = _settings(runtime)
    asks: list[CloudEvent[Any]] = []
    orders: list[service.PlacedOrder] = []

    def take(event: CloudEvent[Any]) -> bool:
        data = event.data
        if isinstance(data, SurveyRequested | ReviewRequested) and not (
            isinstance(data, SurveyRequested) and data.reminder
        ):
            asks.append(event)
            return True
        if isinstance(data, OrderPlaced):
            orders.append(
                service.PlacedOrder(
                    event.tenantid, event.subject, data.order_id, data.placed_at, _items(data)
                )
            )
            return True
        return False

    async def flush() -> None:
        await service.remember_orders(session, orders)
        await service.handle_asks(session, runtime.outbox, settings, asks, now)
        orders.clear()
        asks.clear()

    async def one(event: CloudEvent[Any]) -> None:
        await ONE_BY_ONE[type(event.data)](runtime, session, event)

    await in_segments(events, take=take, flush=flush, one=one)


def _items(data: OrderPlaced) -> list[dict[str, str | None]]:
    return [
        {"sku": li.sku, "product_id": li.product_id, "title": li.title} for li in data.line_items
    ]


def _runtime(runtime: Runtime) -> Runtime:
    return runtime


CONSUMERS = (
    ConsumerGroup(
        "events",
        # One batch function for all five, so a batch's run of them is applied in sets.
        on_batch(SurveyRequested, apply),
        # feedback owns the review link, so it requests the review message itself
        on_batch(ReviewRequested, apply),
        on_batch(OrderPlaced, apply),
        # the customer's referral code is linked in feedback's messages
        on_batch(ReferralCodeIssued, apply),
        on_batch(CustomerErasureRequested, apply),
        *support.TICKET_SUBSCRIPTIONS,
        context=_runtime,
    ),
)
