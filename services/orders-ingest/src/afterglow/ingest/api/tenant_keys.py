"""A tenant's own API keys and webhook secrets, under its API key (scope ``keys:admin``):
what the console's settings page uses, so that it never holds the operators' admin
token.

The rules that keep self-service from widening access:
- a key can only grant scopes its caller holds ("*" only from a "*" key), else a key
  with ``keys:admin`` alone could mint itself every other scope;
- nor revoke a key holding scopes it does not hold itself;
- the caller's own key cannot be revoked here (a console session would lock itself out
  mid-page; the operators' admin route can still revoke it);
- issue and revoke are the admin path's (registry): the key's hash and its
  ``tenant.api_key_issued`` / ``revoked`` event commit together, so every service
  learns of it; a webhook secret rotates as the admin route rotates it (the previous
  one keeps verifying for the grace period).
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from fastapi import Depends, Request
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from afterglow.ingest import registry, store
from afterglow.ingest.api.shared import (
    NewApiKey,
    PlatformPath,
    RevokedApiKey,
    RotatedSecret,
    SecretIn,
    rotate_webhook_secret,
)
from afterglow.kit import openapi
from afterglow.kit.app import runtime_of
from afterglow.kit.auth import ALL_SCOPES, Principal, require_scope
from afterglow.kit.db import Session
from afterglow.kit.errors import Conflict, Forbidden, NotFound
from afterglow.kit.routing import service_router
from afterglow.kit.types import Id, Instant, NoControls

SCOPE = "keys:admin"
router = service_router(prefix="/v1", tags=["keys"])
KeysAdmin = Annotated[Principal, Depends(require_scope(SCOPE))]


class ApiKeyInfo(BaseModel):
    key_id: str
    scopes: list[str]
    issued_at: datetime
    expires_at: datetime | None
    revoked_at: datetime | None
    current: bool = Field(description="The key this request was made with")


class ApiKeyList(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "api_keys": [
                        {
                            "key_id": "3fa1c9d2e7b4",
                            "scopes": ["console:read", "keys:admin"],
                            "issued_at": "2026-03-01T09:00:00Z",
                            "expires_at": None,
                            "revoked_at": None,
                            "current": True,
                        }
                    ]
                }
            ]
        }
    )
    api_keys: list[ApiKeyInfo] = Field(
        description="Newest first, revoked ones included; never a key itself (only its "
        "hash is stored). When a key was last used is not recorded."
    )


class NewApiKeyIn(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"scopes": ["orders:write"]}]})
    scopes: list[Annotated[str, StringConstraints(min_length=1, max_length=100), NoControls]] = (
        Field(min_length=1, max_length=50, description="Each one held by the calling key")
    )
    expires_at: Instant | None = None


def refused_scopes(caller: Principal, wanted: list[str]) -> list[str]:
    """The requested scopes the caller may not grant (sorted, for the message)."""
    if ALL_SCOPES in caller.scopes:
        return []
    return sorted({s for s in wanted if s == ALL_SCOPES or s not in caller.scopes})


@router.get(
    "/api-keys",
    summary="The tenant's API keys (scope keys:admin; never the keys themselves)",
    response_model=ApiKeyList,
)
async def list_api_keys(request: Request, session: Session, caller: KeysAdmin) -> ApiKeyList:
    table = runtime_of(request).api_keys.table
    rows = await store.api_keys_of_tenant(session, table, caller.tenant_id)
    return ApiKeyList(
        api_keys=[
            ApiKeyInfo(
                key_id=r.key_id,
                scopes=list(r.scopes),
                issued_at=r.issued_at,
                expires_at=r.expires_at,
                revoked_at=r.revoked_at,
                current=r.key_id == caller.key_id,
            )
            for r in rows
        ]
    )


@router.post(
    "/api-keys",
    status_code=201,
    summary="Issue an API key with scopes the caller holds (shown once)",
    response_model=NewApiKey,
    responses=openapi.error(
        403,
        "A scope the calling key does not hold itself (or '*' from a key without it)",
        "forbidden",
        "this key cannot grant the scopes ['feedback:write']",
        field="scopes",
    ),
)
async def issue_api_key(
    request: Request, session: Session, caller: KeysAdmin, body: NewApiKeyIn
) -> NewApiKey:
    refused = refused_scopes(caller, body.scopes)
    if refused:
        raise Forbidden(f"this key cannot grant the scopes {refused}", field="scopes")
    rt = runtime_of(request)
    issued = await registry.issue_api_key(
        session,
        rt.api_keys,
        rt.outbox,
        tenant_id=caller.tenant_id,
        scopes=list(dict.fromkeys(body.scopes)),
        now=rt.clock.now(),
        expires_at=body.expires_at,
    )
    return NewApiKey(**issued)


@router.delete(
    "/api-keys/{key_id}",
    summary="Revoke one of the tenant's API keys (not the calling one)",
    response_model=RevokedApiKey,
    responses=openapi.errors(
        openapi.error(
            403,
            "The key holds scopes the calling key does not",
            "forbidden",
            "key 3fa1c9d2e7b4 holds scopes this key does not: ['*']",
            field="key_id",
        ),
        openapi.error(404, "Not a key of this tenant", "not_found", "no such API key", "key_id"),
        openapi.error(
            409,
            "The key making the request, or a key already revoked",
            "conflict",
            "key 3fa1c9d2e7b4 is the one making this request; revoke it with another key",
            field="key_id",
        ),
    ),
)
async def revoke_api_key(
    request: Request, session: Session, caller: KeysAdmin, key_id: Id
) -> RevokedApiKey:
    if key_id == caller.key_id:
        raise Conflict(
            f"key {key_id} is the one making this request; revoke it with another key",
            field="key_id",
        )
    rt = runtime_of(request)
    row = await store.api_key_scopes(session, rt.api_keys.table, caller.tenant_id, key_id)
    if row is None:
        raise NotFound("no such API key", field="key_id")
    # A form posted twice must not announce a second revocation (nor move its time).
    if row.revoked_at is not None:
        raise Conflict(f"key {key_id} is already revoked", field="key_id")
    # A key that could not have issued this one may not revoke it either: a narrow
    # keys:admin key must not be able to cut off the shop's integration keys.
    refused = refused_scopes(caller, list(row.scopes))
    if refused:
        raise Forbidden(f"key {key_id} holds scopes this key does not: {refused}", field="key_id")
    event_id = await registry.revoke_api_key(
        session,
        rt.api_keys,
        rt.outbox,
        tenant_id=caller.tenant_id,
        key_id=key_id,
        now=rt.clock.now(),
    )
    return RevokedApiKey(key_id=key_id, revoked=True, event_id=event_id)


@router.post(
    "/webhook-secrets/{platform}",
    status_code=201,
    summary="Rotate the tenant's webhook secret of a platform (shown once; the previous "
    "one stays valid for the grace period)",
    response_model=RotatedSecret,
)
async def rotate_secret(
    request: Request,
    session: Session,
    caller: KeysAdmin,
    platform: PlatformPath,
    body: SecretIn | None = None,
) -> RotatedSecret:
    secret = body.secret if body else None
    return await rotate_webhook_secret(request, session, caller.tenant_id, platform, secret)
