"""``GET /v1/metrics/points``: points issued, redeemed and expired over a period of
whole UTC days, and the outstanding liability (definitions in :func:`.store.points_series`)."""

from __future__ import annotations

from datetime import date
from typing import Annotated, Literal

from fastapi import Depends
from pydantic import BaseModel, ConfigDict, Field

from afterglow.kit.auth import Principal, require_scope
from afterglow.kit.db import Session
from afterglow.kit.errors import Unprocessable
from afterglow.kit.period import BAD_PERIOD, Period, period_query
from afterglow.kit.routing import service_router
from afterglow.loyalty.deps import Deps

router = service_router(prefix="/v1/metrics", tags=["metrics"])

Interval = Literal["day", "week", "month"]
MAX_DAY_BUCKETS = 400  # a daily series longer than this is unreadable as a chart


class Amount(BaseModel):
    amount: int
    currency: str


class PointsBucket(BaseModel):
    start: date
    issued: int
    redeemed: int
    expired: int


class PointsMetrics(BaseModel):
    model_config = ConfigDict(
        populate_by_name=True,
        json_schema_extra={
            "examples": [
                {
                    "from": "2026-01-01",
                    "to": "2026-03-31",
                    "interval": "month",
                    "issued": 18120,
                    "redeemed": 6450,
                    "expired": 910,
                    "outstanding": 106300,
                    "outstanding_liability": {"amount": 106300, "currency": "USD"},
                    "series": [
                        {"start": "2026-01-01", "issued": 6040, "redeemed": 2150, "expired": 300}
                    ],
                }
            ]
        },
    )
    from_: date = Field(alias="from")
    to: date
    interval: Interval
    issued: int = Field(description="Points that became spendable in the period")
    redeemed: int
    expired: int
    outstanding: int = Field(description="Available balances now (not of the period)")
    outstanding_liability: Amount = Field(description="outstanding x the point value, now")
    series: list[PointsBucket]


@router.get(
    "/points",
    summary="Points issued, redeemed, expired over a period; liability now (loyalty:read)",
    response_model=PointsMetrics,
    responses=BAD_PERIOD,
)
async def points_metrics(
    session: Session,
    deps: Deps,
    period: Annotated[Period, Depends(period_query)],
    interval: Interval = "month",
    principal: Principal = Depends(require_scope("loyalty:read")),
) -> PointsMetrics:
    if interval == "day" and (period.last - period.first).days >= MAX_DAY_BUCKETS:
        raise Unprocessable("too many days: choose week or month", field="interval")
    data = await deps.loyalty.points_metrics(
        session, principal.tenant_id, period.start, period.end, interval
    )
    return PointsMetrics(from_=period.first, to=period.last, **data)
