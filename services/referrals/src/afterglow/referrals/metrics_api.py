"""``GET /v1/metrics/referrals``: invitations, conversions, revenue and rejections by
reason over a period of whole UTC days (definitions in :mod:`.metrics`)."""

from __future__ import annotations

from datetime import date
from typing import Annotated

from fastapi import Depends
from pydantic import BaseModel, ConfigDict, Field

from afterglow.kit.auth import Principal, require_scope
from afterglow.kit.db import Session
from afterglow.kit.period import BAD_PERIOD, Period, period_query
from afterglow.kit.routing import service_router
from afterglow.referrals.metrics import referral_metrics

router = service_router(prefix="/v1/metrics", tags=["referrals"])


class Rejection(BaseModel):
    reason: str
    referrals: int


class ReferralMetrics(BaseModel):
    model_config = ConfigDict(
        populate_by_name=True,
        json_schema_extra={
            "examples": [
                {
                    "from": "2026-01-01",
                    "to": "2026-03-31",
                    "invited": 40,
                    "referred_orders": 17,
                    "conversions": 12,
                    "pending": 2,
                    "held": 1,
                    "rejected": 2,
                    "rejection_reasons": [{"reason": "self_referral", "referrals": 2}],
                    "revenue": {"USD": 106800},
                    "pending_revenue": {"USD": 26700},
                }
            ]
        },
    )
    from_: date = Field(alias="from")
    to: date
    invited: int = Field(description="Advocates first invited in the period")
    referred_orders: int = Field(description="Referred orders placed in the period")
    conversions: int = Field(description="Of those, confirmed")
    pending: int
    held: int
    rejected: int
    rejection_reasons: list[Rejection]
    revenue: dict[str, int] = Field(description="Confirmed, net of refunds, per currency")
    pending_revenue: dict[str, int]


@router.get(
    "/referrals",
    summary="Invitations, conversions, revenue, rejections by reason (referrals:read)",
    response_model=ReferralMetrics,
    responses=BAD_PERIOD,
)
async def get_referral_metrics(
    session: Session,
    period: Annotated[Period, Depends(period_query)],
    principal: Principal = Depends(require_scope("referrals:read")),
) -> ReferralMetrics:
    data = await referral_metrics(session, principal.tenant_id, period)
    return ReferralMetrics(from_=period.first, to=period.last, **data)
