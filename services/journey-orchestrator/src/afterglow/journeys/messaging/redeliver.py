"""Failed messages, and sending one again (the console's "failed messages" queue).

A message fails when its channel refused it for good or its retries ran out; it went to
``afterglow.messages.dlq`` then. Redelivering puts the same row back in the queue with
its attempts reset: the dispatcher judges it again (consent, quiet hours, caps may have
changed since) and sends it at most once, because it is the same row under the same
request id; a failed message was never accepted by the channel, so nothing is sent
twice. Redriving its DLQ record instead would be dropped as a duplicate request."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import Query, Request
from sqlalchemy import select

from afterglow.journeys.messaging import store
from afterglow.journeys.messaging.api import Read, Write
from afterglow.journeys.messaging.models import Message
from afterglow.kit import openapi
from afterglow.kit.app import runtime_of
from afterglow.kit.auth import Principal
from afterglow.kit.db import Session
from afterglow.kit.errors import Conflict, NotFound
from afterglow.kit.routing import service_router
from afterglow.kit.types import Id

router = service_router(tags=["messaging"])

_FAILED = {
    "messages": [
        {
            "id": "0f3a6c1e-51d2-4c7b-9a8e-6b2d1f0c3e47",
            "customer_id": "cus_42",
            "kind": "check_in",
            "channel": "email",
            "reason": "HTTP 500 after 6 attempts",
            "attempts": 6,
            "updated_at": "2026-03-02T14:30:02Z",
        }
    ]
}


def _out(m: Message) -> dict[str, Any]:
    return {
        "id": m.id,
        "customer_id": m.customer_id,
        "request_id": m.request_id,
        "kind": m.kind,
        "category": m.category,
        "channel": m.channel,
        "status": m.status,
        "reason": m.reason,
        "attempts": m.attempts,
        "created_at": m.created_at,
        "updated_at": m.updated_at,
    }


@router.get(
    "/v1/messages/failed",
    summary="Messages that failed for good, newest first",
    responses=openapi.example(200, _FAILED),
)
async def failed_messages(
    session: Session,
    principal: Principal = Read,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> dict[str, Any]:
    rows = await session.scalars(
        select(Message)
        .where(Message.tenant_id == principal.tenant_id, Message.status == "failed")
        .order_by(Message.updated_at.desc(), Message.id)
        .limit(limit)
    )
    return {"messages": [_out(m) for m in rows]}


@router.post(
    "/v1/messages/{message_id}/redeliver",
    summary="Queue a failed message again",
    responses=openapi.errors(
        openapi.example(200, {**_FAILED["messages"][0], "status": "queued", "attempts": 0}),
        openapi.error(404, "No such message", "not_found", "no such message", field="message_id"),
        openapi.error(409, "Not failed", "conflict", "only a failed message is redelivered"),
    ),
)
async def redeliver(
    message_id: Id, request: Request, session: Session, principal: Principal = Write
) -> dict[str, Any]:
    m = (
        await session.scalars(
            select(Message)
            .where(Message.tenant_id == principal.tenant_id, Message.id == message_id)
            .with_for_update()
        )
    ).first()
    if m is None:
        raise NotFound("no such message", field="message_id")
    if m.status != "failed":
        # A second click, or a message already back in the queue: one delivery only.
        raise Conflict(f"only a failed message is redelivered; this one is {m.status}")
    now = runtime_of(request).clock.now()
    reason = f"redelivered by key {principal.key_id} after: {m.reason}"
    await store.record(session, m.tenant_id, m.id, now, "redeliver", reason)
    m.status, m.reason, m.attempts = "queued", reason, 0
    m.next_attempt_at = m.updated_at = now
    return _out(m)
