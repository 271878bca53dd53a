"""Signed webhooks from commerce platforms (Shopify, WooCommerce, BigCommerce), the
Standard Webhooks door, helpdesks (Zendesk) and trackers (AfterShip)."""

from __future__ import annotations

import hmac
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse

from afterglow.ingest import bigcommerce, domain, intake
from afterglow.ingest.api.receiving import (
    ARCHIVED,
    OUTCOMES,
    body_key,
    kept_headers,
    receive,
    signature_refused,
    store,
    webhook_doc,
)
from afterglow.ingest.api.shared import (
    DeliveryOutcome,
    TenantPath,
    directory_of,
    read_body,
    refuse_malformed_auth_headers,
    settings_of,
)
from afterglow.ingest.group_commit import NewDelivery
from afterglow.ingest.payloads import parse_payload
from afterglow.ingest.platforms import bigcommerce as bc
from afterglow.ingest.platforms import woocommerce
from afterglow.kit import standard_webhooks
from afterglow.kit.app import runtime_of
from afterglow.kit.routing import service_router

router = service_router(prefix="/webhooks", tags=["webhooks"])

SHOPIFY_EXAMPLE = {
    "id": 820982911946154508,
    "email": "jon@example.com",
    "created_at": "2026-03-02T09:30:00-05:00",
    "currency": "USD",
    "total_price": "199.65",
    "line_items": [{"product_id": 632910392, "sku": "IPOD2008", "quantity": 1, "price": "199.00"}],
    "customer": {"id": 115310627314723954, "email": "jon@example.com"},
}


@router.post(
    "/shopify",
    summary="Shopify webhooks (tenant from X-Shopify-Shop-Domain)",
    responses=OUTCOMES,
    response_model=DeliveryOutcome,
    openapi_extra=webhook_doc(
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


@router.post(
    "/woocommerce/{tenant_id}",
    summary="WooCommerce webhooks (order.created, order.updated)",
    responses=OUTCOMES,
    response_model=DeliveryOutcome,
    openapi_extra=webhook_doc(
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


@router.post(
    "/woocommerce",
    summary="WooCommerce webhooks, tenant from X-WC-Webhook-Source (the store URL)",
    responses=OUTCOMES,
    response_model=DeliveryOutcome,
    openapi_extra=webhook_doc(
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
        if topic in woocommerce.WOO_TOPICS:
            return topic, woocommerce.woo_dedupe_key(payload)
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


@router.post(
    "/standard/{tenant_id}",
    summary="Standard Webhooks carrying Afterglow's canonical order and ticket payloads",
    responses=OUTCOMES,
    response_model=DeliveryOutcome,
    openapi_extra=webhook_doc(
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


@router.post(
    "/zendesk/{tenant_id}",
    summary="Zendesk ticket events (created, status changed, solved)",
    responses=OUTCOMES,
    response_model=DeliveryOutcome,
    openapi_extra=webhook_doc(
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


@router.post(
    "/aftership/{tenant_id}",
    summary="AfterShip tracking updates (Delivered becomes order.delivered)",
    responses=OUTCOMES,
    response_model=DeliveryOutcome,
    openapi_extra=webhook_doc(
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


@router.post(
    "/bigcommerce/{tenant_id}",
    summary="BigCommerce order webhooks (ids only: stored and answered at once, the order "
    "is fetched from the store's API in the background)",
    responses=OUTCOMES,
    response_model=DeliveryOutcome,
    openapi_extra=webhook_doc(
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
        raise signature_refused("bigcommerce")
    payload = parse_payload(body, "bigcommerce")
    headers = kept_headers(request)
    scope, dedupe_key = "", body_key(body)
    try:
        with domain.normalization_errors():
            scope = str(payload.get("scope") or "")
            dedupe_key = str(domain.require(payload, "hash"))
            if scope in bc.BIGCOMMERCE_SCOPES:
                bc.bigcommerce_order_ref(payload)
    except domain.NormalizationError as exc:
        # BigCommerce deactivates a hook that keeps failing: stored and answered 202.
        reason = intake.quarantine_reason(exc)
        delivery = NewDelivery(
            tenant_id, "bigcommerce", scope, dedupe_key, headers, body, now,
            status=intake.QUARANTINED, last_error=reason[:1000],
        )  # fmt: skip
        return await store(request, delivery)
    if scope in bc.BIGCOMMERCE_SCOPES:
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
