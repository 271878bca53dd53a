"""REST routes: external answers, reviews and moderation, metrics, tenant settings."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import Depends, Query
from fastapi import Response as HttpResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator

from afterglow.feedback import domain, metrics, service, store, support
from afterglow.feedback.deps import Deps, FeedbackDeps
from afterglow.feedback.models import Review
from afterglow.feedback.schemas import (
    CES_EXAMPLE,
    CSAT_EXAMPLE,
    NPS_EXAMPLE,
    PRODUCT_REVIEWS_EXAMPLE,
    REVIEW_EXAMPLE,
    REVIEW_LINK_EXAMPLE,
    SETTINGS_EXAMPLE,
    SUPPORT_EXAMPLE,
    CesMetrics,
    CsatMetrics,
    ExternalResponseOut,
    NpsMetrics,
    ProductReviews,
    ReviewLinkOut,
    ReviewList,
    ReviewOut,
    SettingsOut,
    SupportMetrics,
)
from afterglow.kit import openapi
from afterglow.kit.auth import Principal, require_scope
from afterglow.kit.db import Session
from afterglow.kit.errors import NotFound, Unprocessable
from afterglow.kit.routing import service_router
from afterglow.kit.types import (
    Id,
    Instant,
    Int32,
    LongText,
    NoControls,
    NoControlsMultiline,
    ShortText,
)

router = service_router(prefix="/v1")
Reader = Annotated[Principal, Depends(require_scope("feedback:read"))]
Writer = Annotated[Principal, Depends(require_scope("feedback:write"))]


class In(BaseModel):
    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)


# --- external answers -----------------------------------------------------------------


class ExternalResponseIn(In):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "external_id": "typeform-8812",
                    "customer_id": "cus_42",
                    "kind": "nps",
                    "score": 9,
                    "comment": "Fast delivery",
                    "order_id": "pos:1001",
                    "responded_at": "2026-03-09T08:12:00Z",
                }
            ]
        }
    )
    external_id: Id
    customer_id: Id
    kind: Literal["nps", "csat", "ces"] = "nps"
    score: Int32
    comment: LongText | None = None
    order_id: ShortText | None = None
    responded_at: Instant | None = None


_EXTERNAL_EXAMPLE = {"id": 41, "external_id": "typeform-8812", "band": "promoter"}


@router.post(
    "/survey-responses",
    tags=["surveys"],
    status_code=201,
    responses=openapi.errors(
        openapi.example(201, {**_EXTERNAL_EXAMPLE, "created": True}, "Recorded"),
        openapi.example(
            200,
            {**_EXTERNAL_EXAMPLE, "created": False},
            "This external_id was recorded before: the first answer, unchanged",
            model=ExternalResponseOut,
        ),
    ),
)
async def record_response(
    body: ExternalResponseIn, response: HttpResponse, session: Session, who: Writer, deps: Deps
) -> ExternalResponseOut:
    """Record an answer collected by another tool. Repeating an ``external_id`` returns
    the first answer (200) and changes nothing."""
    try:
        domain.check_score(body.kind, body.score)
    except domain.InvalidScore as exc:
        raise Unprocessable(str(exc), field="score") from exc
    response_id, band, created = await service.record_external(
        session,
        deps.outbox,
        who.tenant_id,
        service.ExternalAnswer(
            external_id=body.external_id,
            customer_id=body.customer_id,
            kind=body.kind,
            score=body.score,
            comment=body.comment,
            order_id=body.order_id,
            responded_at=body.responded_at or deps.clock.now(),
        ),
    )
    response.status_code = 201 if created else 200
    return ExternalResponseOut(
        id=response_id,
        external_id=body.external_id,
        band=band,
        created=created,
    )


# --- reviews --------------------------------------------------------------------------


class ReviewIn(In):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "customer_id": "cus_42",
                    "rating": 5,
                    "title": "Dry all night",
                    "body": "Easy to pitch, and dry after a night of rain.",
                    "sku": "TENT-2P",
                    "order_id": "pos:1001",
                    "external_id": "yotpo-55120",
                }
            ]
        }
    )
    customer_id: Id
    rating: int = Field(ge=1, le=5)
    title: ShortText | None = None
    body: LongText | None = None
    sku: ShortText | None = None
    product_id: ShortText | None = None
    order_id: ShortText | None = None
    external_id: ShortText | None = None

    @model_validator(mode="after")
    def _product(self) -> ReviewIn:
        if not self.sku and not self.product_id:
            raise ValueError("sku or product_id is required")
        return self


def review_out(r: Review) -> ReviewOut:
    return ReviewOut(
        id=r.id,
        customer_id=r.customer_id,
        order_id=r.order_id,
        sku=r.sku,
        product_id=r.product_id,
        rating=r.rating,
        title=r.title,
        body=r.body,
        status=r.status,
        moderation_reasons=r.moderation_reasons.split(",") if r.moderation_reasons else [],
        verified=r.verified,
        source=r.source,
        created_at=r.created_at.isoformat(),
        published_at=r.published_at.isoformat() if r.published_at else None,
    )


@router.post(
    "/reviews",
    tags=["reviews"],
    status_code=201,
    responses=openapi.errors(
        openapi.example(201, REVIEW_EXAMPLE, "Stored (and moderated)"),
        openapi.example(
            200,
            REVIEW_EXAMPLE,
            "This external_id was recorded before: that review",
            model=ReviewOut,
        ),
    ),
)
async def create_review(
    body: ReviewIn, response: HttpResponse, session: Session, who: Writer, deps: Deps
) -> ReviewOut:
    """Store a review collected elsewhere. Verified when the order was seen for this
    customer. Moderated on arrival; ``review.submitted`` always, ``review.published``
    when it goes live. The rating never decides moderation or incentives."""
    if body.sku is None and body.product_id is None:
        raise Unprocessable("sku or product_id is required", field="sku")
    review, created = await service.submit_review(
        session,
        deps.outbox,
        who.tenant_id,
        service.NewReview(
            customer_id=body.customer_id,
            rating=body.rating,
            title=body.title or None,
            body=body.body or None,
            sku=body.sku,
            product_id=body.product_id,
            order_id=body.order_id,
            source="api",
            dedupe_key=f"ext:{body.external_id}" if body.external_id else None,
        ),
        deps.clock.now(),
    )
    response.status_code = 201 if created else 200
    return review_out(review)


@router.get(
    "/reviews", tags=["reviews"], responses=openapi.example(200, {"reviews": [REVIEW_EXAMPLE]})
)
async def list_reviews(
    session: Session,
    who: Reader,
    status: Literal["pending", "published", "rejected"] = "pending",
    limit: int = Query(50, ge=1, le=200),
) -> ReviewList:
    """The moderation queue (``status=pending``) or any other state, newest first."""
    rows = await store.reviews_in_status(session, who.tenant_id, status, limit)
    return ReviewList(reviews=[review_out(r) for r in rows])


@router.get(
    "/reviews/{review_id}",
    tags=["reviews"],
    responses=openapi.errors(
        openapi.example(200, REVIEW_EXAMPLE),
        openapi.error(
            404, "No such review for this tenant", "not_found", "no such review", field="review_id"
        ),
    ),
)
async def get_review(review_id: Id, session: Session, who: Reader) -> ReviewOut:
    review = await store.review(session, who.tenant_id, review_id)
    if review is None:
        raise NotFound("no such review", field="review_id")
    return review_out(review)


class ModerationIn(In):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"status": "rejected", "reason": "shares a phone number"}]}
    )
    status: Literal["pending", "published", "rejected"]
    reason: Annotated[str, StringConstraints(max_length=500), NoControlsMultiline] | None = None


async def _moderate(
    review_id: Id, body: ModerationIn, deps: FeedbackDeps, session: Session, who: Principal
) -> ReviewOut:
    review = await service.moderate_review(
        session,
        deps.outbox,
        who.tenant_id,
        review_id,
        body.status,
        body.reason,
        deps.clock.now(),
    )
    if review is None:
        raise NotFound("no such review", field="review_id")
    return review_out(review)


_MODERATED = openapi.errors(
    openapi.example(200, REVIEW_EXAMPLE),
    openapi.error(
        404, "No such review for this tenant", "not_found", "no such review", field="review_id"
    ),
)


@router.post("/reviews/{review_id}/moderation", tags=["reviews"], responses=_MODERATED)
async def moderate_post(
    review_id: Id, body: ModerationIn, session: Session, who: Writer, deps: Deps
) -> ReviewOut:
    """Publish, reject or hold a review. Publishing emits ``review.published`` once."""
    return await _moderate(review_id, body, deps, session, who)


@router.patch("/reviews/{review_id}/moderation", tags=["reviews"], responses=_MODERATED)
async def moderate_patch(
    review_id: Id, body: ModerationIn, session: Session, who: Writer, deps: Deps
) -> ReviewOut:
    return await _moderate(review_id, body, deps, session, who)


@router.get(
    "/products/{product}/reviews",
    tags=["reviews"],
    responses=openapi.example(200, PRODUCT_REVIEWS_EXAMPLE),
)
async def product_reviews(
    product: Id,
    session: Session,
    who: Reader,
    limit: int = Query(20, ge=1, le=100),
    # Bounded as the bigint OFFSET PostgreSQL takes (2**64 answered 500).
    offset: int = Query(0, ge=0, lt=2**63),
) -> ProductReviews:
    """Published reviews of a product with their average and 1-5 distribution.

    ``product`` is its SKU or its platform product id: a review may carry either (a
    variant without SKU, a review imported from a platform), and a shop asks by the one
    it has."""
    page = await service.product_reviews(session, who.tenant_id, product, limit, offset)
    return ProductReviews(
        product=product,
        count=page.total,
        average=page.average,
        distribution=page.distribution,
        reviews=[review_out(r) for r in page.reviews],
    )


# "|" separates the fields of a signed link.
LinkPart = Annotated[
    str, StringConstraints(min_length=1, max_length=200, pattern=r"^[^|]+$"), NoControls
]


class ReviewLinkIn(In):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"customer_id": "cus_42", "order_id": "pos:1001"}]}
    )
    customer_id: LinkPart
    order_id: LinkPart


@router.post(
    "/review-links",
    tags=["reviews"],
    status_code=201,
    responses=openapi.errors(
        openapi.example(201, REVIEW_LINK_EXAMPLE),
        openapi.error(
            404,
            "No order.placed seen for this customer and order",
            "not_found",
            "no such order for this customer",
            field="order_id",
        ),
    ),
)
async def review_link(
    body: ReviewLinkIn, session: Session, who: Writer, deps: Deps
) -> ReviewLinkOut:
    """A signed link to the review page of one order (for a review-ask message)."""
    settings = deps.settings
    items = await service.order_items(session, who.tenant_id, body.customer_id, body.order_id)
    if items is None:
        raise NotFound("no such order for this customer", field="order_id")
    token, expires = service.review_token(
        settings, who.tenant_id, body.customer_id, body.order_id, deps.clock.now()
    )
    return ReviewLinkOut(
        url=f"{settings.public_base_url.rstrip('/')}/r/{token}",
        expires_at=expires.isoformat(),
    )


# --- metrics --------------------------------------------------------------------------

Interval = Literal["day", "week", "month"]
MAX_BUCKETS = {"day": 1000, "week": 520, "month": 240}


async def _metrics(
    kind: str,
    deps: FeedbackDeps,
    session: Session,
    who: Principal,
    start: datetime | None,
    end: datetime | None,
    interval: str,
    sku: str | None,
) -> dict[str, Any]:
    now = deps.clock.now()
    end = end or now
    start = start or end - timedelta(days=30)
    if start >= end:
        raise Unprocessable("'from' must be before 'to'", field="from")
    days = {"day": 1, "week": 7, "month": 28}[interval]
    if (end - start).days / days > MAX_BUCKETS[interval]:
        raise Unprocessable("too many buckets: widen the interval", field="interval")
    return await metrics.series(
        session, metrics.Window(who.tenant_id, kind, start, end, interval, sku)
    )


FromQ = Query(None, alias="from", description="ISO 8601 with offset; default to - 30 days")
ToQ = Query(None, alias="to", description="ISO 8601 with offset, exclusive; default now")


@router.get(
    "/metrics/nps",
    tags=["metrics"],
    responses=openapi.example(200, NPS_EXAMPLE),
)
async def nps_metrics(
    session: Session,
    who: Reader,
    deps: Deps,
    start: Instant | None = FromQ,
    end: Instant | None = ToQ,
    interval: Interval = "week",
    sku: ShortText | None = None,
) -> NpsMetrics:
    """NPS per bucket and in total over [from, to). ``nps`` is null for a window with no
    answers (not 0, which would be a real, mediocre score)."""
    return NpsMetrics.model_validate(
        await _metrics("nps", deps, session, who, start, end, interval, sku)
    )


@router.get(
    "/metrics/csat",
    tags=["metrics"],
    responses=openapi.example(200, CSAT_EXAMPLE),
)
async def csat_metrics(
    session: Session,
    who: Reader,
    deps: Deps,
    start: Instant | None = FromQ,
    end: Instant | None = ToQ,
    interval: Interval = "week",
    sku: ShortText | None = None,
) -> CsatMetrics:
    """CSAT: percentage of 4-5 answers; null for an empty window."""
    return CsatMetrics.model_validate(
        await _metrics("csat", deps, session, who, start, end, interval, sku)
    )


@router.get(
    "/metrics/ces",
    tags=["metrics"],
    responses=openapi.example(200, CES_EXAMPLE),
)
async def ces_metrics(
    session: Session,
    who: Reader,
    deps: Deps,
    start: Instant | None = FromQ,
    end: Instant | None = ToQ,
    interval: Interval = "week",
    sku: ShortText | None = None,
) -> CesMetrics:
    return CesMetrics.model_validate(
        await _metrics("ces", deps, session, who, start, end, interval, sku)
    )


@router.get("/metrics/support", tags=["metrics"], responses=openapi.example(200, SUPPORT_EXAMPLE))
async def support_metrics(
    session: Session,
    who: Reader,
    deps: Deps,
    start: Instant | None = FromQ,
    end: Instant | None = ToQ,
) -> SupportMetrics:
    """Per ISO week (of the ticket's opening, UTC) and channel: first-response and
    resolution times in seconds, their median and 90th percentile (null while no ticket
    has one); next to the CSAT answer of each ticket answered in [from, to)."""
    now = deps.clock.now()
    end = end or now
    start = start or end - timedelta(days=30)
    if start >= end:
        raise Unprocessable("'from' must be before 'to'", field="from")
    if (end - start).days > 7 * MAX_BUCKETS["week"]:
        raise Unprocessable("the window is too long", field="from")
    return SupportMetrics.model_validate(
        await support.support_metrics(session, who.tenant_id, start, end)
    )


# --- tenant settings ------------------------------------------------------------------


class SettingsIn(In):
    model_config = ConfigDict(json_schema_extra={"examples": [SETTINGS_EXAMPLE]})
    name: Annotated[str, StringConstraints(max_length=100), NoControls] | None = None
    # Validated strictly: the colour lands in a <style> block, where HTML autoescaping
    # does not protect against CSS injection.
    brand_color: str | None = Field(default=None, pattern=r"^#[0-9a-fA-F]{6}$")
    manual_moderation: bool = False


@router.put("/settings", tags=["settings"], responses=openapi.example(200, SETTINGS_EXAMPLE))
async def put_settings(body: SettingsIn, session: Session, who: Writer, deps: Deps) -> SettingsOut:
    await store.save_tenant_setting(
        session,
        who.tenant_id,
        body.name,
        body.brand_color,
        body.manual_moderation,
        deps.clock.now(),
    )
    return SettingsOut(**body.model_dump())


@router.get("/settings", tags=["settings"], responses=openapi.example(200, SETTINGS_EXAMPLE))
async def get_settings(session: Session, who: Reader) -> SettingsOut:
    brand = await service.branding(session, who.tenant_id)
    return SettingsOut(
        name=brand.name, brand_color=brand.color, manual_moderation=brand.manual_moderation
    )
