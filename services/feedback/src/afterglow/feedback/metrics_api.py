"""``GET /v1/metrics/reviews``: review volume and average rating over a period of whole
UTC days (definitions in :mod:`.metrics`)."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

from fastapi import Depends
from pydantic import BaseModel, ConfigDict, Field

from afterglow.feedback import metrics
from afterglow.kit.auth import Principal, require_scope
from afterglow.kit.db import Session
from afterglow.kit.errors import Unprocessable
from afterglow.kit.period import BAD_PERIOD, Period, period_query
from afterglow.kit.routing import service_router

router = service_router(prefix="/v1/metrics", tags=["metrics"])

# A bucket is a calendar day, ISO week (from Monday) or month, in UTC.
Interval = Literal["day", "week", "month"]
MAX_DAY_BUCKETS = 400  # a daily series longer than this is unreadable as a chart


class ReviewTotals(BaseModel):
    reviews: int = Field(description="Submitted in the period, whatever their moderation")
    published: int
    pending: int
    rejected: int
    average_rating: float | None = Field(description="Of all but rejected; null if none")
    ratings: dict[str, int] = Field(description="Reviews per star rating 1-5, rejected aside")


class ReviewBucket(BaseModel):
    start: date
    reviews: int
    published: int
    average_rating: float | None


class ReviewMetrics(BaseModel):
    model_config = ConfigDict(
        populate_by_name=True,
        json_schema_extra={
            "examples": [
                {
                    "from": "2026-01-01",
                    "to": "2026-01-31",
                    "interval": "week",
                    "total": {
                        "reviews": 3,
                        "published": 2,
                        "pending": 1,
                        "rejected": 0,
                        "average_rating": 4.0,
                        "ratings": {"1": 0, "2": 0, "3": 1, "4": 1, "5": 1},
                    },
                    "series": [
                        {"start": "2025-12-29", "reviews": 3, "published": 2, "average_rating": 4.0}
                    ],
                }
            ]
        },
    )
    from_: date = Field(alias="from")
    to: date
    interval: Interval
    total: ReviewTotals
    series: list[ReviewBucket]


@router.get(
    "/reviews",
    summary="Review volume and average rating over a period (feedback:read)",
    response_model=ReviewMetrics,
    responses=BAD_PERIOD,
)
async def review_metrics(
    session: Session,
    period: Annotated[Period, Depends(period_query)],
    interval: Interval = "week",
    principal: Principal = Depends(require_scope("feedback:read")),
) -> ReviewMetrics:
    """Per bucket (``interval``) and in total: reviews submitted, published, and the
    average rating of all but rejected ones (a low rating is never left out)."""
    if interval == "day" and (period.last - period.first).days >= MAX_DAY_BUCKETS:
        raise Unprocessable("too many days: choose week or month", field="interval")
    data = await metrics.review_series(
        session, principal.tenant_id, period.start, period.end, interval
    )
    return ReviewMetrics(from_=period.first, to=period.last, **data)
