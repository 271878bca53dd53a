"""The tenant registry: tenants, their webhook secrets (rotatable) and API keys.

Used by the admin API and the ``afterglow-ingest`` CLI. Never commits: the caller owns
the transaction, so a key and its ``tenant.api_key_issued`` event commit together.
"""

from __future__ import annotations

import secrets as pysecrets
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import and_, delete, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.events import CloudEvent, Outbox
from afterglow.events.catalog import ApiKeyIssued, ApiKeyRevoked
from afterglow.ingest.models import PlatformConnection, Tenant, WebhookSecret
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
    stmt = (
        pg_insert(Tenant)
        .values(
            tenant_id=tenant_id,
            name=name,
            shopify_shop_domain=shopify_shop_domain.lower() if shopify_shop_domain else None,
            woocommerce_store_url=normalize_store_url(woocommerce_store_url)
            if woocommerce_store_url
            else None,
            bigcommerce_store_hash=bigcommerce_store_hash,
            created_at=now,
        )
        .on_conflict_do_nothing()
        .returning(Tenant.tenant_id)
    )
    if (await session.execute(stmt)).scalar() is None:
        raise Conflict("the tenant id or shop domain is already registered", field="tenant_id")
    tenant = await session.get(Tenant, tenant_id)
    assert tenant is not None
    return tenant


async def get_tenant(session: AsyncSession, tenant_id: str) -> Tenant:
    tenant = await session.get(Tenant, tenant_id)
    if tenant is None:
        raise NotFound("no such tenant", field="tenant_id")
    return tenant


async def tenant_by_shop_domain(session: AsyncSession, domain: str) -> str | None:
    return (
        await session.execute(
            select(Tenant.tenant_id).where(Tenant.shopify_shop_domain == domain.strip().lower())
        )
    ).scalar()


def normalize_store_url(url: str) -> str:
    """``https://Shop.example.com/`` and ``https://shop.example.com`` are one store."""
    return url.strip().rstrip("/").lower()


async def tenant_by_store_url(session: AsyncSession, url: str) -> str | None:
    return (
        await session.execute(
            select(Tenant.tenant_id).where(Tenant.woocommerce_store_url == normalize_store_url(url))
        )
    ).scalar()


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
    mine = and_(WebhookSecret.tenant_id == tenant_id, WebhookSecret.platform == platform)
    await session.execute(
        update(WebhookSecret)
        .where(mine, WebhookSecret.expires_at.is_not(None), WebhookSecret.expires_at > now)
        .values(expires_at=now)
    )
    await session.execute(
        update(WebhookSecret)
        .where(mine, WebhookSecret.expires_at.is_(None))
        .values(expires_at=now + timedelta(seconds=grace_s))
    )
    # Expired rows are kept a day for audits, then dropped.
    await session.execute(
        delete(WebhookSecret).where(mine, WebhookSecret.expires_at < now - timedelta(days=1))
    )
    value = secret or new_secret(platform)
    session.add(WebhookSecret(tenant_id=tenant_id, platform=platform, secret=value, created_at=now))
    await session.flush()
    return value


async def expire_previous_secrets(
    session: AsyncSession, *, tenant_id: str, platform: str, now: datetime
) -> int:
    """End a rotation early: only the current secret remains valid."""
    result = await session.execute(
        update(WebhookSecret)
        .where(
            WebhookSecret.tenant_id == tenant_id,
            WebhookSecret.platform == platform,
            WebhookSecret.expires_at.is_not(None),
            WebhookSecret.expires_at > now,
        )
        .values(expires_at=now)
    )
    return int(getattr(result, "rowcount", 0) or 0)


async def active_secrets(
    session: AsyncSession, tenant_id: str | None, platform: str, now: datetime
) -> list[str]:
    if tenant_id is None:
        return []
    rows = await session.execute(
        select(WebhookSecret.secret).where(
            WebhookSecret.tenant_id == tenant_id,
            WebhookSecret.platform == platform,
            or_(WebhookSecret.expires_at.is_(None), WebhookSecret.expires_at > now),
        )
    )
    return list(rows.scalars())


async def set_connection(
    session: AsyncSession, *, tenant_id: str, platform: str, api_base_url: str, access_token: str
) -> None:
    await get_tenant(session, tenant_id)
    stmt = pg_insert(PlatformConnection).values(
        tenant_id=tenant_id, platform=platform, api_base_url=api_base_url, access_token=access_token
    )
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=["tenant_id", "platform"],
            set_={"api_base_url": api_base_url, "access_token": access_token},
        )
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
    row = (
        await session.execute(
            select(store.table.c.key_id).where(
                store.table.c.key_id == key_id, store.table.c.tenant_id == tenant_id
            )
        )
    ).first()
    if row is None:
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
