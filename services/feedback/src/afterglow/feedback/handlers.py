"""Event handlers: one batch handler for every type, run in the consumer's transaction
with the inbox claim (exactly once per event id).

A batch is applied in sets (DESIGN.md, "Throughput"): the first survey requests and the
orders of a run of events are collected and written with one statement per table; any
other event (a reminder, a review request, a referral link, an erasure) first flushes
what was collected, then is applied alone, so each event sees every earlier one's
writes, as one by one. Surveys and orders touch different rows (one per request id, one
per order id), so collecting them together changes no outcome."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.events import BatchHandler, CloudEvent, Handler
from afterglow.events.batch import in_segments
from afterglow.events.catalog import (
    CustomerErasureRequested,
    OrderPlaced,
    ReferralCodeIssued,
    SurveyRequested,
)
from afterglow.feedback import service
from afterglow.feedback.settings import FeedbackSettings
from afterglow.kit.app import Runtime


def build_handlers(runtime: Runtime) -> dict[str, Handler]:
    settings = runtime.settings
    assert isinstance(settings, FeedbackSettings)

    async def survey_requested(session: AsyncSession, event: CloudEvent[Any]) -> None:
        await service.handle_survey_requested(
            session, runtime.outbox, settings, event, runtime.clock.now()
        )

    async def review_requested(session: AsyncSession, event: CloudEvent[Any]) -> None:
        await service.handle_review_requested(
            session, runtime.outbox, settings, event, runtime.clock.now()
        )

    async def order_placed(session: AsyncSession, event: CloudEvent[Any]) -> None:
        # Historical orders (history import, late delivery) are remembered too: their
        # buyers' reviews are verified purchases. Nothing here asks for anything: a
        # survey or review ask comes only from a journey, which a past order never starts.
        data: OrderPlaced = event.data
        await service.remember_order(
            session, event.tenantid, event.subject, data.order_id, data.placed_at, _items(data)
        )

    async def code_issued(session: AsyncSession, event: CloudEvent[Any]) -> None:
        data: ReferralCodeIssued = event.data
        await service.save_referral_link(
            session, event.tenantid, event.subject, data.code, data.share_url, data.issued_at
        )

    async def erasure(session: AsyncSession, event: CloudEvent[Any]) -> None:
        data: CustomerErasureRequested = event.data
        customer = None if data.scope == "tenant" else event.subject
        await service.erase(session, event.tenantid, customer)

    one_by_one = {
        "afterglow.survey.requested.v1": survey_requested,
        "afterglow.review.requested.v1": review_requested,
        "afterglow.order.placed.v1": order_placed,
        "afterglow.referral.code_issued.v1": code_issued,
        "afterglow.customer.erasure_requested.v1": erasure,
    }

    async def apply(session: AsyncSession, events: list[CloudEvent[Any]]) -> None:
        now = runtime.clock.now()
        surveys: list[CloudEvent[Any]] = []
        orders: list[service.PlacedOrder] = []

        def take(event: CloudEvent[Any]) -> bool:
            data = event.data
            if isinstance(data, SurveyRequested) and not data.reminder:
                surveys.append(event)
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
            await service.handle_survey_requests(session, runtime.outbox, settings, surveys, now)
            orders.clear()
            surveys.clear()

        async def one(event: CloudEvent[Any]) -> None:
            await one_by_one[event.type](session, event)

        await in_segments(events, take=take, flush=flush, one=one)

    batch = BatchHandler(apply)
    return dict.fromkeys(one_by_one, batch)


def _items(data: OrderPlaced) -> list[dict[str, str | None]]:
    return [
        {"sku": li.sku, "product_id": li.product_id, "title": li.title} for li in data.line_items
    ]
