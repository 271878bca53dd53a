"""What several router modules use: the request's settings and receiving objects, the
tenant path parameter, the body reader and the answer model of a delivery."""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from typing import Annotated

from fastapi import Path, Request
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from starlette.requests import ClientDisconnect

from afterglow.events.envelope import TENANT_ID_PATTERN
from afterglow.ingest import domain, registry
from afterglow.ingest.deps import get_deps
from afterglow.ingest.directory import TenantDirectory
from afterglow.ingest.group_commit import DeliveryWriter
from afterglow.ingest.settings import IngestSettings
from afterglow.kit.app import runtime_of
from afterglow.kit.db import Session
from afterglow.kit.errors import AppError, PayloadTooLarge, Unauthorized
from afterglow.kit.types import NoControls

log = logging.getLogger(__name__)

# One answer for every authentication failure: which part failed is no business of
# whoever is probing (unknown tenant, missing header, wrong secret, stale timestamp).
BAD_SIGNATURE = "the webhook signature could not be verified"
TENANT_RE = TENANT_ID_PATTERN.pattern


# Read from the service's typed deps (afterglow.ingest.deps). The webhook routes take
# only the request, not Depends(get_deps): the Shopify fast path calls its route
# function directly, without FastAPI's dependency machinery.
def settings_of(request: Request) -> IngestSettings:
    return get_deps(request).settings


def writer_of(request: Request) -> DeliveryWriter:
    return get_deps(request).writer


def directory_of(request: Request) -> TenantDirectory:
    return get_deps(request).directory


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


TenantPath = Annotated[str, Path(pattern=TENANT_RE, examples=["acme"])]
PlatformPath = Annotated[
    str,
    Path(
        pattern="^(shopify|woocommerce|bigcommerce|standard|zendesk|aftership)$",
        examples=["shopify"],
    ),
]


class SecretIn(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"secret": None}]})
    secret: Annotated[str, StringConstraints(min_length=8, max_length=500), NoControls] | None = (
        Field(
            default=None,
            description="The platform's secret (Shopify's app secret); omitted: generated",
        )
    )


# The answers shown once (a key, a secret) and a revocation's: one model each for the
# operators' admin routes and the tenant's own (api.tenant_keys), which answer alike.
class NewApiKey(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "key_id": "3fa1c9d2e7b4",
                    "key": "agk_3fa1c9d2e7b4_Yk1...",
                    "scopes": ["orders:write"],
                    "event_id": "9c0d7a4e-2b1f-5e3c-8a6d-4f2e1b0c9d8e",
                }
            ]
        }
    )
    key_id: str
    key: str = Field(description="Shown this once: only its hash is kept")
    scopes: list[str]
    event_id: str = Field(description="The tenant.api_key_issued event announcing it")


class RevokedApiKey(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "key_id": "3fa1c9d2e7b4",
                    "revoked": True,
                    "event_id": "1e5b3c7a-0d9f-5a2e-b4c8-7f6e2d1a0b3c",
                }
            ]
        }
    )
    key_id: str
    revoked: bool
    event_id: str = Field(description="The tenant.api_key_revoked event announcing it")


class RotatedSecret(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"platform": "shopify", "secret": "shpss_9a2d...", "previous_valid_for_s": 3600}
            ]
        }
    )
    platform: str
    secret: str = Field(description="Shown this once")
    previous_valid_for_s: int = Field(
        description="How long the secret it replaces keeps verifying deliveries"
    )


async def rotate_webhook_secret(
    request: Request, session: Session, tenant_id: str, platform: str, secret: str | None
) -> RotatedSecret:
    """Make ``secret`` (or a generated one) the platform's current webhook secret; the
    previous one keeps verifying for ``ingest_rotation_grace_s``, so deliveries the
    platform signed before it switched are not refused mid-rotation. One code path for
    the operators' admin route and the tenant's own (api.tenant_keys)."""
    grace = settings_of(request).ingest_rotation_grace_s
    value = await registry.rotate_secret(
        session,
        tenant_id=tenant_id,
        platform=platform,
        secret=secret,
        now=runtime_of(request).clock.now(),
        grace_s=grace,
    )
    # The receivers cache each tenant's secrets: read them again.
    directory_of(request).forget()
    return RotatedSecret(platform=platform, secret=value, previous_valid_for_s=grace)


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
