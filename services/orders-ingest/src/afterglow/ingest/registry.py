"""The tenant registry: tenants, their webhook secrets (rotatable) and API keys.

Used by the admin API and the ``afterglow-ingest`` CLI. Never commits: the caller owns
the transaction, so a key and its ``tenant.api_key_issued`` event commit together.
"""

from __future__ import annotations

import secrets as pysecrets
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.events import CloudEvent, Outbox
from afterglow.events.catalog import ApiKeyIssued, ApiKeyRevoked
from afterglow.ingest import registry_store
from afterglow.ingest.models import Tenant
from afterglow.kit.auth import ApiKeyStore, generate_key
from afterglow.kit.errors import Conflict, NotFound

SOURCE = "afterglow/orders-ingest"
PLATFORMS = ("shopify", "woocommerce", "bigcommerce", "standard", "zendesk", "aftership")


def new_secret(platform: str) -> str:
    raw = pysecrets.token_bytes(32)
    if platform == "standard":
        import base64

        return "whsec_" + base64.b64encode(raw).decode()
    return pysecrets.token_urlsafe(32)


async def create_tenant(
    session: AsyncSession,
    *,
    tenant_id: str,
    name: str,
    shopify_shop_domain: str | None = None,
    woocommerce_store_url: str | None = None,
    bigcommerce_store_hash: str | None = None,
    now: datetime,
) -> Tenant:
    inserted = await registry_store.insert_tenant(
        session,
        tenant_id=tenant_id,
        name=name,
        shopify_shop_domain=shopify_shop_domain.lower() if shopify_shop_domain else None,
        woocommerce_store_url=normalize_store_url(woocommerce_store_url)
        if woocommerce_store_url
        else None,
        bigcommerce_store_hash=bigcommerce_store_hash,
        now=now,
    )
    if not inserted:
        raise Conflict("the tenant id or shop domain is already registered", field="tenant_id")
    tenant = await registry_store.tenant_row(session, tenant_id)
    assert tenant is not None
    return tenant


async def get_tenant(session: AsyncSession, tenant_id: str) -> Tenant:
    tenant = await registry_store.tenant_row(session, tenant_id)
    if tenant is None:
        raise NotFound("no such tenant", field="tenant_id")
    return tenant


async def tenant_by_shop_domain(session: AsyncSession, domain: str) -> str | None:
    return await registry_store.tenant_id_of_shop_domain(session, domain.strip().lower())


def normalize_store_url(url: str) -> str:
    """``https://Shop.example.com/`` and ``https://shop.example.com`` are one store."""
    return url.strip().rstrip("/").lower()


async def tenant_by_store_url(session: AsyncSession, url: str) -> str | None:
    return await registry_store.tenant_id_of_store_url(session, normalize_store_url(url))


async def rotate_secret(
    session: AsyncSession,
    *,
    tenant_id: str,
    platform: str,
    secret: str | None,
    now: datetime,
    grace_s: float,
) -> str:
    """Make ``secret`` (or a new one) current. The previous current secret stays valid
    for ``grace_s``; anything older expires now, so at most two are ever accepted."""
    await get_tenant(session, tenant_id)
    await registry_store.age_secrets_for_rotation(
        session, tenant_id=tenant_id, platform=platform, now=now, grace_s=grace_s
    )
    value = secret or new_secret(platform)
    await registry_store.add_current_secret(
        session, tenant_id=tenant_id, platform=platform, secret=value, now=now
    )
    return value


async def expire_previous_secrets(
    session: AsyncSession, *, tenant_id: str, platform: str, now: datetime
) -> int:
    """End a rotation early: only the current secret remains valid."""
    return await registry_store.expire_secrets_in_grace(
        session, tenant_id=tenant_id, platform=platform, now=now
    )


async def active_secrets(
    session: AsyncSession, tenant_id: str | None, platform: str, now: datetime
) -> list[str]:
    if tenant_id is None:
        return []
    return await registry_store.unexpired_secrets(session, tenant_id, platform, now)


async def set_connection(
    session: AsyncSession, *, tenant_id: str, platform: str, api_base_url: str, access_token: str
) -> None:
    await get_tenant(session, tenant_id)
    await registry_store.upsert_connection(
        session,
        tenant_id=tenant_id,
        platform=platform,
        api_base_url=api_base_url,
        access_token=access_token,
    )


async def issue_api_key(
    session: AsyncSession,
    store: ApiKeyStore,
    outbox: Outbox,
    *,
    tenant_id: str,
    scopes: list[str],
    now: datetime,
    expires_at: datetime | None = None,
) -> dict[str, Any]:
    """Store the key's hash here and announce it to every service in the same commit.
    The subject is the key id: issue and revoke of one key share a partition key."""
    await get_tenant(session, tenant_id)
    new = generate_key()
    await store.save(
        session,
        tenant_id=tenant_id,
        key_id=new.key_id,
        key_hash=new.key_hash,
        scopes=scopes,
        issued_at=now,
        expires_at=expires_at,
    )
    event = CloudEvent.new(
        ApiKeyIssued(
            key_id=new.key_id,
            key_hash=new.key_hash,
            scopes=scopes,
            issued_at=now,
            expires_at=expires_at,
        ),
        tenant_id=tenant_id,
        subject=new.key_id,
        source=SOURCE,
        time=now,
    )
    await outbox.add(session, event)
    return {"key_id": new.key_id, "key": new.key, "scopes": scopes, "event_id": event.id}


async def revoke_api_key(
    session: AsyncSession,
    store: ApiKeyStore,
    outbox: Outbox,
    *,
    tenant_id: str,
    key_id: str,
    now: datetime,
) -> str:
    if not await registry_store.tenant_has_api_key(
        session, store.table, tenant_id=tenant_id, key_id=key_id
    ):
        raise NotFound("no such API key", field="key_id")
    await store.revoke(session, tenant_id=tenant_id, key_id=key_id, revoked_at=now)
    event = CloudEvent.new(
        ApiKeyRevoked(key_id=key_id, revoked_at=now),
        tenant_id=tenant_id,
        subject=key_id,
        source=SOURCE,
        time=now,
    )
    await outbox.add(session, event)
    return event.id
