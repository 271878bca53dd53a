"""REST routes: external answers, reviews and moderation, metrics, tenant settings."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Annotated, Any, Literal

from fastapi import Depends, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, model_validator
from sqlalchemy import func, or_, select

from afterglow.feedback import domain, metrics, service, support
from afterglow.feedback.models import Review, TenantSetting
from afterglow.feedback.settings import FeedbackSettings
from afterglow.kit import openapi
from afterglow.kit.app import runtime_of
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


@router.post(
    "/survey-responses",
    tags=["surveys"],
    status_code=201,
    responses={
        201: {
            "description": "Recorded",
            "content": {
                "application/json": {
                    "example": {
                        "id": 41,
                        "external_id": "typeform-8812",
                        "band": "promoter",
                        "created": True,
                    }
                }
            },
        },
        200: {
            "description": "This external_id was recorded before: the first answer, unchanged",
            "content": {
                "application/json": {
                    "example": {
                        "id": 41,
                        "external_id": "typeform-8812",
                        "band": "promoter",
                        "created": False,
                    }
                }
            },
        },
    },
)
async def record_response(
    body: ExternalResponseIn, request: Request, session: Session, who: Writer
) -> JSONResponse:
    """Record an answer collected by another tool. Repeating an ``external_id`` returns
    the first answer (200) and changes nothing."""
    runtime = runtime_of(request)
    try:
        domain.check_score(body.kind, body.score)
    except domain.InvalidScore as exc:
        raise Unprocessable(str(exc), field="score") from exc
    response_id, created = await service.record_external(
        session,
        runtime.outbox,
        who.tenant_id,
        service.ExternalAnswer(
            external_id=body.external_id,
            customer_id=body.customer_id,
            kind=body.kind,
            score=body.score,
            comment=body.comment,
            order_id=body.order_id,
            responded_at=body.responded_at or runtime.clock.now(),
        ),
    )
    return JSONResponse(
        {
            "id": response_id,
            "external_id": body.external_id,
            "band": domain.band(body.kind, body.score),
            "created": created,
        },
        status_code=201 if created else 200,
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


REVIEW_EXAMPLE: dict[str, Any] = {
    "id": "rv_8f2c1a7b",
    "customer_id": "cus_42",
    "order_id": "pos:1001",
    "sku": "TENT-2P",
    "product_id": None,
    "rating": 5,
    "title": "Dry all night",
    "body": "Easy to pitch, and dry after a night of rain.",
    "status": "published",
    "moderation_reasons": [],
    "verified": True,
    "source": "api",
    "created_at": "2026-03-12T18:04:00+00:00",
    "published_at": "2026-03-12T18:04:00+00:00",
}


def review_json(r: Review) -> dict[str, Any]:
    return {
        "id": r.id,
        "customer_id": r.customer_id,
        "order_id": r.order_id,
        "sku": r.sku,
        "product_id": r.product_id,
        "rating": r.rating,
        "title": r.title,
        "body": r.body,
        "status": r.status,
        "moderation_reasons": r.moderation_reasons.split(",") if r.moderation_reasons else [],
        "verified": r.verified,
        "source": r.source,
        "created_at": r.created_at.isoformat(),
        "published_at": r.published_at.isoformat() if r.published_at else None,
    }


@router.post(
    "/reviews",
    tags=["reviews"],
    status_code=201,
    responses=openapi.errors(
        openapi.example(201, REVIEW_EXAMPLE, "Stored (and moderated)"),
        openapi.example(200, REVIEW_EXAMPLE, "This external_id was recorded before: that review"),
    ),
)
async def create_review(
    body: ReviewIn, request: Request, session: Session, who: Writer
) -> JSONResponse:
    """Store a review collected elsewhere. Verified when the order was seen for this
    customer. Moderated on arrival; ``review.submitted`` always, ``review.published``
    when it goes live. The rating never decides moderation or incentives."""
    if body.sku is None and body.product_id is None:
        raise Unprocessable("sku or product_id is required", field="sku")
    runtime = runtime_of(request)
    review, created = await service.submit_review(
        session,
        runtime.outbox,
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
        runtime.clock.now(),
    )
    return JSONResponse(review_json(review), status_code=201 if created else 200)


@router.get(
    "/reviews", tags=["reviews"], responses=openapi.example(200, {"reviews": [REVIEW_EXAMPLE]})
)
async def list_reviews(
    session: Session,
    who: Reader,
    status: Literal["pending", "published", "rejected"] = "pending",
    limit: int = Query(50, ge=1, le=200),
) -> dict[str, Any]:
    """The moderation queue (``status=pending``) or any other state, newest first."""
    rows = await session.execute(
        select(Review)
        .where(Review.tenant_id == who.tenant_id, Review.status == status)
        .order_by(Review.created_at.desc())
        .limit(limit)
    )
    return {"reviews": [review_json(r) for r in rows.scalars()]}


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
async def get_review(review_id: Id, session: Session, who: Reader) -> dict[str, Any]:
    review = (
        await session.execute(
            select(Review).where(Review.tenant_id == who.tenant_id, Review.id == review_id)
        )
    ).scalar_one_or_none()
    if review is None:
        raise NotFound("no such review", field="review_id")
    return review_json(review)


class ModerationIn(In):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"status": "rejected", "reason": "shares a phone number"}]}
    )
    status: Literal["pending", "published", "rejected"]
    reason: Annotated[str, StringConstraints(max_length=500), NoControlsMultiline] | None = None


async def _moderate(
    review_id: Id, body: ModerationIn, request: Request, session: Any, who: Principal
) -> dict[str, Any]:
    runtime = runtime_of(request)
    review = await service.moderate_review(
        session,
        runtime.outbox,
        who.tenant_id,
        review_id,
        body.status,
        body.reason,
        runtime.clock.now(),
    )
    if review is None:
        raise NotFound("no such review", field="review_id")
    return review_json(review)


_MODERATED = openapi.errors(
    openapi.example(200, REVIEW_EXAMPLE),
    openapi.error(
        404, "No such review for this tenant", "not_found", "no such review", field="review_id"
    ),
)


@router.post("/reviews/{review_id}/moderation", tags=["reviews"], responses=_MODERATED)
async def moderate_post(
    review_id: Id, body: ModerationIn, request: Request, session: Session, who: Writer
) -> dict[str, Any]:
    """Publish, reject or hold a review. Publishing emits ``review.published`` once."""
    return await _moderate(review_id, body, request, session, who)


@router.patch("/reviews/{review_id}/moderation", tags=["reviews"], responses=_MODERATED)
async def moderate_patch(
    review_id: Id, body: ModerationIn, request: Request, session: Session, who: Writer
) -> dict[str, Any]:
    return await _moderate(review_id, body, request, session, who)


@router.get(
    "/products/{product}/reviews",
    tags=["reviews"],
    responses=openapi.example(
        200,
        {
            "product": "TENT-2P",
            "count": 12,
            "average": 4.6,
            "distribution": {"1": 0, "2": 0, "3": 1, "4": 3, "5": 8},
            "reviews": [REVIEW_EXAMPLE],
        },
    ),
)
async def product_reviews(
    product: Id,
    session: Session,
    who: Reader,
    limit: int = Query(20, ge=1, le=100),
    # Bounded as the bigint OFFSET PostgreSQL takes (2**64 answered 500).
    offset: int = Query(0, ge=0, lt=2**63),
) -> dict[str, Any]:
    """Published reviews of a product with their average and 1-5 distribution.

    ``product`` is its SKU or its platform product id: a review may carry either (a
    variant without SKU, a review imported from a platform), and a shop asks by the one
    it has."""
    cond = (
        Review.tenant_id == who.tenant_id,
        or_(Review.sku == product, Review.product_id == product),
        Review.status == "published",
    )
    counts = await session.execute(
        select(Review.rating, func.count()).where(*cond).group_by(Review.rating)
    )
    average, distribution, total = domain.rating_summary({r: n for r, n in counts.all()})
    rows = await session.execute(
        select(Review)
        .where(*cond)
        .order_by(Review.published_at.desc(), Review.id)
        .limit(limit)
        .offset(offset)
    )
    return {
        "product": product,
        "count": total,
        "average": average,
        "distribution": distribution,
        "reviews": [review_json(r) for r in rows.scalars()],
    }


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
        openapi.example(
            201,
            {
                "url": "https://feedback.example.com/r/eyJ0IjoiYWNtZSJ9.c2ln",
                "expires_at": "2026-05-11T10:00:00+00:00",
            },
        ),
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
    body: ReviewLinkIn, request: Request, session: Session, who: Writer
) -> dict[str, Any]:
    """A signed link to the review page of one order (for a review-ask message)."""
    runtime = runtime_of(request)
    settings = runtime.settings
    assert isinstance(settings, FeedbackSettings)
    items = await service.order_items(session, who.tenant_id, body.customer_id, body.order_id)
    if items is None:
        raise NotFound("no such order for this customer", field="order_id")
    token, expires = service.review_token(
        settings, who.tenant_id, body.customer_id, body.order_id, runtime.clock.now()
    )
    return {
        "url": f"{settings.public_base_url.rstrip('/')}/r/{token}",
        "expires_at": expires.isoformat(),
    }


# --- metrics --------------------------------------------------------------------------

Interval = Literal["day", "week", "month"]
MAX_BUCKETS = {"day": 1000, "week": 520, "month": 240}


async def _metrics(
    kind: str,
    request: Request,
    session: Any,
    who: Principal,
    start: datetime | None,
    end: datetime | None,
    interval: str,
    sku: str | None,
) -> dict[str, Any]:
    now = runtime_of(request).clock.now()
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


def _metrics_example(kind: str, bands: tuple[str, str, str], figure: str, value: float) -> Any:
    totals = {
        bands[0]: 61,
        bands[1]: 22,
        bands[2]: 17,
        "responses": 100,
        "average": 8.1,
        "sent": 240,
        "answered": 100,
        "response_rate": 0.4167,
        figure: value,
    }
    return openapi.example(
        200,
        {
            "kind": kind,
            "from": "2026-02-09T00:00:00+00:00",
            "to": "2026-03-09T00:00:00+00:00",
            "interval": "week",
            "sku": None,
            "total": totals,
            "series": [{"start": "2026-02-09T00:00:00+00:00", **totals}],
        },
    )


@router.get(
    "/metrics/nps",
    tags=["metrics"],
    responses=_metrics_example("nps", ("promoters", "passives", "detractors"), "nps", 44),
)
async def nps_metrics(
    request: Request,
    session: Session,
    who: Reader,
    start: Instant | None = FromQ,
    end: Instant | None = ToQ,
    interval: Interval = "week",
    sku: ShortText | None = None,
) -> dict[str, Any]:
    """NPS per bucket and in total over [from, to). ``nps`` is null for a window with no
    answers (not 0, which would be a real, mediocre score)."""
    return await _metrics("nps", request, session, who, start, end, interval, sku)


@router.get(
    "/metrics/csat",
    tags=["metrics"],
    responses=_metrics_example("csat", ("satisfied", "neutral", "dissatisfied"), "csat", 61.0),
)
async def csat_metrics(
    request: Request,
    session: Session,
    who: Reader,
    start: Instant | None = FromQ,
    end: Instant | None = ToQ,
    interval: Interval = "week",
    sku: ShortText | None = None,
) -> dict[str, Any]:
    """CSAT: percentage of 4-5 answers; null for an empty window."""
    return await _metrics("csat", request, session, who, start, end, interval, sku)


@router.get(
    "/metrics/ces",
    tags=["metrics"],
    responses=_metrics_example(
        "ces", ("satisfied", "neutral", "dissatisfied"), "ces_satisfied_pct", 61.0
    ),
)
async def ces_metrics(
    request: Request,
    session: Session,
    who: Reader,
    start: Instant | None = FromQ,
    end: Instant | None = ToQ,
    interval: Interval = "week",
    sku: ShortText | None = None,
) -> dict[str, Any]:
    return await _metrics("ces", request, session, who, start, end, interval, sku)


@router.get(
    "/metrics/support",
    tags=["metrics"],
    responses=openapi.example(
        200,
        {
            "from": "2026-02-09T00:00:00+00:00",
            "to": "2026-03-09T00:00:00+00:00",
            "weeks": [
                {
                    "week": "2026-02-09T00:00:00+00:00",
                    "channel": "email",
                    "tickets": 12,
                    "first_response_s": {"count": 11, "median": 1800.0, "p90": 14400.0},
                    "resolution_s": {"count": 9, "median": 86400.0, "p90": 259200.0},
                }
            ],
            "csat_by_ticket": [
                {
                    "ticket_id": "zendesk:35436",
                    "score": 5,
                    "satisfied": True,
                    "responded_at": "2026-02-12T10:00:00+00:00",
                }
            ],
        },
    ),
)
async def support_metrics(
    request: Request,
    session: Session,
    who: Reader,
    start: Instant | None = FromQ,
    end: Instant | None = ToQ,
) -> dict[str, Any]:
    """Per ISO week (of the ticket's opening, UTC) and channel: first-response and
    resolution times in seconds, their median and 90th percentile (null while no ticket
    has one); next to the CSAT answer of each ticket answered in [from, to)."""
    now = runtime_of(request).clock.now()
    end = end or now
    start = start or end - timedelta(days=30)
    if start >= end:
        raise Unprocessable("'from' must be before 'to'", field="from")
    if (end - start).days > 7 * MAX_BUCKETS["week"]:
        raise Unprocessable("the window is too long", field="from")
    return await support.support_metrics(session, who.tenant_id, start, end)


# --- tenant settings ------------------------------------------------------------------


_SETTINGS: dict[str, Any] = {
    "name": "Acme Outdoor",
    "brand_color": "#1f6f43",
    "manual_moderation": False,
}


class SettingsIn(In):
    model_config = ConfigDict(json_schema_extra={"examples": [_SETTINGS]})
    name: Annotated[str, StringConstraints(max_length=100), NoControls] | None = None
    # Validated strictly: the colour lands in a <style> block, where HTML autoescaping
    # does not protect against CSS injection.
    brand_color: str | None = Field(default=None, pattern=r"^#[0-9a-fA-F]{6}$")
    manual_moderation: bool = False


@router.put("/settings", tags=["settings"], responses=openapi.example(200, _SETTINGS))
async def put_settings(
    body: SettingsIn, request: Request, session: Session, who: Writer
) -> dict[str, Any]:
    row = await session.get(TenantSetting, who.tenant_id)
    now = runtime_of(request).clock.now()
    if row is None:
        row = TenantSetting(tenant_id=who.tenant_id)
        session.add(row)
    row.name = body.name
    row.brand_color = body.brand_color
    row.manual_moderation = body.manual_moderation
    row.updated_at = now
    return body.model_dump()


@router.get("/settings", tags=["settings"], responses=openapi.example(200, _SETTINGS))
async def get_settings(session: Session, who: Reader) -> dict[str, Any]:
    brand = await service.branding(session, who.tenant_id)
    return {
        "name": brand.name,
        "brand_color": brand.color,
        "manual_moderation": brand.manual_moderation,
    }
