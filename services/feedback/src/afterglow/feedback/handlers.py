"""Event handlers: each runs in one transaction with the inbox insert (exactly-once)."""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.events import CloudEvent, Handler
from afterglow.events.catalog import CustomerErasureRequested, OrderPlaced, ReferralCodeIssued
from afterglow.feedback import service, support
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
        items = [
            {"sku": li.sku, "product_id": li.product_id, "title": li.title}
            for li in data.line_items
        ]
        await service.remember_order(
            session, event.tenantid, event.subject, data.order_id, data.placed_at, items
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

    return {
        "afterglow.survey.requested.v1": survey_requested,
        "afterglow.review.requested.v1": review_requested,
        "afterglow.order.placed.v1": order_placed,
        "afterglow.referral.code_issued.v1": code_issued,
        "afterglow.customer.erasure_requested.v1": erasure,
        # ticket.*: support times and the CSAT after a solve (afterglow.feedback.support)
        **support.build_handlers(runtime),
    }
