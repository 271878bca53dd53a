"""Use cases shared by the pages, the API and the event handlers. Each runs inside the
caller's transaction (the entrypoint commits) and adds the events it causes to the
outbox in that same transaction."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.events import CloudEvent, Outbox, derived_event_id
from afterglow.events.catalog import (
    MessageRequested,
    ReviewPublished,
    ReviewRequested,
    ReviewSubmitted,
    SurveyRequested,
    SurveyResponded,
    SurveySent,
)
from afterglow.feedback import domain, store
from afterglow.feedback.models import OrderItem, Response, Review, Survey, TenantSetting
from afterglow.feedback.settings import FeedbackSettings

SOURCE = "feedback"

DEFAULT_NAME = "our shop"
DEFAULT_COLOR = "#3b5bdb"


@dataclass(frozen=True)
class Branding:
    name: str
    color: str
    manual_moderation: bool


async def branding(session: AsyncSession, tenant_id: str) -> Branding:
    return _branding(await store.tenant_setting(session, tenant_id))


async def brandings(session: AsyncSession, tenant_ids: set[str]) -> dict[str, Branding]:
    """:func:`branding` of several tenants with one query."""
    rows = await store.tenant_settings(session, tenant_ids)
    return {t: _branding(rows.get(t)) for t in tenant_ids}


def _branding(row: TenantSetting | None) -> Branding:
    return Branding(
        name=(row.name if row and row.name else DEFAULT_NAME),
        color=(row.brand_color if row and row.brand_color else DEFAULT_COLOR),
        manual_moderation=bool(row and row.manual_moderation),
    )


def survey_token(settings: FeedbackSettings, survey: Survey) -> str:
    return domain.sign(
        settings.feedback_token_secret, "s", [survey.tenant_id, survey.id], survey.expires_at
    )


def survey_url(settings: FeedbackSettings, token: str) -> str:
    return f"{settings.public_base_url.rstrip('/')}/s/{token}"


def review_token(
    settings: FeedbackSettings, tenant_id: str, customer_id: str, order_id: str, now: datetime
) -> tuple[str, datetime]:
    expires = now + timedelta(days=settings.feedback_review_link_validity_days)
    token = domain.sign(
        settings.feedback_token_secret, "r", [tenant_id, customer_id, order_id], expires
    )
    return token, expires


# --- surveys --------------------------------------------------------------------------


async def handle_survey_requested(
    session: AsyncSession,
    outbox: Outbox,
    settings: FeedbackSettings,
    event: CloudEvent[SurveyRequested],
    now: datetime,
) -> None:
    data: SurveyRequested = event.data
    tenant, customer = event.tenantid, event.subject
    if data.reminder:
        await _remind(session, outbox, settings, event, now)
        return
    survey = Survey(
        id=str(uuid.uuid4()),
        tenant_id=tenant,
        customer_id=customer,
        request_id=data.request_id,
        kind=data.kind,
        order_id=data.order_id,
        ticket_id=data.ticket_id,
        sent_at=now,
        expires_at=now + timedelta(days=settings.feedback_survey_validity_days),
    )
    # One survey per request id, whatever the journey repeats under a new event id.
    if not await store.insert_survey(session, survey):
        return
    await _send(session, outbox, settings, survey, data.request_id, reminder=False, now=now)


async def handle_asks(
    session: AsyncSession,
    outbox: Outbox,
    settings: FeedbackSettings,
    events: list[CloudEvent[Any]],
    now: datetime,
) -> None:
    """:func:`handle_survey_requested` (first requests, no reminders) and
    :func:`handle_review_requested` for a run of them at once, with their outcome one
    by one: one insert for the surveys (a repeated request id keeps the first, in
    order), one read of which reminded orders were reviewed already, one read of the
    tenants' branding, and one outbox insert for every message and survey.sent, in
    the events' order. Reviews are written by the API, never by these events, so one
    read before the run sees what each event would have seen."""
    if not events:
        return
    validity = timedelta(days=settings.feedback_survey_validity_days)
    surveys: dict[str, Survey] = {}  # by event id
    reminded: set[tuple[str, str, str]] = set()
    for e in events:
        data = e.data
        if isinstance(data, SurveyRequested):
            surveys[e.id] = Survey(
                id=str(uuid.uuid4()),
                tenant_id=e.tenantid,
                customer_id=e.subject,
                request_id=data.request_id,
                kind=data.kind,
                order_id=data.order_id,
                ticket_id=data.ticket_id,
                sent_at=now,
                expires_at=now + validity,
            )
        elif data.reminder:
            reminded.add((e.tenantid, e.subject, data.order_id))
    created = await store.insert_surveys(session, list(surveys.values())) if surveys else set()
    reviewed = await store.reviewed_orders(session, reminded)
    tenants = {e.tenantid for e in events if e.id not in surveys or surveys[e.id].id in created}
    brands = await brandings(session, tenants) if tenants else {}
    out: list[CloudEvent[Any]] = []
    for e in events:
        survey = surveys.get(e.id)
        if survey is not None:
            if survey.id in created:
                out += _survey_events(
                    settings, brands[e.tenantid], survey, survey.request_id, False, now
                )
        elif not (e.data.reminder and (e.tenantid, e.subject, e.data.order_id) in reviewed):
            out.append(_review_message(settings, brands[e.tenantid], e, now))
    await outbox.add(session, *out)


async def handle_review_requested(
    session: AsyncSession,
    outbox: Outbox,
    settings: FeedbackSettings,
    event: CloudEvent[ReviewRequested],
    now: datetime,
) -> None:
    """The journey asks for a review; feedback owns the signed link, so it requests the
    message. Ids derive from the request, so a repeated request asks once."""
    data: ReviewRequested = event.data
    tenant, customer = event.tenantid, event.subject
    if data.reminder and await store.has_review_of_order(session, tenant, customer, data.order_id):
        return  # a reminder to someone who already reviewed the order is noise
    brand = await branding(session, tenant)
    await outbox.add(session, _review_message(settings, brand, event, now))


def _review_message(
    settings: FeedbackSettings, brand: Branding, event: CloudEvent[ReviewRequested], now: datetime
) -> CloudEvent[Any]:
    """The message request that carries a review link."""
    data = event.data
    tenant, customer = event.tenantid, event.subject
    token, expires = review_token(settings, tenant, customer, data.order_id, now)
    message = MessageRequested(
        request_id=f"feedback:review:{data.request_id}",
        kind="review_reminder" if data.reminder else "review_request",
        category="marketing",
        variables={
            "review_url": f"{settings.public_base_url.rstrip('/')}/r/{token}",
            "expires_at": expires.isoformat(),
            "tenant_name": brand.name,
        },
        order_id=data.order_id,
    )
    return CloudEvent.new(
        message,
        id=derived_event_id(SOURCE, "review-message", tenant, data.request_id),
        tenant_id=tenant,
        subject=customer,
        source=SOURCE,
    )


async def _remind(
    session: AsyncSession,
    outbox: Outbox,
    settings: FeedbackSettings,
    event: CloudEvent[Any],
    now: datetime,
) -> None:
    data: SurveyRequested = event.data
    tenant = event.tenantid
    original = None
    if data.reminder_of:
        original = await store.lock_survey_of_request(session, tenant, data.reminder_of)
    if original is None:
        # No survey to remind of (the original was lost or never requested): a reminder
        # is then a plain request; the customer still gets one survey.
        await handle_survey_requested(
            session,
            outbox,
            settings,
            event.model_copy(update={"data": data.model_copy(update={"reminder": False})}),
            now,
        )
        return
    first = await store.insert_reminder(session, tenant, data.request_id, original.id, now)
    # Answered or expired surveys get no reminder: nagging someone who answered is noise.
    if not first or original.first_answered_at is not None or original.expires_at <= now:
        return
    original.reminders_sent += 1
    await _send(session, outbox, settings, original, data.request_id, reminder=True, now=now)


async def _send(
    session: AsyncSession,
    outbox: Outbox,
    settings: FeedbackSettings,
    survey: Survey,
    request_id: str,
    *,
    reminder: bool,
    now: datetime,
) -> None:
    brand = await branding(session, survey.tenant_id)
    await outbox.add(session, *_survey_events(settings, brand, survey, request_id, reminder, now))


def _survey_events(
    settings: FeedbackSettings,
    brand: Branding,
    survey: Survey,
    request_id: str,
    reminder: bool,
    now: datetime,
) -> list[CloudEvent[Any]]:
    """The message request that carries a survey's link, and the survey.sent event."""
    token = survey_token(settings, survey)
    scale = domain.SCALES[survey.kind]
    message = MessageRequested(
        # Derived from the survey request: a retried request asks for the same message.
        request_id=f"feedback:survey:{request_id}",
        kind="survey_reminder" if reminder else "survey_invite",
        category="marketing",
        variables={
            "survey_url": survey_url(settings, token),
            "survey_id": survey.id,
            "survey_kind": survey.kind,
            "question": scale.question.format(tenant=brand.name),
            "scale_low": scale.low,
            "scale_high": scale.high,
            "expires_at": survey.expires_at.isoformat(),
            "tenant_name": brand.name,
        },
        order_id=survey.order_id,
    )
    sent = SurveySent(
        survey_id=survey.id,
        request_id=request_id,
        kind=survey.kind,
        sent_at=now,
        expires_at=survey.expires_at,
        order_id=survey.order_id,
        reminder=reminder,
    )
    common = {"tenant_id": survey.tenant_id, "subject": survey.customer_id, "source": SOURCE}
    return [
        CloudEvent.new(
            message, id=derived_event_id(SOURCE, "message", survey.tenant_id, request_id), **common
        ),
        CloudEvent.new(
            sent, id=derived_event_id(SOURCE, "sent", survey.tenant_id, request_id), **common
        ),
    ]


class SurveyNotFound(Exception):
    pass


async def load_survey(
    session: AsyncSession, settings: FeedbackSettings, token: str, now: datetime, lock: bool
) -> Survey:
    """The survey a link names. Raises domain.BadToken (404) or domain.ExpiredToken (410)."""
    parts, _ = domain.verify(settings.feedback_token_secret, "s", token, now)
    if len(parts) != 2:
        raise domain.BadToken("wrong shape")
    tenant, survey_id = parts
    survey = await store.survey(session, tenant, survey_id, lock=lock)
    if survey is None:
        raise domain.BadToken("unknown survey")
    if survey.expires_at <= now:
        raise domain.ExpiredToken("survey expired")
    return survey


async def current_answer(session: AsyncSession, survey: Survey) -> Response | None:
    return await store.current_response(session, survey)


@dataclass(frozen=True)
class AnswerOutcome:
    band: str
    is_update: bool
    changed: bool  # False for a repeated identical submission (double click)


async def answer_survey(
    session: AsyncSession,
    outbox: Outbox,
    settings: FeedbackSettings,
    survey: Survey,
    score: int,
    comment: str | None,
    now: datetime,
) -> AnswerOutcome:
    """Store the answer (the caller holds the survey row lock). Raises
    domain.InvalidScore or domain.AnswerLocked."""
    domain.check_score(survey.kind, score)
    band = domain.band(survey.kind, score)
    window = timedelta(hours=settings.feedback_change_window_hours)
    previous = await current_answer(session, survey)
    if previous is not None and previous.score == score and previous.comment == comment:
        # The same answer again (double click, back button, resubmit): nothing changes.
        return AnswerOutcome(band, is_update=False, changed=False)
    if not domain.can_change(survey.first_answered_at, now, window):
        raise domain.AnswerLocked("the answer can no longer be changed")
    is_update = previous is not None
    if previous is not None:
        await store.supersede(session, previous)
    row = Response(
        tenant_id=survey.tenant_id,
        survey_id=survey.id,
        customer_id=survey.customer_id,
        kind=survey.kind,
        score=score,
        comment=comment,
        order_id=survey.order_id,
        source="page",
        responded_at=now,
    )
    if survey.first_answered_at is None:
        survey.first_answered_at = now
    survey.last_answered_at = now
    await store.add(session, row)
    await outbox.add(
        session,
        CloudEvent.new(
            SurveyResponded(
                survey_id=survey.id,
                kind=survey.kind,
                score=score,
                band=band,
                comment=comment,
                responded_at=now,
                is_update=is_update,
                order_id=survey.order_id,
                request_id=survey.request_id,
            ),
            tenant_id=survey.tenant_id,
            subject=survey.customer_id,
            source=SOURCE,
            id=derived_event_id(SOURCE, "responded", survey.tenant_id, str(row.id)),
        ),
    )
    return AnswerOutcome(band, is_update=is_update, changed=True)


async def referral_link(session: AsyncSession, tenant_id: str, customer_id: str) -> str | None:
    row = await store.referral_link(session, tenant_id, customer_id)
    return row.share_url if row else None


@dataclass(frozen=True)
class ExternalAnswer:
    external_id: str
    customer_id: str
    kind: str
    score: int
    comment: str | None
    order_id: str | None
    responded_at: datetime


async def record_external(
    session: AsyncSession, outbox: Outbox, tenant_id: str, answer: ExternalAnswer
) -> tuple[int, str, bool]:
    """Store an answer collected elsewhere; returns (response id, its band, created). A
    repeated external id returns the first answer untouched, and that answer's band."""
    band = domain.band(answer.kind, domain.check_score(answer.kind, answer.score))
    new_id = await store.insert_external_response(
        session,
        tenant_id,
        external_id=answer.external_id,
        customer_id=answer.customer_id,
        kind=answer.kind,
        score=answer.score,
        comment=answer.comment,
        order_id=answer.order_id,
        responded_at=answer.responded_at,
    )
    if new_id is None:
        first_id, kind, score = await store.external_response(
            session, tenant_id, answer.external_id
        )
        return first_id, domain.band(kind, score), False
    await outbox.add(
        session,
        CloudEvent.new(
            SurveyResponded(
                survey_id=f"ext:{answer.external_id}",
                kind=answer.kind,
                score=answer.score,
                band=band,
                comment=answer.comment,
                responded_at=answer.responded_at,
                order_id=answer.order_id,
            ),
            tenant_id=tenant_id,
            subject=answer.customer_id,
            source=SOURCE,
            id=derived_event_id(SOURCE, "responded-ext", tenant_id, answer.external_id),
        ),
    )
    return new_id, band, True


# --- reviews --------------------------------------------------------------------------


async def order_items(
    session: AsyncSession, tenant_id: str, customer_id: str, order_id: str
) -> list[OrderItem] | None:
    """The items of an order if it was seen for this customer, else None."""
    order = await store.order(session, tenant_id, order_id)
    if order is None or order.customer_id != customer_id:
        return None
    return await store.items_of_order(session, tenant_id, order_id)


@dataclass(frozen=True)
class NewReview:
    customer_id: str
    rating: int
    title: str | None
    body: str | None
    sku: str | None
    product_id: str | None
    order_id: str | None
    source: str
    dedupe_key: str | None


async def submit_review(
    session: AsyncSession, outbox: Outbox, tenant_id: str, new: NewReview, now: datetime
) -> tuple[Review, bool]:
    """Moderate, store and announce a review; returns (review, created)."""
    if new.dedupe_key is not None:
        existing = await store.review_by_dedupe_key(session, tenant_id, new.dedupe_key)
        if existing is not None:
            return existing, False
    verified = False
    if new.order_id:
        verified = await order_items(session, tenant_id, new.customer_id, new.order_id) is not None
    brand = await branding(session, tenant_id)
    verdict = domain.moderate(new.title, new.body, manual=brand.manual_moderation)
    review = Review(
        id=str(uuid.uuid4()),
        tenant_id=tenant_id,
        customer_id=new.customer_id,
        order_id=new.order_id,
        sku=new.sku,
        product_id=new.product_id,
        rating=new.rating,
        title=new.title,
        body=new.body,
        status=verdict.status,
        moderation_reasons=",".join(verdict.reasons) or None,
        verified=verified,
        source=new.source,
        dedupe_key=new.dedupe_key,
        created_at=now,
        moderated_at=now if verdict.status != "pending" else None,
        published_at=now if verdict.status == "published" else None,
    )
    # A concurrent submission with the same dedupe key fails here on the unique index
    # and the whole transaction rolls back: no half-stored review.
    await store.add(session, review)
    events: list[CloudEvent[Any]] = [
        CloudEvent.new(
            ReviewSubmitted(
                review_id=review.id,
                rating=review.rating,
                sku=review.sku,
                product_id=review.product_id,
                order_id=review.order_id,
                verified=verified,
                submitted_at=now,
            ),
            tenant_id=tenant_id,
            subject=review.customer_id,
            source=SOURCE,
            id=derived_event_id(SOURCE, "review-submitted", tenant_id, review.id),
        )
    ]
    if review.status == "published":
        events.append(_published_event(review, now))
    await outbox.add(session, *events)
    return review, True


def _published_event(review: Review, now: datetime) -> CloudEvent[Any]:
    return CloudEvent.new(
        ReviewPublished(
            review_id=review.id,
            rating=review.rating,
            sku=review.sku,
            product_id=review.product_id,
            published_at=now,
        ),
        tenant_id=review.tenant_id,
        subject=review.customer_id,
        source=SOURCE,
        # One published event per review, however often a moderator flips it back.
        id=derived_event_id(SOURCE, "review-published", review.tenant_id, review.id),
    )


@dataclass(frozen=True)
class ProductReviewPage:
    total: int  # published reviews of the product, all pages
    average: float | None
    distribution: dict[str, int]
    reviews: list[Review]


async def product_reviews(
    session: AsyncSession, tenant_id: str, product: str, limit: int, offset: int
) -> ProductReviewPage:
    """A page of a product's published reviews, with the summary of all of them."""
    counts = await store.published_rating_counts(session, tenant_id, product)
    average, distribution, total = domain.rating_summary(counts)
    rows = await store.published_reviews(session, tenant_id, product, limit, offset)
    return ProductReviewPage(total, average, distribution, rows)


async def moderate_review(
    session: AsyncSession,
    outbox: Outbox,
    tenant_id: str,
    review_id: str,
    status: str,
    reason: str | None,
    now: datetime,
) -> Review | None:
    review = await store.lock_review(session, tenant_id, review_id)
    if review is None:
        return None
    review.status = status
    review.moderated_at = now
    review.moderation_reasons = reason or f"manual:{status}"
    if status == "published" and review.published_at is None:
        review.published_at = now
        await outbox.add(session, _published_event(review, now))
    await store.flush(session)
    return review


# --- orders, referrals, erasure -------------------------------------------------------


async def remember_order(
    session: AsyncSession,
    tenant_id: str,
    customer_id: str,
    order_id: str,
    placed_at: datetime,
    items: list[dict[str, str | None]],
) -> None:
    inserted = await store.insert_order(session, tenant_id, order_id, customer_id, placed_at)
    if not inserted or not items:
        return
    await store.insert_order_items(session, tenant_id, order_id, items)


@dataclass(frozen=True)
class PlacedOrder:
    tenant_id: str
    customer_id: str
    order_id: str
    placed_at: datetime
    items: list[dict[str, str | None]]


async def remember_orders(session: AsyncSession, orders: list[PlacedOrder]) -> None:
    """:func:`remember_order` for many orders: one insert for the orders (an order seen
    before, or twice in the list, keeps its first record) and one for the items of the
    orders that were new."""
    if not orders:
        return
    rows = [
        {
            "tenant_id": o.tenant_id,
            "order_id": o.order_id,
            "customer_id": o.customer_id,
            "placed_at": o.placed_at,
        }
        for o in orders
    ]
    new = await store.insert_orders(session, rows)
    items = []
    for o in orders:
        if (o.tenant_id, o.order_id) not in new:
            continue
        new.discard((o.tenant_id, o.order_id))  # a repeat in the list is not new again
        items += [
            {"tenant_id": o.tenant_id, "order_id": o.order_id, "line_no": i, **item}
            for i, item in enumerate(o.items)
        ]
    if items:
        await store.insert_items(session, items)


async def save_referral_link(
    session: AsyncSession, tenant_id: str, customer_id: str, code: str, url: str, at: datetime
) -> None:
    await store.save_referral_link(session, tenant_id, customer_id, code, url, at)


ERASED = store.ERASED  # the customer id of erased rows


async def erase(session: AsyncSession, tenant_id: str, customer_id: str | None) -> None:
    """Wipe what identifies or was written by the customer (comments, review text, the
    link between customer and rows); keep scores and ratings so aggregates stay true.
    ``customer_id=None`` erases the whole tenant."""

    await store.erase(session, tenant_id, customer_id)


async def reviewed_keys(session: AsyncSession, tenant_id: str, order_id: str) -> set[str]:
    return await store.reviewed_keys(session, tenant_id, order_id)
