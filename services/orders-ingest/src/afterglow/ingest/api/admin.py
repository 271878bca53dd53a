"""The admin API (the operators' admin token): the tenant registry, webhook secrets and
their rotation, API keys, platform and helpdesk connections, reconciliation and
history imports run now."""

from __future__ import annotations

import hmac
from typing import Annotated, Literal

from fastapi import Depends, Request
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from afterglow.ingest import escalations, registry
from afterglow.ingest.api.shared import (
    TENANT_RE,
    NewApiKey,
    PlatformPath,
    RevokedApiKey,
    RotatedSecret,
    SecretIn,
    TenantPath,
    directory_of,
    rotate_webhook_secret,
    settings_of,
)
from afterglow.kit import openapi
from afterglow.kit.app import runtime_of
from afterglow.kit.auth import bearer_token
from afterglow.kit.db import Session
from afterglow.kit.errors import Unauthorized, Unprocessable
from afterglow.kit.outbound import ForbiddenDestination, check_destination
from afterglow.kit.routing import service_router
from afterglow.kit.types import Id, Instant, NoControls, ShortText

router = service_router(prefix="/admin", tags=["admin"])


@openapi.answers(
    openapi.error(
        401,
        "No admin token, or not the one configured (an empty setting disables the admin API)",
        "unauthorized",
        "an admin token is required",
    ),
    security=openapi.bearer("adminToken", "The operators' token (INGEST_ADMIN_TOKEN)"),
)
async def require_admin(request: Request) -> None:
    expected = settings_of(request).ingest_admin_token
    presented = bearer_token(request) or ""
    # An empty setting disables the admin API rather than accepting an empty token.
    if not expected or not hmac.compare_digest(expected.encode(), presented.encode()):
        raise Unauthorized("an admin token is required", headers={"WWW-Authenticate": "Bearer"})


router.dependencies.append(Depends(require_admin))


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


class TenantCreated(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "tenant_id": "acme",
                    "secrets": {"shopify": "shpss_6c1f...", "aftership": "as_0b7e..."},
                }
            ]
        }
    )
    tenant_id: str
    secrets: dict[str, str] = Field(
        description="A webhook secret per platform asked for, by platform (shown this once)"
    )


@router.post(
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
async def create_tenant(request: Request, session: Session, body: TenantIn) -> TenantCreated:
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
    return TenantCreated(tenant_id=body.tenant_id, secrets=secrets)


@router.post(
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
) -> RotatedSecret:
    return await rotate_webhook_secret(request, session, tenant_id, platform, body.secret)


class PreviousSecretsExpired(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"expired": 1}]})
    expired: int = Field(description="How many previous secrets stopped verifying now")


@router.delete(
    "/tenants/{tenant_id}/secrets/{platform}/previous",
    summary="End a rotation now: only the current secret stays valid",
    responses=openapi.example(200, {"expired": 1}),
)
async def expire_previous(
    request: Request, session: Session, tenant_id: TenantPath, platform: PlatformPath
) -> PreviousSecretsExpired:
    n = await registry.expire_previous_secrets(
        session, tenant_id=tenant_id, platform=platform, now=runtime_of(request).clock.now()
    )
    directory_of(request).forget()
    return PreviousSecretsExpired(expired=n)


class ApiKeyIn(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"scopes": ["orders:write"]}]})
    scopes: list[Annotated[str, StringConstraints(min_length=1, max_length=100), NoControls]] = (
        Field(min_length=1, max_length=50)
    )
    expires_at: Instant | None = None


@router.post(
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
) -> NewApiKey:
    rt = runtime_of(request)
    issued = await registry.issue_api_key(
        session,
        rt.api_keys,
        rt.outbox,
        tenant_id=tenant_id,
        scopes=body.scopes,
        now=rt.clock.now(),
        expires_at=body.expires_at,
    )
    return NewApiKey(**issued)


@router.delete(
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
) -> RevokedApiKey:
    rt = runtime_of(request)
    event_id = await registry.revoke_api_key(
        session, rt.api_keys, rt.outbox, tenant_id=tenant_id, key_id=key_id, now=rt.clock.now()
    )
    return RevokedApiKey(key_id=key_id, revoked=True, event_id=event_id)


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


class ConnectionSet(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"tenant_id": "acme", "platform": "shopify"}]}
    )
    tenant_id: str
    platform: str


@router.put(
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
) -> ConnectionSet:
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
    return ConnectionSet(tenant_id=tenant_id, platform=platform)


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


class HelpdeskSet(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"tenant_id": "acme", "kind": "zendesk"}]}
    )
    tenant_id: str
    kind: Literal["zendesk", "gorgias", "webhook"]


@router.put(
    "/tenants/{tenant_id}/helpdesk",
    summary="Set the helpdesk that detractors' escalations open tickets in",
    responses=openapi.example(200, {"tenant_id": "acme", "kind": "zendesk"}),
)
async def set_helpdesk(
    request: Request, session: Session, tenant_id: TenantPath, body: HelpdeskIn
) -> HelpdeskSet:
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
    return HelpdeskSet(tenant_id=tenant_id, kind=body.kind)


class EscalationOut(BaseModel):
    escalation_id: str = Field(description="The escalation.requested event's id")
    customer_id: str
    status: str = Field(description="Where the ticket stands (created: opened in the helpdesk)")
    helpdesk: str | None = Field(description="The helpdesk kind it went to")
    ticket: str | None = Field(description="The helpdesk's ticket, as kind:id")
    attempts: int
    last_error: str | None = Field(description="Why the last attempt failed")


class EscalationList(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
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
                }
            ]
        }
    )
    escalations: list[EscalationOut] = Field(description="Newest first, the last 200")


@router.get(
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
async def get_escalations(session: Session, tenant_id: TenantPath) -> EscalationList:
    await registry.get_tenant(session, tenant_id)
    rows = await escalations.list_escalations(session, tenant_id)
    return EscalationList(escalations=[EscalationOut(**r) for r in rows])


class ReconcileCounts(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [{"seen": 3, "new_deliveries": 1, "events": 1, "error": None}]
        }
    )
    seen: int = Field(description="Orders the platform listed as changed since the watermark")
    new_deliveries: int = Field(description="Of those, the ones no webhook had delivered")
    events: int = Field(description="Events the new deliveries emitted")
    error: str | None = Field(
        description="Why the poll stopped early (the next pass resumes from the last good order)"
    )


class ReconcileNotRun(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"error": "no connection"}]})
    error: str = Field(description="Why nothing was polled: no connection is set")


@router.post(
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
) -> ReconcileCounts | ReconcileNotRun:
    from afterglow.ingest.reconcile import reconcile

    result = await reconcile(runtime_of(request), tenant_id, platform)
    # Without a connection the pass answers its reason alone, no counts.
    if "seen" not in result:
        return ReconcileNotRun(**result)
    return ReconcileCounts(**result)


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


class HistoryImported(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
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
            ]
        }
    )
    platform: str
    since: str = Field(description="The moment asked for, ISO 8601")
    earn_points: bool
    pages: int = Field(description="Pages of orders read from the platform")
    orders: int = Field(description="Orders read")
    new_deliveries: int = Field(
        description="Of the deliveries they made, the ones not stored before"
    )
    events: int = Field(description="Events emitted")
    failed: int = Field(description="Orders that could not be imported")
    throttled_waits: int = Field(description="Times the platform's rate limit made the import wait")
    error: str | None = Field(description="Why the import stopped early")
    failures: list[str] = Field(description="Why orders failed, the first 20")


@router.post(
    "/tenants/{tenant_id}/import-history/{platform}",
    summary="Import the shop's past orders: order book and metrics, no journey, no message",
)
async def import_history_now(
    request: Request, tenant_id: TenantPath, platform: PlatformPath, body: HistoryImportIn
) -> HistoryImported:
    from afterglow.ingest.history import import_history

    result = await import_history(
        runtime_of(request), tenant_id, platform, body.since, earn_points=body.earn_points
    )
    return HistoryImported(**result.body())


class TenantSettingsIn(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"late_order_days": 30}]})
    late_order_days: int = Field(
        ge=0,
        le=3650,
        description="A live event about an order placed more than this many days before it "
        "arrived is historical: recorded and counted, no journey, survey or message (0: never)",
    )


class TenantSettingsOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"tenant_id": "acme", "late_order_days": 30}]}
    )
    tenant_id: str
    late_order_days: int


@router.patch(
    "/tenants/{tenant_id}",
    summary="Change a tenant's settings",
    responses=openapi.example(200, {"tenant_id": "acme", "late_order_days": 30}),
)
async def update_tenant(
    session: Session, tenant_id: TenantPath, body: TenantSettingsIn
) -> TenantSettingsOut:
    tenant = await registry.get_tenant(session, tenant_id)
    tenant.late_order_days = body.late_order_days
    return TenantSettingsOut(tenant_id=tenant_id, late_order_days=tenant.late_order_days)
