"""The referrals a person has to decide on: those held for review (a burst of
conversions on one code may be fraud or a viral post), oldest first, as the console's
work queue shows them (scope ``referrals:read``). Deciding is ``POST
/v1/referrals/{id}/review``."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import Query
from pydantic import BaseModel

from afterglow.kit import openapi
from afterglow.kit.db import Session
from afterglow.kit.routing import service_router
from afterglow.referrals import store
from afterglow.referrals.api import Reader, ReferralOut

router = service_router(prefix="/v1", tags=["referrals"])


class ReferralList(BaseModel):
    referrals: list[ReferralOut]


_HELD = {
    "referrals": [
        {
            "id": "r_01",
            "code": "ADA7K2",
            "advocate_customer_id": "cus_1",
            "referee_customer_id": "cus_2",
            "order_id": "1001",
            "order_total": 5000,
            "currency": "USD",
            "placed_at": "2026-03-02T14:30:00Z",
            "via": "referral_code",
            "state": "held",
            "reason": "velocity_review",
            "detail": None,
            "referee_reward_code": None,
            "fulfilled_at": None,
            "confirm_due_at": None,
            "decided_at": None,
        }
    ]
}


@router.get(
    "/referrals",
    summary="Referrals in a state (held: waiting for a review)",
    responses=openapi.example(200, _HELD),
)
async def referrals_in_state(
    principal: Reader,
    session: Session,
    state: Literal["held"] = "held",
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> ReferralList:
    rows = await store.referrals_in_state(session, principal.tenant_id, state, limit)
    return ReferralList(
        referrals=[ReferralOut.model_validate(r, from_attributes=True) for r in rows]
    )
