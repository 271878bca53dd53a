"""Routes: webhook receivers, the internal REST API and the admin API."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import logging
import re
from collections.abc import Callable, Iterable
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Depends, Header, Path, Query, Request
from fastapi.responses import JSONResponse
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from sqlalchemy import and_, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from starlette.requests import ClientDisconnect

from afterglow.events.envelope import TENANT_ID_PATTERN
from afterglow.ingest import bigcommerce, domain, escalations, identity, intake, registry
from afterglow.ingest.directory import TenantDirectory
from afterglow.ingest.group_commit import RECEIVED, DeliveryWriter, NewDelivery
from afterglow.ingest.models import Delivery, IdempotencyKey
from afterglow.ingest.settings import IngestSettings
from afterglow.kit import openapi, standard_webhooks
from afterglow.kit.app import runtime_of
from afterglow.kit.auth import Principal, bearer_token, require_scope
from afterglow.kit.db import Session
from afterglow.kit.errors import (
    AppError,
    BadRequest,
    Conflict,
    NotFound,
    PayloadTooLarge,
    Unauthorized,
    Unprocessable,
)
from afterglow.kit.jsonbody import JsonBodyError, loads_bounded
from afterglow.kit.outbound import ForbiddenDestination, check_destination
from afterglow.kit.routing import service_router
from afterglow.kit.text import has_control_chars
from afterglow.kit.types import Id, Instant, JsonObject, NoControls, ShortText

log = logging.getLogger(__name__)

webhooks = service_router(prefix="/webhooks", tags=["webhooks"])
rest = service_router(prefix="/v1", tags=["orders and support events"])
operators = service_router(prefix="/v1/deliveries", tags=["deliveries"])
admin = service_router(prefix="/admin", tags=["admin"])

# One answer for every authentication failure: which part failed is no business of
# whoever is probing (unknown tenant, missing header, wrong secret, stale timestamp).
BAD_SIGNATURE = "the webhook signature could not be verified"
TENANT_RE = TENANT_ID_PATTERN.pattern
# Headers worth keeping with the raw body (for operators and replay).
_DROP_HEADERS = {"authorization", "cookie"}
ARCHIVED = "archived"


def settings_of(request: Request) -> IngestSettings:
    s = runtime_of(request).settings
    assert isinstance(s, IngestSettings)
    return s


def writer_of(request: Request) -> DeliveryWriter:
    writer = runtime_of(request).extras["delivery_writer"]
    assert isinstance(writer, DeliveryWriter)
    return writer


def directory_of(request: Request) -> TenantDirectory:
    directory = runtime_of(request).extras["tenant_directory"]
    assert isinstance(directory, TenantDirectory)
    return directory


class ClientLeft(AppError):
    """The sender closed the connection before its body was complete: nothing was
    stored and nobody reads this answer (the sender retries)."""

    status_code, code = 400, "client_disconnected"


# ASCII digits only: str.isdigit() also accepts "²", which int() then refuses (a 500).
_CONTENT_LENGTH = re.compile(r"[0-9]{1,19}")


async def read_body(request: Request, limit: int) -> bytes:
    """The raw body, refused past ``limit`` before it is all read or parsed."""
    declared = request.headers.get("content-length", "")
    if _CONTENT_LENGTH.fullmatch(declared) and int(declared) > limit:
        raise PayloadTooLarge(f"the body exceeds {limit} bytes")
    buf = bytearray()
    try:
        async for chunk in request.stream():
            buf += chunk
            if len(buf) > limit:
                raise PayloadTooLarge(f"the body exceeds {limit} bytes")
    except ClientDisconnect:
        # A sender timing out mid-body is routine under load, not a server error: it
        # was logged with a full traceback at error level, once per disconnect.
        log.info("client disconnected before its body was complete (%d bytes read)", len(buf))
        raise ClientLeft("the client disconnected before the body was complete") from None
    return bytes(buf)


def refuse_malformed_auth_headers(request: Request, names: Iterable[str]) -> None:
    """First thing every receiver does: a signature, timestamp or token header that is
    not printable ASCII of sane length is refused as unauthenticated, before any of it
    is parsed ("²" or 5,000 nines in a timestamp answered 500)."""
    for name in names:
        value = request.headers.get(name)
        if value is not None and not domain.well_formed_header(value):
            raise Unauthorized(BAD_SIGNATURE)


def parse_json(body: bytes) -> dict[str, Any]:
    """A JSON object in UTF-8, within the depth bound: 10,000 nested objects raised
    RecursionError (a 500). Anything else is a 400, before anything is stored."""
    try:
        payload = loads_bounded(body.decode("utf-8"))
    except UnicodeDecodeError as exc:
        raise BadRequest("the body is not UTF-8", code="malformed_json") from exc
    except JsonBodyError as exc:
        raise BadRequest(str(exc), code=exc.code) from exc
    if not isinstance(payload, dict):
        raise BadRequest("the body must be a JSON object", code="malformed_json")
    return payload


def parse_payload(body: bytes, platform: str) -> dict[str, Any]:
    """The payload every normalizer reads: parsed, then cleaned in one pass (no NUL or
    control character, NFC, HTML entities decoded where the platform encodes them)."""
    payload: dict[str, Any] = domain.clean_payload(
        parse_json(body), html_encoded=platform in domain.HTML_ENCODED_PLATFORMS
    )
    return payload


# --- models for the OpenAPI document ------------------------------------------------


class DeliveryOutcome(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "delivery_id": "6f1c2b7e-3a51-5a0c-9d8e-0c5b1f0e2a11",
                    "status": "processed",
                    "events": ["0b6e7c0e-9a0f-5b6c-8c71-3f1d2e4a5b6c"],
                }
            ]
        }
    )
    delivery_id: str
    status: str = Field(
        description="Webhooks: received (stored; normalized and its events emitted in "
        "the background: follow it with GET /v1/deliveries/{id}), duplicate, quarantined "
        "(stored, not normalizable: see the delivery's last_error), or fetch_pending "
        "(BigCommerce: the order is fetched from the store's API in the background). "
        "REST and replay: processed or archived (unknown topic)."
    )
    events: list[str] = Field(
        description="Ids of the events emitted by this call (REST, replay); a webhook's "
        "events are listed on its delivery once processed"
    )


_OUTCOMES: dict[int | str, dict[str, Any]] = {
    200: {
        "model": DeliveryOutcome,
        "description": "Stored (status received): normalized and its events emitted in "
        "the background, the delivery turning processed, archived (unknown topic) or "
        "quarantined (not normalizable: the reason in last_error, replayable once "
        "fixed); or a duplicate of a stored delivery; BigCommerce: stored, fetch pending",
    },
    202: {
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


def _webhook_doc(example: dict[str, Any], headers: dict[str, str]) -> dict[str, Any]:
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
        raise Unauthorized(BAD_SIGNATURE)
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
        dedupe_key = _body_key(body)
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
_STORED_STATUS = {
    RECEIVED: 200,
    intake.QUARANTINED: 202,
    ARCHIVED: 202,
    bigcommerce.FETCH_PENDING: 200,
}


async def store(request: Request, delivery: NewDelivery) -> JSONResponse:
    """The raw delivery, committed with the other requests in flight; the answer only
    once it is committed (a 2xx means stored)."""
    if not await writer_of(request).store(delivery):
        return JSONResponse(intake.Outcome(delivery.id, "duplicate").body(), status_code=200)
    if delivery.status == intake.QUARANTINED:
        intake.QUARANTINED_TOTAL.labels(delivery.platform).inc()
    outcome = intake.Outcome(delivery.id, delivery.status)
    return JSONResponse(outcome.body(), status_code=_STORED_STATUS[delivery.status])


def _body_key(body: bytes) -> str:
    """The dedupe key of a delivery whose own key could not be read (a missing webhook
    id): the same bytes sent again are the same delivery."""
    return "sha256:" + hashlib.sha256(body).hexdigest()


def _body_digest(body: dict[str, Any]) -> str:
    return hashlib.sha256(json.dumps(body, sort_keys=True).encode()).hexdigest()


TenantPath = Annotated[str, Path(pattern=TENANT_RE, examples=["acme"])]

SHOPIFY_EXAMPLE = {
    "id": 820982911946154508,
    "email": "jon@example.com",
    "created_at": "2026-03-02T09:30:00-05:00",
    "currency": "USD",
    "total_price": "199.65",
    "line_items": [{"product_id": 632910392, "sku": "IPOD2008", "quantity": 1, "price": "199.00"}],
    "customer": {"id": 115310627314723954, "email": "jon@example.com"},
}


@webhooks.post(
    "/shopify",
    summary="Shopify webhooks (tenant from X-Shopify-Shop-Domain)",
    responses=_OUTCOMES,
    response_model=DeliveryOutcome,
    openapi_extra=_webhook_doc(
        SHOPIFY_EXAMPLE,
        {
            "X-Shopify-Hmac-Sha256": "base64 HMAC-SHA256 of the raw body",
            "X-Shopify-Topic": "orders/create",
            "X-Shopify-Shop-Domain": "acme.myshopify.com",
            "X-Shopify-Webhook-Id": "de-duplication key",
        },
    ),
)
async def shopify_webhook(request: Request) -> JSONResponse:
    h = request.headers
    domain_header = h.get("x-shopify-shop-domain", "")
    directory = directory_of(request)
    tenant = await directory.by_shop_domain(domain_header) if domain_header else None

    def route(_: dict[str, Any]) -> tuple[str, str]:
        topic = h.get("x-shopify-topic", "")
        key = h.get("x-shopify-webhook-id") or h.get("x-shopify-event-id")
        if not topic:
            raise domain.MissingField("X-Shopify-Topic")
        if not key:
            raise domain.MissingField("X-Shopify-Webhook-Id")
        return topic, key

    return await receive(
        request,
        platform="shopify",
        tenant_id=tenant,
        verify=lambda s, b: domain.verify_b64_hmac(s, b, h.get("x-shopify-hmac-sha256")),
        route=route,
        auth_headers=("x-shopify-hmac-sha256",),
        route_reads_payload=False,  # topic and webhook id come from headers
    )


@webhooks.post(
    "/woocommerce/{tenant_id}",
    summary="WooCommerce webhooks (order.created, order.updated)",
    responses=_OUTCOMES,
    response_model=DeliveryOutcome,
    openapi_extra=_webhook_doc(
        {"id": 727, "status": "processing", "currency": "USD", "total": "29.35"},
        {
            "X-WC-Webhook-Signature": "base64 HMAC-SHA256 of the raw body",
            "X-WC-Webhook-Topic": "order.created",
            "X-WC-Webhook-Source": "https://shop.example.com/",
        },
    ),
)
async def woocommerce_webhook(request: Request, tenant_id: TenantPath) -> JSONResponse:
    return await _woocommerce(request, tenant_id)


@webhooks.post(
    "/woocommerce",
    summary="WooCommerce webhooks, tenant from X-WC-Webhook-Source (the store URL)",
    responses=_OUTCOMES,
    response_model=DeliveryOutcome,
    openapi_extra=_webhook_doc(
        {"id": 727, "status": "processing", "currency": "USD", "total": "29.35"},
        {
            "X-WC-Webhook-Signature": "base64 HMAC-SHA256 of the raw body",
            "X-WC-Webhook-Topic": "order.created",
            "X-WC-Webhook-Source": "https://shop.example.com/ (the registered store URL)",
        },
    ),
)
async def woocommerce_webhook_by_source(request: Request) -> JSONResponse:
    source = request.headers.get("x-wc-webhook-source", "")
    tenant = await directory_of(request).by_store_url(source) if source else None
    return await _woocommerce(request, tenant)


async def _woocommerce(request: Request, tenant_id: str | None) -> JSONResponse:
    h = request.headers
    refuse_malformed_auth_headers(request, ("x-wc-webhook-signature",))
    # Read once: a form body that is not a ping goes on to the signature check (reading
    # the stream a second time raised, a 500).
    body = await read_body(request, settings_of(request).ingest_max_body_bytes)
    # Woo pings a new webhook with a form-encoded "webhook_id=N": answer it, or Woo
    # counts a failure against the hook before any order is sent.
    form = h.get("content-type", "").startswith("application/x-www-form-urlencoded")
    if form and body.startswith(b"webhook_id=") and len(body) <= 4096:
        return JSONResponse({"status": "ping"}, status_code=200)

    def route(payload: dict[str, Any]) -> tuple[str, str]:
        topic = h.get("x-wc-webhook-topic", "")
        if not topic:
            raise domain.MissingField("X-WC-Webhook-Topic")
        if topic in domain.WOO_TOPICS:
            return topic, domain.woo_dedupe_key(payload)
        return topic, "delivery:" + h.get("x-wc-webhook-delivery-id", "")

    return await receive(
        request,
        platform="woocommerce",
        tenant_id=tenant_id,
        verify=lambda s, b: domain.verify_b64_hmac(s, b, h.get("x-wc-webhook-signature")),
        route=route,
        auth_headers=("x-wc-webhook-signature",),
        body=body,
    )


@webhooks.post(
    "/standard/{tenant_id}",
    summary="Standard Webhooks carrying Afterglow's canonical order and ticket payloads",
    responses=_OUTCOMES,
    response_model=DeliveryOutcome,
    openapi_extra=_webhook_doc(
        {
            "type": "order.delivered",
            "customer_id": "cus_42",
            "data": {
                "order_id": "acme:1001",
                "delivered_at": "2026-03-05T10:00:00Z",
                "reported_by": "standard_webhooks",
            },
        },
        {
            "webhook-id": "msg_2b...",
            "webhook-timestamp": "unix seconds, 5 minutes tolerance",
            "webhook-signature": "v1,<base64> (space-separated when several)",
        },
    ),
)
async def standard_webhook(request: Request, tenant_id: TenantPath) -> JSONResponse:
    h = request.headers
    rt = runtime_of(request)
    tolerance = settings_of(request).ingest_timestamp_tolerance_s

    def verify(secrets: list[str], body: bytes) -> bool:
        return standard_webhooks.verify(
            secrets,
            h.get("webhook-id"),
            h.get("webhook-timestamp"),
            h.get("webhook-signature"),
            body,
            rt.clock.now().timestamp(),
            tolerance,
        )

    def route(payload: dict[str, Any]) -> tuple[str, str]:
        return str(payload.get("type") or ""), h.get("webhook-id", "")

    return await receive(
        request,
        platform="standard",
        tenant_id=tenant_id,
        verify=verify,
        route=route,
        auth_headers=("webhook-id", "webhook-timestamp", "webhook-signature"),
    )


@webhooks.post(
    "/zendesk/{tenant_id}",
    summary="Zendesk ticket events (created, status changed, solved)",
    responses=_OUTCOMES,
    response_model=DeliveryOutcome,
    openapi_extra=_webhook_doc(
        {
            "type": "zen:event-type:ticket.created",
            "id": "cbe4028c-7239-495d-b020-f22348516046",
            "time": "2026-03-05T10:00:00Z",
            "detail": {"id": "35436", "requester_id": "1111", "status": "NEW"},
        },
        {
            "x-zendesk-webhook-signature": "base64 HMAC-SHA256 of timestamp + body",
            "x-zendesk-webhook-signature-timestamp": "ISO 8601, 5 minutes tolerance",
        },
    ),
)
async def zendesk_webhook(request: Request, tenant_id: TenantPath) -> JSONResponse:
    h = request.headers
    rt = runtime_of(request)
    tolerance = settings_of(request).ingest_timestamp_tolerance_s

    def verify(secrets: list[str], body: bytes) -> bool:
        ts = h.get("x-zendesk-webhook-signature-timestamp")
        if not domain.timestamp_fresh(ts, rt.clock.now(), tolerance):
            return False
        assert ts is not None
        return domain.verify_b64_hmac(
            secrets, ts.encode() + body, h.get("x-zendesk-webhook-signature")
        )

    def route(payload: dict[str, Any]) -> tuple[str, str]:
        key = payload.get("id") or h.get("x-zendesk-webhook-invocation-id")
        if not key:
            raise domain.MissingField("id")
        return str(payload.get("type") or ""), str(key)

    return await receive(
        request,
        platform="zendesk",
        tenant_id=tenant_id,
        verify=verify,
        route=route,
        auth_headers=("x-zendesk-webhook-signature", "x-zendesk-webhook-signature-timestamp"),
    )


@webhooks.post(
    "/aftership/{tenant_id}",
    summary="AfterShip tracking updates (Delivered becomes order.delivered)",
    responses=_OUTCOMES,
    response_model=DeliveryOutcome,
    openapi_extra=_webhook_doc(
        {
            "event": "tracking_update",
            "event_id": "5b2c7a0e-4c1e-4f7e-9a51-7c2d1f3e4a5b",
            "msg": {"tracking_number": "1Z999", "tag": "Delivered", "order_id": "1001"},
        },
        {"aftership-hmac-sha256": "base64 HMAC-SHA256 of the raw body"},
    ),
)
async def aftership_webhook(request: Request, tenant_id: TenantPath) -> JSONResponse:
    h = request.headers

    def route(payload: dict[str, Any]) -> tuple[str, str]:
        key = payload.get("event_id")
        if not key:
            raise domain.MissingField("event_id")
        return str(payload.get("event") or "tracking_update"), str(key)

    return await receive(
        request,
        platform="aftership",
        tenant_id=tenant_id,
        verify=lambda s, b: domain.verify_b64_hmac(s, b, h.get("aftership-hmac-sha256")),
        route=route,
        auth_headers=("aftership-hmac-sha256",),
    )


# --- internal REST ------------------------------------------------------------------


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
    claimed = (await session.execute(_claim_key(tenant, key, route_name, digest, now))).scalar()
    if claimed is None:
        prior = await session.get(IdempotencyKey, (tenant, key))
        assert prior is not None
        if prior.route != route_name or prior.body_hash != digest:
            raise Conflict(
                "this Idempotency-Key was used with a different request",
                field="Idempotency-Key",
                code="idempotency_key_reused",
            )
        return JSONResponse(prior.response, status_code=prior.status_code)
    try:
        normalized = domain.check_subjects(domain.normalize_canonical(raw, allowed, "api"))
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
        topic=domain.canonical_type(body.type),
        dedupe_key=f"idem:{route_name}:{key}",
        headers={"idempotency-key": key, "api-key-id": principal.key_id},
        body=json.dumps(raw).encode(),
        normalized=normalized,
        received_at=now,
    )
    response = outcome.body()
    await session.execute(
        update(IdempotencyKey)
        .where(IdempotencyKey.tenant_id == tenant, IdempotencyKey.key == key)
        .values(status_code=201, response=response)
    )
    return JSONResponse(response, status_code=201)


def _claim_key(tenant: str, key: str, route_name: str, digest: str, now: datetime) -> Any:
    # A concurrent request with the same key waits on the primary key until the first
    # commits, then finds its answer.
    return (
        pg_insert(IdempotencyKey)
        .values(
            tenant_id=tenant,
            key=key,
            route=route_name,
            body_hash=digest,
            status_code=0,
            response={},
            created_at=now,
        )
        .on_conflict_do_nothing()
        .returning(IdempotencyKey.key)
    )


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


@rest.post(
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
        request, session, principal, idempotency_key, body, domain.ORDER_TYPES, "orders"
    )


@rest.post(
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
        request, session, principal, idempotency_key, body, domain.TICKET_TYPES, "support"
    )


# --- deliveries (operators) ---------------------------------------------------------


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


@operators.get(
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
    q = select(Delivery).where(Delivery.tenant_id == principal.tenant_id)
    if status:
        q = q.where(Delivery.status == status)
    if topic:
        q = q.where(Delivery.topic == topic)
    if platform:
        q = q.where(Delivery.platform == platform)
    if from_:
        q = q.where(Delivery.received_at >= from_)
    if to:
        q = q.where(Delivery.received_at < to)
    if cursor:
        at, did = _uncursor(cursor)
        q = q.where(
            or_(Delivery.received_at < at, and_(Delivery.received_at == at, Delivery.id < did))
        )
    rows = list(
        (
            await session.execute(
                q.order_by(Delivery.received_at.desc(), Delivery.id.desc()).limit(limit + 1)
            )
        ).scalars()
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


@operators.get(
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
    d = (
        await session.execute(
            select(Delivery).where(
                Delivery.tenant_id == principal.tenant_id, Delivery.id == delivery_id
            )
        )
    ).scalar()
    if d is None:
        raise NotFound("no such delivery", field="delivery_id")
    base = DeliveryOut.model_validate(d, from_attributes=True).model_dump()
    return DeliveryDetail(**base, headers=d.headers, body=d.body.decode(errors="replace"))


@operators.post(
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
    rt = runtime_of(request)
    d = (
        await session.execute(
            select(Delivery)
            .where(Delivery.tenant_id == principal.tenant_id, Delivery.id == delivery_id)
            .with_for_update()
        )
    ).scalar()
    if d is None:
        raise NotFound("no such delivery", field="delivery_id")
    if d.platform == bigcommerce.PLATFORM and d.topic in domain.BIGCOMMERCE_SCOPES:
        # The body holds only ids: the replay is a new fetch, done by the worker.
        bigcommerce.requeue(d, rt.clock.now())
        d.replays += 1
        return DeliveryOutcome(delivery_id=d.id, status=d.status, events=[])
    try:
        normalized = await intake.normalize(
            session, d.tenant_id, d.platform, d.topic, parse_payload(d.body, d.platform)
        )
    except domain.NormalizationError as exc:
        raise Unprocessable(str(exc), field=exc.field) from exc
    # A quarantined delivery never emitted: its facts go through the fact table like a
    # first delivery's, so an order another delivery placed meanwhile is not placed twice.
    first_time = d.status == intake.QUARANTINED
    ids: list[str] = []
    status = "archived"
    if normalized.known_topic:
        status = "processed"
        # A ticket replays to the customer it was resolved to (pinned); orders relink.
        await identity.link_and_resolve(session, [(d.tenant_id, normalized)], d.received_at)
        emitted = await intake.emit(
            session,
            rt.outbox,
            rt.tables,
            tenant_id=d.tenant_id,
            delivery_id=d.id,
            platform=d.platform,
            dedupe_key=d.dedupe_key,
            normalized=normalized,
            received_at=d.received_at,
            replay=not first_time,
        )
        ids = emitted.ids
        d.subjects = intake.merge_subjects(d.subjects, emitted.subjects)
    d.status = status
    d.event_ids = ids
    d.last_error = None
    d.replays += 1
    return DeliveryOutcome(delivery_id=d.id, status=status, events=ids)


# --- admin --------------------------------------------------------------------------


@openapi.answers(
    openapi.error(
        401,
        "No admin token, or not the one configured (an empty setting disables the admin API)",
        "unauthorized",
        "an admin token is required",
    ),
    security=openapi.bearer("adminToken", "The operators' token (INGEST_ADMIN_TOKEN)"),
)
def require_admin(request: Request) -> None:
    expected = settings_of(request).ingest_admin_token
    presented = bearer_token(request) or ""
    # An empty setting disables the admin API rather than accepting an empty token.
    if not expected or not hmac.compare_digest(expected.encode(), presented.encode()):
        raise Unauthorized("an admin token is required", headers={"WWW-Authenticate": "Bearer"})


admin.dependencies.append(Depends(require_admin))

PlatformPath = Annotated[
    str,
    Path(
        pattern="^(shopify|woocommerce|bigcommerce|standard|zendesk|aftership)$",
        examples=["shopify"],
    ),
]


class TenantIn(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "tenant_id": "acme",
                    "name": "Acme Outdoor",
                    "shopify_shop_domain": "acme.myshopify.com",
                    "platforms": ["shopify", "aftership"],
                }
            ]
        }
    )
    tenant_id: str = Field(pattern=TENANT_RE)
    name: Annotated[ShortText, StringConstraints(min_length=1)]
    shopify_shop_domain: Annotated[str, StringConstraints(max_length=255), NoControls] | None = None
    woocommerce_store_url: Annotated[str, StringConstraints(max_length=500), NoControls] | None = (
        None
    )
    bigcommerce_store_hash: Annotated[str, StringConstraints(max_length=100), NoControls] | None = (
        None
    )
    platforms: list[str] = Field(
        default_factory=list, description="Generate a webhook secret for each of these"
    )


@admin.post(
    "/tenants",
    status_code=201,
    summary="Register a tenant",
    responses=openapi.errors(
        openapi.example(
            201,
            {
                "tenant_id": "acme",
                "secrets": {"shopify": "shpss_6c1f...", "aftership": "as_0b7e..."},
            },
            "Registered; a webhook secret per platform asked for (shown once)",
        ),
        openapi.error(
            409,
            "The tenant id or the shop domain is already registered",
            "conflict",
            "the tenant id or shop domain is already registered",
            field="tenant_id",
        ),
    ),
)
async def create_tenant(request: Request, session: Session, body: TenantIn) -> dict[str, Any]:
    now = runtime_of(request).clock.now()
    await registry.create_tenant(
        session,
        tenant_id=body.tenant_id,
        name=body.name,
        shopify_shop_domain=body.shopify_shop_domain,
        woocommerce_store_url=body.woocommerce_store_url,
        bigcommerce_store_hash=body.bigcommerce_store_hash,
        now=now,
    )
    secrets = {}
    for platform in body.platforms:
        if platform not in registry.PLATFORMS:
            raise Unprocessable(f"unknown platform {platform!r}", field="platforms")
        secrets[platform] = await registry.rotate_secret(
            session, tenant_id=body.tenant_id, platform=platform, secret=None, now=now, grace_s=0
        )
    # The receivers' cache may hold "unknown" for this shop: read it again.
    directory_of(request).forget()
    return {"tenant_id": body.tenant_id, "secrets": secrets}


class SecretIn(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"secret": None}]})
    secret: Annotated[str, StringConstraints(min_length=8, max_length=500), NoControls] | None = (
        Field(
            default=None,
            description="The platform's secret (Shopify's app secret); omitted: generated",
        )
    )


@admin.post(
    "/tenants/{tenant_id}/secrets/{platform}",
    status_code=201,
    summary="Rotate a webhook secret (the previous one stays valid for the grace period)",
    responses=openapi.example(
        201, {"platform": "shopify", "secret": "shpss_9a2d...", "previous_valid_for_s": 3600}
    ),
)
async def rotate_secret(
    request: Request,
    session: Session,
    tenant_id: TenantPath,
    platform: PlatformPath,
    body: SecretIn,
) -> dict[str, Any]:
    rt = runtime_of(request)
    grace = settings_of(request).ingest_rotation_grace_s
    secret = await registry.rotate_secret(
        session,
        tenant_id=tenant_id,
        platform=platform,
        secret=body.secret,
        now=rt.clock.now(),
        grace_s=grace,
    )
    directory_of(request).forget()
    return {"platform": platform, "secret": secret, "previous_valid_for_s": grace}


@admin.delete(
    "/tenants/{tenant_id}/secrets/{platform}/previous",
    summary="End a rotation now: only the current secret stays valid",
    responses=openapi.example(200, {"expired": 1}),
)
async def expire_previous(
    request: Request, session: Session, tenant_id: TenantPath, platform: PlatformPath
) -> dict[str, Any]:
    n = await registry.expire_previous_secrets(
        session, tenant_id=tenant_id, platform=platform, now=runtime_of(request).clock.now()
    )
    directory_of(request).forget()
    return {"expired": n}


class ApiKeyIn(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"scopes": ["orders:write"]}]})
    scopes: list[Annotated[str, StringConstraints(min_length=1, max_length=100), NoControls]] = (
        Field(min_length=1, max_length=50)
    )
    expires_at: Instant | None = None


@admin.post(
    "/tenants/{tenant_id}/api-keys",
    status_code=201,
    summary="Issue an API key (shown once; announced to every service as its hash)",
    responses=openapi.example(
        201,
        {
            "key_id": "3fa1c9d2e7b4",
            "key": "agk_3fa1c9d2e7b4_Yk1...",
            "scopes": ["orders:write"],
            "event_id": "9c0d7a4e-2b1f-5e3c-8a6d-4f2e1b0c9d8e",
        },
    ),
)
async def create_api_key(
    request: Request, session: Session, tenant_id: TenantPath, body: ApiKeyIn
) -> dict[str, Any]:
    rt = runtime_of(request)
    return await registry.issue_api_key(
        session,
        rt.api_keys,
        rt.outbox,
        tenant_id=tenant_id,
        scopes=body.scopes,
        now=rt.clock.now(),
        expires_at=body.expires_at,
    )


@admin.delete(
    "/tenants/{tenant_id}/api-keys/{key_id}",
    summary="Revoke an API key",
    responses=openapi.example(
        200,
        {
            "key_id": "3fa1c9d2e7b4",
            "revoked": True,
            "event_id": "1e5b3c7a-0d9f-5a2e-b4c8-7f6e2d1a0b3c",
        },
    ),
)
async def revoke_api_key(
    request: Request, session: Session, tenant_id: TenantPath, key_id: Id
) -> dict[str, Any]:
    rt = runtime_of(request)
    event_id = await registry.revoke_api_key(
        session, rt.api_keys, rt.outbox, tenant_id=tenant_id, key_id=key_id, now=rt.clock.now()
    )
    return {"key_id": key_id, "revoked": True, "event_id": event_id}


class ConnectionIn(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"api_base_url": "https://acme.myshopify.com", "access_token": "shpat_..."}
            ]
        }
    )
    api_base_url: Annotated[str, StringConstraints(min_length=1, max_length=500), NoControls]
    access_token: Annotated[str, StringConstraints(min_length=1, max_length=500), NoControls]


@admin.put(
    "/tenants/{tenant_id}/connections/{platform}",
    summary="Set the platform API credentials used by reconciliation and BigCommerce",
    responses=openapi.example(200, {"tenant_id": "acme", "platform": "shopify"}),
)
async def set_connection(
    request: Request,
    session: Session,
    tenant_id: TenantPath,
    platform: PlatformPath,
    body: ConnectionIn,
) -> dict[str, Any]:
    try:
        await check_destination(
            body.api_base_url,
            allow_private=runtime_of(request).settings.outbound_allow_private,
        )
    except ForbiddenDestination as exc:
        raise Unprocessable(f"api_base_url {exc}", field="api_base_url") from exc
    await registry.set_connection(
        session,
        tenant_id=tenant_id,
        platform=platform,
        api_base_url=body.api_base_url.rstrip("/"),
        access_token=body.access_token,
    )
    return {"tenant_id": tenant_id, "platform": platform}


class HelpdeskIn(BaseModel):
    """Where escalations open tickets. Zendesk: ``username`` is the agent's email and
    ``secret`` an API token; Gorgias: the API username and key; webhook: ``secret``
    signs a Standard Webhook (``whsec_...``)."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "kind": "zendesk",
                    "api_base_url": "https://acme.zendesk.com",
                    "username": "agent@acme.com",
                    "secret": "zd-api-token",
                }
            ]
        }
    )
    kind: Literal["zendesk", "gorgias", "webhook"]
    api_base_url: Annotated[str, StringConstraints(min_length=1, max_length=500), NoControls]
    username: Annotated[str, StringConstraints(min_length=1, max_length=320), NoControls] | None = (
        None
    )
    secret: Annotated[str, StringConstraints(min_length=1, max_length=500), NoControls]


@admin.put(
    "/tenants/{tenant_id}/helpdesk",
    summary="Set the helpdesk that detractors' escalations open tickets in",
    responses=openapi.example(200, {"tenant_id": "acme", "kind": "zendesk"}),
)
async def set_helpdesk(
    request: Request, session: Session, tenant_id: TenantPath, body: HelpdeskIn
) -> dict[str, Any]:
    if body.kind in ("zendesk", "gorgias") and not body.username:
        raise Unprocessable(f"{body.kind} needs the API username", field="username")
    try:
        await check_destination(
            body.api_base_url,
            allow_private=runtime_of(request).settings.outbound_allow_private,
        )
    except ForbiddenDestination as exc:
        raise Unprocessable(f"api_base_url {exc}", field="api_base_url") from exc
    await registry.get_tenant(session, tenant_id)
    await escalations.set_connection(
        session,
        tenant_id=tenant_id,
        kind=body.kind,
        api_base_url=body.api_base_url.rstrip("/"),
        username=body.username,
        secret=body.secret,
    )
    return {"tenant_id": tenant_id, "kind": body.kind}


@admin.get(
    "/tenants/{tenant_id}/escalations",
    summary="Escalations sent to the helpdesk, with their status and last error",
    responses=openapi.example(
        200,
        {
            "escalations": [
                {
                    "escalation_id": "0b6c...",
                    "customer_id": "cus_42",
                    "status": "created",
                    "helpdesk": "zendesk",
                    "ticket": "zendesk:35436",
                    "attempts": 1,
                    "last_error": None,
                }
            ]
        },
    ),
)
async def get_escalations(session: Session, tenant_id: TenantPath) -> dict[str, Any]:
    await registry.get_tenant(session, tenant_id)
    return {"escalations": await escalations.list_escalations(session, tenant_id)}


@admin.post(
    "/tenants/{tenant_id}/reconcile/{platform}",
    summary="Run one reconciliation pass now (the worker also runs it periodically)",
    responses={
        200: {
            "content": {
                "application/json": {
                    "example": {"seen": 3, "new_deliveries": 1, "events": 1, "error": None}
                }
            }
        }
    },
)
async def reconcile_now(
    request: Request, tenant_id: TenantPath, platform: PlatformPath
) -> dict[str, Any]:
    from afterglow.ingest.reconcile import reconcile

    return await reconcile(runtime_of(request), tenant_id, platform)


class HistoryImportIn(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"since": "2024-01-01T00:00:00Z", "earn_points": False}]}
    )
    since: Instant = Field(description="Import the orders created since this moment")
    earn_points: bool = Field(
        default=False,
        description="Whether loyalty credits the imported orders' points (never a "
        "first-order bonus); false: the orders count for spend and tiers only",
    )


@admin.post(
    "/tenants/{tenant_id}/import-history/{platform}",
    summary="Import the shop's past orders: order book and metrics, no journey, no message",
    responses={
        200: {
            "content": {
                "application/json": {
                    "example": {
                        "platform": "shopify",
                        "since": "2024-01-01T00:00:00+00:00",
                        "earn_points": False,
                        "pages": 10,
                        "orders": 500,
                        "new_deliveries": 512,
                        "events": 1012,
                        "failed": 0,
                        "throttled_waits": 1,
                        "error": None,
                        "failures": [],
                    }
                }
            }
        }
    },
)
async def import_history_now(
    request: Request, tenant_id: TenantPath, platform: PlatformPath, body: HistoryImportIn
) -> dict[str, Any]:
    from afterglow.ingest.history import import_history

    result = await import_history(
        runtime_of(request), tenant_id, platform, body.since, earn_points=body.earn_points
    )
    return result.body()


class TenantSettingsIn(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"late_order_days": 30}]})
    late_order_days: int = Field(
        ge=0,
        le=3650,
        description="A live event about an order placed more than this many days before it "
        "arrived is historical: recorded and counted, no journey, survey or message (0: never)",
    )


@admin.patch(
    "/tenants/{tenant_id}",
    summary="Change a tenant's settings",
    responses=openapi.example(200, {"tenant_id": "acme", "late_order_days": 30}),
)
async def update_tenant(
    session: Session, tenant_id: TenantPath, body: TenantSettingsIn
) -> dict[str, Any]:
    tenant = await registry.get_tenant(session, tenant_id)
    tenant.late_order_days = body.late_order_days
    return {"tenant_id": tenant_id, "late_order_days": tenant.late_order_days}


@webhooks.post(
    "/bigcommerce/{tenant_id}",
    summary="BigCommerce order webhooks (ids only: stored and answered at once, the order "
    "is fetched from the store's API in the background)",
    responses=_OUTCOMES,
    response_model=DeliveryOutcome,
    openapi_extra=_webhook_doc(
        {
            "scope": "store/order/created",
            "store_id": "1025646",
            "data": {"type": "order", "id": 250},
            "hash": "dd70c0976e06b67aaf671e73f49dcb79230ebf9d",
            "created_at": 1561479335,
            "producer": "stores/abc123",
        },
        {
            "X-Afterglow-Webhook-Token": "the tenant's bigcommerce secret, set as a custom "
            "header when the hook is created (BigCommerce does not sign payloads)"
        },
    ),
)
async def bigcommerce_webhook(request: Request, tenant_id: TenantPath) -> JSONResponse:
    refuse_malformed_auth_headers(request, ("x-afterglow-webhook-token",))
    rt = runtime_of(request)
    settings = settings_of(request)
    body = await read_body(request, settings.ingest_max_body_bytes)
    now = rt.clock.now()
    secrets = await directory_of(request).active_secrets(tenant_id, "bigcommerce", now)
    presented = request.headers.get("x-afterglow-webhook-token", "")
    ok = False
    for secret in secrets:
        ok |= hmac.compare_digest(secret.encode(), presented.encode())
    if not ok:
        raise Unauthorized(BAD_SIGNATURE)
    payload = parse_payload(body, "bigcommerce")
    headers = kept_headers(request)
    scope, dedupe_key = "", _body_key(body)
    try:
        with domain.normalization_errors():
            scope = str(payload.get("scope") or "")
            dedupe_key = str(domain.require(payload, "hash"))
            if scope in domain.BIGCOMMERCE_SCOPES:
                domain.bigcommerce_order_ref(payload)
    except domain.NormalizationError as exc:
        # BigCommerce deactivates a hook that keeps failing: stored and answered 202.
        reason = intake.quarantine_reason(exc)
        delivery = NewDelivery(
            tenant_id, "bigcommerce", scope, dedupe_key, headers, body, now,
            status=intake.QUARANTINED, last_error=reason[:1000],
        )  # fmt: skip
        return await store(request, delivery)
    if scope in domain.BIGCOMMERCE_SCOPES:
        # No call to the store's API here: a slow store must not fail the webhook. The
        # fetch worker takes it from here (due now).
        delivery = NewDelivery(
            tenant_id, "bigcommerce", scope, dedupe_key, headers, body, now,
            status=bigcommerce.FETCH_PENDING, next_attempt_at=now,
        )  # fmt: skip
        return await store(request, delivery)
    # Any other scope has no normalizer: stored as archived, for an operator to replay.
    delivery = NewDelivery(
        tenant_id, "bigcommerce", scope, dedupe_key, headers, body, now, status=ARCHIVED
    )
    return await store(request, delivery)
