"""Event handlers: each runs in one transaction with the inbox insert (exactly-once)."""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.events import CloudEvent, ConsumerGroup, on
from afterglow.events.catalog import (
    CustomerErasureRequested,
    OrderPlaced,
    ReferralCodeIssued,
    ReviewRequested,
    SurveyRequested,
)
from afterglow.feedback import service, support
from afterglow.feedback.settings import FeedbackSettings
from afterglow.kit.app import Runtime


def _settings(runtime: Runtime) -> FeedbackSettings:
    settings = runtime.settings
    assert isinstance(settings, FeedbackSettings)
    return settings


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
    items = [
        {"sku": li.sku, "product_id": li.product_id, "title": li.title} for li in data.line_items
    ]
    await service.remember_order(
        session, event.tenantid, event.subject, data.order_id, data.placed_at, items
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


def _runtime(runtime: Runtime) -> Runtime:
    return runtime


CONSUMERS = (
    ConsumerGroup(
        "events",
        on(SurveyRequested, survey_requested),
        # feedback owns the review link, so it requests the review message itself
        on(ReviewRequested, review_requested),
        on(OrderPlaced, order_placed),
        # the customer's referral code is linked in feedback's messages
        on(ReferralCodeIssued, code_issued),
        on(CustomerErasureRequested, erasure),
        *support.TICKET_SUBSCRIPTIONS,
        context=_runtime,
    ),
)
