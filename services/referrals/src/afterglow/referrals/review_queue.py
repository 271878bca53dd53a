"""The referrals a person has to decide on: those held for review (a burst of
conversions on one code may be fraud or a viral post), oldest first, as the console's
work queue shows them (scope ``referrals:read``). Deciding is ``POST
/v1/referrals/{id}/review``."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Query
from pydantic import BaseModel
from sqlalchemy import select

from afterglow.kit.db import Session
from afterglow.kit.routing import service_router
from afterglow.referrals.api import Reader, ReferralOut
from afterglow.referrals.models import Referral

router = service_router(prefix="/v1", tags=["referrals"])


class ReferralList(BaseModel):
    referrals: list[ReferralOut]


@router.get("/referrals", summary="Referrals in a state (held: waiting for a review)")
async def referrals_in_state(
    principal: Reader,
    session: Session,
    state: Literal["held"] = "held",
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> ReferralList:
    rows = await session.scalars(
        select(Referral)
        .where(Referral.tenant_id == principal.tenant_id, Referral.state == state)
        .order_by(Referral.placed_at, Referral.id)
        .limit(limit)
    )
    return ReferralList(
        referrals=[ReferralOut.model_validate(r, from_attributes=True) for r in rows]
    )
