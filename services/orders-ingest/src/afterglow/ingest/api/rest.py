"""The internal REST API (API keys): orders and support events in Afterglow's canonical
shape, made idempotent by the Idempotency-Key header."""

from __future__ import annotations

import hashlib
import json
from typing import Annotated, Any

from fastapi import Depends, Header, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from afterglow.ingest import domain, identity, intake, store
from afterglow.ingest.api.shared import DeliveryOutcome
from afterglow.ingest.platforms import canonical
from afterglow.kit.app import runtime_of
from afterglow.kit.auth import Principal, require_scope
from afterglow.kit.db import Session
from afterglow.kit.errors import Conflict, Unprocessable
from afterglow.kit.routing import service_router
from afterglow.kit.types import Id, JsonObject, NoControls

router = service_router(prefix="/v1", tags=["orders and support events"])


def _body_digest(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


class RequesterIn(BaseModel):
    email: Annotated[str, StringConstraints(max_length=320), NoControls] | None = None
    phone: Annotated[str, StringConstraints(max_length=32), NoControls] | None = None


class CanonicalEventIn(BaseModel):
    """An order or ticket event in Afterglow's canonical shape."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "type": "order.placed",
                    "customer_id": "cus_42",
                    "data": {
                        "order_id": "pos:1001",
                        "platform": "api",
                        "placed_at": "2026-03-02T14:30:00Z",
                        "customer": {"email": "ada@example.com"},
                        "total": {"amount": 12999, "currency": "USD"},
                    },
                }
            ]
        }
    )
    type: str = Field(description="order.placed, order.fulfilled, ticket.opened...")
    customer_id: Id | None = Field(
        default=None,
        description="The envelope subject. A ticket event may name its requester instead",
    )
    requester: RequesterIn | None = Field(
        default=None,
        description="Ticket events: the requester, resolved to the customer whose orders "
        "carried this email or phone (when customer_id is not given)",
    )
    data: JsonObject = Field(description="The catalog model's fields")


IdempotencyHeader = Annotated[
    str,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        description="Same key and body: same answer. Same key, other body: 409.",
        examples=["5f0c8a1e-order-1001"],
    ),
]


async def _canonical_post(
    request: Request,
    session: Any,
    principal: Principal,
    key: str,
    body: CanonicalEventIn,
    allowed: frozenset[str],
    route_name: str,
) -> JSONResponse:
    rt = runtime_of(request)
    now = rt.clock.now()
    raw = body.model_dump(mode="json")
    digest = _body_digest(raw)
    tenant = principal.tenant_id
    if not await store.claim_idempotency_key(session, tenant, key, route_name, digest, now):
        prior = await store.claimed_idempotency_key(session, tenant, key)
        if prior.route != route_name or prior.body_hash != digest:
            raise Conflict(
                "this Idempotency-Key was used with a different request",
                field="Idempotency-Key",
                code="idempotency_key_reused",
            )
        return JSONResponse(prior.response, status_code=prior.status_code)
    try:
        normalized = domain.check_subjects(canonical.normalize_canonical(raw, allowed, "api"))
    except domain.NormalizationError as exc:
        raise Unprocessable(str(exc), field=exc.field) from exc
    if not normalized.known_topic:
        raise Unprocessable(f"type must be one of {', '.join(sorted(allowed))}", field="type")
    # As for a webhook's order (processing.py): the email and phone it shows link to its
    # customer, so a helpdesk ticket or the console's search by email finds them.
    await identity.record_links(session, [(tenant, normalized)], now)
    outcome = await intake.accept(
        session,
        rt.outbox,
        rt.tables,
        tenant_id=tenant,
        platform="api",
        topic=canonical.canonical_type(body.type),
        dedupe_key=f"idem:{route_name}:{key}",
        headers={"idempotency-key": key, "api-key-id": principal.key_id},
        body=json.dumps(raw).encode(),
        normalized=normalized,
        received_at=now,
    )
    response = outcome.body()
    await store.record_idempotent_answer(session, tenant, key, 201, response)
    return JSONResponse(response, status_code=201)


_REST_RESPONSES: dict[int | str, dict[str, Any]] = {
    201: {"model": DeliveryOutcome, "description": "Accepted: events emitted"},
    401: {"description": "No or invalid API key"},
    403: {"description": "The key lacks the scope"},
    409: {
        "description": "Idempotency-Key reused with another body",
        "content": {
            "application/json": {
                "example": {
                    "error": {
                        "code": "idempotency_key_reused",
                        "message": "this Idempotency-Key was used with a different request",
                        "field": "Idempotency-Key",
                    }
                }
            }
        },
    },
    422: {"description": "Invalid body; the error names the field"},
}


@router.post(
    "/orders",
    summary="Post an order event (scope orders:write)",
    status_code=201,
    response_model=DeliveryOutcome,
    responses=_REST_RESPONSES,
)
async def post_order(
    request: Request,
    session: Session,
    body: CanonicalEventIn,
    idempotency_key: IdempotencyHeader,
    principal: Principal = Depends(require_scope("orders:write")),
) -> JSONResponse:
    return await _canonical_post(
        request, session, principal, idempotency_key, body, canonical.ORDER_TYPES, "orders"
    )


@router.post(
    "/support-events",
    summary="Post a support ticket event (scope support:write)",
    status_code=201,
    response_model=DeliveryOutcome,
    responses=_REST_RESPONSES,
    openapi_extra={
        "requestBody": {
            "content": {
                "application/json": {
                    "example": {
                        "type": "ticket.opened",
                        "customer_id": "cus_42",
                        "data": {
                            "ticket_id": "gorgias:991",
                            "helpdesk": "gorgias",
                            "opened_at": "2026-03-06T08:00:00Z",
                            "subject": "Where is my order?",
                        },
                    }
                }
            }
        }
    },
)
async def post_support_event(
    request: Request,
    session: Session,
    body: CanonicalEventIn,
    idempotency_key: IdempotencyHeader,
    principal: Principal = Depends(require_scope("support:write")),
) -> JSONResponse:
    return await _canonical_post(
        request, session, principal, idempotency_key, body, canonical.TICKET_TYPES, "support"
    )
