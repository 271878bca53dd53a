"""Stored deliveries, for operators (API keys): list, read one with its raw body, and
replay one through today's normalizers."""

from __future__ import annotations

import base64
from datetime import datetime
from typing import Annotated, Any

from fastapi import Depends, Path, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from afterglow.ingest import service, store
from afterglow.ingest.api.shared import DeliveryOutcome
from afterglow.ingest.models import Delivery
from afterglow.kit import openapi
from afterglow.kit.app import runtime_of
from afterglow.kit.auth import Principal, require_scope
from afterglow.kit.db import Session
from afterglow.kit.errors import BadRequest, NotFound
from afterglow.kit.routing import service_router
from afterglow.kit.text import has_control_chars
from afterglow.kit.types import Id, Instant, ShortText

router = service_router(prefix="/v1/deliveries", tags=["deliveries"])


class DeliveryOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "6f1c2b7e-3a51-5a0c-9d8e-0c5b1f0e2a11",
                    "platform": "shopify",
                    "topic": "orders/create",
                    "status": "processed",
                    "dedupe_key": "b54557e4-bdd9-4b37-8a5f-bf7d70fcd043",
                    "received_at": "2026-03-02T14:30:01Z",
                    "event_ids": ["0b6e7c0e-9a0f-5b6c-8c71-3f1d2e4a5b6c"],
                    "replays": 0,
                    "attempts": 0,
                    "next_attempt_at": None,
                    "last_error": None,
                }
            ]
        }
    )
    id: str
    platform: str
    topic: str
    status: str = Field(
        description="processed, archived, quarantined (signed but not normalizable; "
        "last_error says why; replay once fixed), fetch_pending (BigCommerce, waiting "
        "for its fetch) or failed (the fetch gave up; last_error says why)"
    )
    dedupe_key: str
    received_at: datetime
    event_ids: list[str]
    replays: int
    attempts: int = Field(description="Fetches tried (BigCommerce); 0 elsewhere")
    next_attempt_at: datetime | None = Field(description="When the next fetch is due")
    last_error: str | None = Field(
        description="Why the delivery is quarantined, or why the last fetch failed"
    )


class DeliveryPage(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "items": DeliveryOut.model_config["json_schema_extra"]["examples"],  # type: ignore[index]
                    "next_cursor": "MjAyNi0wMy0wMlQxNDozMDowMSswMDowMHw2ZjFjMmI3ZQ==",
                }
            ]
        }
    )
    items: list[DeliveryOut]
    next_cursor: str | None = Field(description="Pass as `cursor` for the next page")


def _cursor(d: Delivery) -> str:
    return base64.urlsafe_b64encode(f"{d.received_at.isoformat()}|{d.id}".encode()).decode()


def _uncursor(cursor: str) -> tuple[datetime, str]:
    try:
        at, _, did = base64.urlsafe_b64decode(cursor.encode()).decode().partition("|")
        if has_control_chars(did):
            raise ValueError("control characters in the id")
        return datetime.fromisoformat(at), did
    except ValueError as exc:
        raise BadRequest("the cursor is not valid", field="cursor") from exc


@router.get(
    "",
    summary="List stored deliveries (scope orders:read), newest first",
    response_model=DeliveryPage,
    responses=openapi.error(
        400,
        "The cursor is not one this API returned",
        "bad_request",
        "the cursor is not valid",
        field="cursor",
    ),
)
async def list_deliveries(
    session: Session,
    principal: Principal = Depends(require_scope("orders:read")),
    status: Annotated[ShortText | None, Query(examples=["archived"])] = None,
    topic: Annotated[ShortText | None, Query(examples=["orders/create"])] = None,
    platform: Annotated[ShortText | None, Query(examples=["shopify"])] = None,
    from_: Annotated[Instant | None, Query(alias="from")] = None,
    to: Annotated[Instant | None, Query()] = None,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[ShortText | None, Query()] = None,
) -> DeliveryPage:
    # One row past the page says whether there is a next one.
    rows = await store.page_of_deliveries(
        session,
        principal.tenant_id,
        status=status,
        topic=topic,
        platform=platform,
        received_from=from_,
        received_before=to,
        after=_uncursor(cursor) if cursor else None,
        limit=limit + 1,
    )
    more = len(rows) > limit
    rows = rows[:limit]
    return DeliveryPage(
        items=[DeliveryOut.model_validate(r, from_attributes=True) for r in rows],
        next_cursor=_cursor(rows[-1]) if more and rows else None,
    )


class DeliveryDetail(DeliveryOut):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": "6f1c2b7e-3a51-5a0c-9d8e-0c5b1f0e2a11",
                    "platform": "shopify",
                    "topic": "orders/create",
                    "status": "processed",
                    "dedupe_key": "b54557e4-bdd9-4b37-8a5f-bf7d70fcd043",
                    "received_at": "2026-03-02T14:30:01Z",
                    "event_ids": ["0b6e7c0e-9a0f-5b6c-8c71-3f1d2e4a5b6c"],
                    "replays": 0,
                    "attempts": 0,
                    "next_attempt_at": None,
                    "last_error": None,
                    "headers": {"x-shopify-topic": "orders/create"},
                    "body": '{"id": 820982911946154508}',
                }
            ]
        }
    )
    headers: dict[str, Any]
    body: str = Field(description="The raw body as received (UTF-8, invalid bytes replaced)")


@router.get(
    "/{delivery_id}",
    summary="One stored delivery with its raw body (scope orders:read)",
    response_model=DeliveryDetail,
    responses={404: {"description": "No such delivery for this tenant"}},
)
async def get_delivery(
    session: Session,
    delivery_id: Annotated[Id, Path(examples=["6f1c2b7e-3a51-5a0c-9d8e-0c5b1f0e2a11"])],
    principal: Principal = Depends(require_scope("orders:read")),
) -> DeliveryDetail:
    d = await store.delivery_of_tenant(session, principal.tenant_id, delivery_id)
    if d is None:
        raise NotFound("no such delivery", field="delivery_id")
    base = DeliveryOut.model_validate(d, from_attributes=True).model_dump()
    return DeliveryDetail(**base, headers=d.headers, body=d.body.decode(errors="replace"))


@router.post(
    "/{delivery_id}/replay",
    summary="Normalize a stored delivery again and publish its events (scope orders:write)",
    description="Events keep their derived ids, so services that already applied them "
    "drop the repeat; an archived delivery whose topic is now known emits for the "
    "first time. A BigCommerce order delivery is queued for a fresh fetch of the order "
    "(status fetch_pending, attempts reset); the worker then emits what no delivery "
    "said yet and publishes again what this one said before, with the same ids.",
    response_model=DeliveryOutcome,
    responses={404: {"description": "No such delivery for this tenant"}},
)
async def replay_delivery(
    request: Request,
    session: Session,
    delivery_id: Annotated[Id, Path(examples=["6f1c2b7e-3a51-5a0c-9d8e-0c5b1f0e2a11"])],
    principal: Principal = Depends(require_scope("orders:write")),
) -> DeliveryOutcome:
    replayed = await service.replay_delivery(
        session, runtime_of(request), principal.tenant_id, delivery_id
    )
    return DeliveryOutcome(
        delivery_id=replayed.delivery_id, status=replayed.status, events=replayed.events
    )
