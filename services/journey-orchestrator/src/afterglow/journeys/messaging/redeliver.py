"""Failed messages, and sending one again (the console's "failed messages" queue).

A message fails when its channel refused it for good or its retries ran out; it went to
``afterglow.messages.dlq`` then. Redelivering puts the same row back in the queue with
its attempts reset: the dispatcher judges it again (consent, quiet hours, caps may have
changed since) and sends it at most once, because it is the same row under the same
request id; a failed message was never accepted by the channel, so nothing is sent
twice. Redriving its DLQ record instead would be dropped as a duplicate request."""

from __future__ import annotations

from typing import Annotated

from fastapi import Query, Request

from afterglow.journeys.messaging import service, store
from afterglow.journeys.messaging.api import Read, Write
from afterglow.journeys.messaging.responses import FailedMessageOut, FailedMessagesOut
from afterglow.kit import openapi
from afterglow.kit.app import runtime_of
from afterglow.kit.auth import Principal
from afterglow.kit.db import Session
from afterglow.kit.routing import service_router
from afterglow.kit.types import Id

router = service_router(tags=["messaging"])

_FAILED = {
    "messages": [
        {
            "id": "0f3a6c1e-51d2-4c7b-9a8e-6b2d1f0c3e47",
            "customer_id": "cus_42",
            "request_id": "journeys:check_in:pos:1001",
            "kind": "check_in",
            "category": "transactional",
            "channel": "email",
            "status": "failed",
            "reason": "HTTP 500 after 6 attempts",
            "attempts": 6,
            "created_at": "2026-02-28T09:00:00Z",
            "updated_at": "2026-03-02T14:30:02Z",
        }
    ]
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
) -> FailedMessagesOut:
    rows = await store.failed_messages(session, principal.tenant_id, limit)
    return FailedMessagesOut(messages=[FailedMessageOut.of(m) for m in rows])


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
) -> FailedMessageOut:
    now = runtime_of(request).clock.now()
    m = await service.redeliver(session, principal.tenant_id, message_id, principal.key_id, now)
    return FailedMessageOut.of(m)
