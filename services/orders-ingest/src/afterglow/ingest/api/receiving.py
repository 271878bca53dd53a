"""The receiver pipeline every webhook route runs: header shapes, size limit,
signature, JSON, then the raw delivery stored by the group commit, and the answers it
documents."""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse
from prometheus_client import Counter

from afterglow.ingest import bigcommerce, domain, intake
from afterglow.ingest.api.shared import (
    BAD_SIGNATURE,
    DeliveryOutcome,
    directory_of,
    read_body,
    refuse_malformed_auth_headers,
    settings_of,
    writer_of,
)
from afterglow.ingest.group_commit import RECEIVED, NewDelivery
from afterglow.ingest.payloads import parse_json, parse_payload
from afterglow.kit.app import runtime_of
from afterglow.kit.errors import Unauthorized

# Every signed delivery a receiver answered, by what became of it: received (the worker
# normalizes it), quarantined, archived, fetch_pending, duplicate; and unauthorized for
# a signature that did not verify (a rotated secret left on one side shows as a jump).
# Deliveries the worker quarantines later are afterglow_ingest_quarantined_total.
WEBHOOK_DELIVERIES = Counter(
    "afterglow_ingest_webhook_deliveries_total",
    "Webhook deliveries answered, by platform and status",
    ["platform", "status"],
)
UNAUTHORIZED = "unauthorized"


def signature_refused(platform: str) -> Unauthorized:
    WEBHOOK_DELIVERIES.labels(platform, UNAUTHORIZED).inc()
    return Unauthorized(BAD_SIGNATURE)


# Headers worth keeping with the raw body (for operators and replay).
_DROP_HEADERS = {"authorization", "cookie"}
ARCHIVED = "archived"

OUTCOMES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": DeliveryOutcome,
        "description": "Stored (status received): normalized and its events emitted in "
        "the background, the delivery turning processed, archived (unknown topic) or "
        "quarantined (not normalizable: the reason in last_error, replayable once "
        "fixed); or a duplicate of a stored delivery; BigCommerce: stored, fetch pending",
    },
    202: {
        "model": DeliveryOutcome,
        "description": "Stored as quarantined at once: no dedupe key or topic could be "
        "read (the reason in last_error)",
        "content": {
            "application/json": {
                "example": {"delivery_id": "6f1c2b7e", "status": "quarantined", "events": []}
            }
        },
    },
    400: {
        "description": "Signed, but not a JSON object in UTF-8 nesting at most 64 deep "
        "(code malformed_json or too_deep); nothing stored",
        "content": {
            "application/json": {
                "example": {"error": {"code": "malformed_json", "message": "the body is not..."}}
            }
        },
    },
    401: {
        "description": "Signature not verified (unknown tenant, missing or bad signature, "
        "stale timestamp)",
        "content": {
            "application/json": {
                "example": {"error": {"code": "unauthorized", "message": BAD_SIGNATURE}}
            }
        },
    },
    413: {"description": "Body over 1 MiB"},
    503: {
        "description": "Overloaded: too many deliveries waiting to be stored, or the "
        "database is unavailable; nothing stored, retry after Retry-After seconds",
        "headers": {"Retry-After": {"schema": {"type": "integer"}}},
    },
}


def webhook_doc(example: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
    return {
        "requestBody": {
            "required": True,
            "content": {"application/json": {"schema": {"type": "object"}, "example": example}},
            "description": "Signed raw body. Headers: "
            + "; ".join(f"`{k}`: {v}" for k, v in headers.items()),
        }
    }


# --- the receiver pipeline ----------------------------------------------------------

Verifier = Callable[[list[str], bytes], bool]
Parser = Callable[[dict[str, Any]], tuple[str, str]]  # -> (topic, dedupe key)


async def receive(
    request: Request,
    *,
    platform: str,
    tenant_id: str | None,
    verify: Verifier,
    route: Parser,
    auth_headers: tuple[str, ...],
    body: bytes | None = None,
    route_reads_payload: bool = True,
) -> JSONResponse:
    """Header shapes, size limit, signature, JSON, then the raw delivery is stored (a
    group commit shared with the requests in flight) and answered 200 ``received``;
    the worker of :mod:`afterglow.ingest.processing` normalizes it and emits its
    events. Every failure before the insert writes nothing (401, 400, 413); a signed
    JSON object that cannot be normalized is stored and turned quarantined, never
    answered 422 or 5xx: senders disable failing webhooks. Overload is a 503 with
    Retry-After."""
    refuse_malformed_auth_headers(request, auth_headers)
    rt = runtime_of(request)
    settings = settings_of(request)
    if body is None:
        body = await read_body(request, settings.ingest_max_body_bytes)
    now = rt.clock.now()
    secrets = await directory_of(request).active_secrets(tenant_id, platform, now)
    if not secrets or not verify(secrets, body):
        raise signature_refused(platform)
    assert tenant_id is not None
    # Parsed for the 400 on a body that is not JSON; cleaned only when the route reads
    # it (the worker cleans what it normalizes, the hot path need not do it twice).
    payload = parse_payload(body, platform) if route_reads_payload else parse_json(body)
    headers = kept_headers(request)
    topic = ""
    try:
        with domain.normalization_errors():
            topic, dedupe_key = route(payload)
    except domain.NormalizationError as exc:
        # No dedupe key or topic: quarantined at once, the worker has nothing to add.
        dedupe_key = body_key(body)
        reason = intake.quarantine_reason(exc)
        delivery = NewDelivery(
            tenant_id, platform, topic, dedupe_key, headers, body, now,
            status=intake.QUARANTINED, last_error=reason[:1000],
        )  # fmt: skip
        return await store(request, delivery)
    return await store(
        request, NewDelivery(tenant_id, platform, topic, dedupe_key, headers, body, now)
    )


def kept_headers(request: Request) -> dict[str, str]:
    return {k: v for k, v in request.headers.items() if k.lower() not in _DROP_HEADERS}


# What a delivery stored by the hot path is answered. 200 for a stored delivery, as
# before processing moved off the request (senders and our clients check 200; the
# body's status says "received": its events follow); 202 for a delivery quarantined at
# once (no dedupe key or topic) or archived at once (a BigCommerce scope we do not
# read), as before.
STORED_STATUS = {
    RECEIVED: 200,
    intake.QUARANTINED: 202,
    ARCHIVED: 202,
    bigcommerce.FETCH_PENDING: 200,
}


async def store(request: Request, delivery: NewDelivery) -> JSONResponse:
    """The raw delivery, committed with the other requests in flight; the answer only
    once it is committed (a 2xx means stored)."""
    if not await writer_of(request).store(delivery):
        WEBHOOK_DELIVERIES.labels(delivery.platform, "duplicate").inc()
        return JSONResponse(intake.Outcome(delivery.id, "duplicate").body(), status_code=200)
    WEBHOOK_DELIVERIES.labels(delivery.platform, delivery.status).inc()
    if delivery.status == intake.QUARANTINED:
        intake.QUARANTINED_TOTAL.labels(delivery.platform).inc()
    outcome = intake.Outcome(delivery.id, delivery.status)
    return JSONResponse(outcome.body(), status_code=STORED_STATUS[delivery.status])


def body_key(body: bytes) -> str:
    """The dedupe key of a delivery whose own key could not be read (a missing webhook
    id): the same bytes sent again are the same delivery."""
    return "sha256:" + hashlib.sha256(body).hexdigest()
