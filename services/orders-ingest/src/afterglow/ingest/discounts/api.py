"""``GET /v1/platform-actions``: what Afterglow asked of the tenant's shop (reward codes
created and disabled), each with its state, attempts and last error, so a merchant sees
why a customer's code did not arrive without reading logs."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Literal

from fastapi import Depends, Query
from pydantic import BaseModel, ConfigDict, Field
from pydantic.config import JsonDict

from afterglow.ingest.discounts import store
from afterglow.ingest.models import ShopDiscount
from afterglow.kit.auth import Principal, require_scope
from afterglow.kit.db import Session
from afterglow.kit.routing import service_router

router = service_router(prefix="/v1/platform-actions", tags=["platform actions"])

State = Literal["creating", "active", "used", "disabling", "disabled", "failed"]


_EXAMPLE: JsonDict = {
    "kind": "discount",
    "code": "AG-7QK2M9XW4P3R",
    "customer_id": "115310627314723954",
    "issuer": "loyalty",
    "reference": "rd_91c4e2b7",
    "platform": "shopify",
    "platform_id": "gid://shopify/DiscountCodeNode/1057371",
    "status": "active",
    "pending_action": None,
    "attempts": 0,
    "next_attempt_at": None,
    "last_error": None,
    "ends_at": "2027-03-10T11:05:00Z",
    "used_order_id": None,
    "updated_at": "2026-03-10T11:05:02Z",
}


class PlatformActionOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_EXAMPLE]})
    kind: Literal["discount"] = "discount"
    code: str
    customer_id: str
    issuer: str = Field(description="The service that asked for it")
    reference: str = Field(description="The issuer's record (a redemption, a referral)")
    platform: str | None
    platform_id: str | None = Field(description="The discount's id in the shop")
    status: State
    pending_action: Literal["create", "disable"] | None = Field(
        description="The platform call still to be made (creating, disabling)"
    )
    attempts: int = Field(description="Calls made for the pending action (or the last one)")
    next_attempt_at: datetime | None
    last_error: str | None
    ends_at: datetime | None
    used_order_id: str | None
    updated_at: datetime

    @classmethod
    def of(cls, row: ShopDiscount) -> PlatformActionOut:
        pending = {"creating": "create", "disabling": "disable"}.get(row.state)
        return cls(
            code=row.code,
            customer_id=row.customer_id,
            issuer=row.issuer,
            reference=row.reference,
            platform=row.platform,
            platform_id=row.platform_discount_id,
            status=row.state,
            pending_action=pending,
            attempts=row.attempts,
            next_attempt_at=row.next_attempt_at,
            last_error=row.last_error,
            ends_at=row.ends_at,
            used_order_id=row.used_order_id,
            updated_at=row.updated_at,
        )


class PlatformActionPage(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"items": [_EXAMPLE]}]})
    items: list[PlatformActionOut]


@router.get(
    "",
    summary="Reward codes asked of the tenant's shop, with status and last error "
    "(scope orders:read), most recently changed first",
    response_model=PlatformActionPage,
)
async def list_platform_actions(
    session: Session,
    principal: Annotated[Principal, Depends(require_scope("orders:read"))],
    status: Annotated[State | None, Query(examples=["failed"])] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
) -> PlatformActionPage:
    rows = await store.page(session, principal.tenant_id, status, limit)
    return PlatformActionPage(items=[PlatformActionOut.of(r) for r in rows])
