"""Every SQL statement of the tenant registry (:mod:`afterglow.ingest.registry`):
tenants, their webhook secrets and platform connections (with the reconciliation's
watermark, :mod:`afterglow.ingest.reconcile`), and a tenant's API key rows.
Never commits: the registry's caller owns the transaction."""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import Table, and_, delete, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.ingest.models import PlatformConnection, Tenant, WebhookSecret

# --- tenants ----------------------------------------------------------------------------


async def insert_tenant(
    session: AsyncSession,
    *,
    tenant_id: str,
    name: str,
    shopify_shop_domain: str | None,
    woocommerce_store_url: str | None,
    bigcommerce_store_hash: str | None,
    now: datetime,
) -> bool:
    """False when the tenant id or one of its shop identifiers is already registered."""
    stmt = (
        pg_insert(Tenant)
        .values(
            tenant_id=tenant_id,
            name=name,
            shopify_shop_domain=shopify_shop_domain,
            woocommerce_store_url=woocommerce_store_url,
            bigcommerce_store_hash=bigcommerce_store_hash,
            created_at=now,
        )
        .on_conflict_do_nothing()
        .returning(Tenant.tenant_id)
    )
    return (await session.execute(stmt)).scalar() is not None


async def tenant_row(session: AsyncSession, tenant_id: str) -> Tenant | None:
    return await session.get(Tenant, tenant_id)


async def tenant_id_of_shop_domain(session: AsyncSession, domain: str) -> str | None:
    """``domain`` as stored: already stripped and lower-cased."""
    return (
        await session.execute(select(Tenant.tenant_id).where(Tenant.shopify_shop_domain == domain))
    ).scalar()


async def tenant_id_of_store_url(session: AsyncSession, url: str) -> str | None:
    """``url`` as stored: already normalized."""
    return (
        await session.execute(select(Tenant.tenant_id).where(Tenant.woocommerce_store_url == url))
    ).scalar()


# --- webhook secrets ----------------------------------------------------------------------


async def age_secrets_for_rotation(
    session: AsyncSession, *, tenant_id: str, platform: str, now: datetime, grace_s: float
) -> None:
    """Before a new current secret: a secret already in its grace expires now, the
    current one gets ``grace_s`` more, and rows expired over a day ago (kept for
    audits) are dropped. Three statements, in this order."""
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
    await session.execute(
        delete(WebhookSecret).where(mine, WebhookSecret.expires_at < now - timedelta(days=1))
    )


async def add_current_secret(
    session: AsyncSession, *, tenant_id: str, platform: str, secret: str, now: datetime
) -> None:
    session.add(
        WebhookSecret(tenant_id=tenant_id, platform=platform, secret=secret, created_at=now)
    )
    await session.flush()


async def expire_secrets_in_grace(
    session: AsyncSession, *, tenant_id: str, platform: str, now: datetime
) -> int:
    """Every secret still in its grace expires now; how many did."""
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


async def unexpired_secrets(
    session: AsyncSession, tenant_id: str, platform: str, now: datetime
) -> list[str]:
    rows = await session.execute(
        select(WebhookSecret.secret).where(
            WebhookSecret.tenant_id == tenant_id,
            WebhookSecret.platform == platform,
            or_(WebhookSecret.expires_at.is_(None), WebhookSecret.expires_at > now),
        )
    )
    return list(rows.scalars())


async def unexpired_secrets_with_expiry(
    session: AsyncSession, tenant_id: str, platform: str, now: datetime
) -> list[tuple[str, datetime | None]]:
    """(secret, expires_at) of those not expired at ``now`` (a cache checks the expiry
    again on every use)."""
    rows = await session.execute(
        select(WebhookSecret.secret, WebhookSecret.expires_at).where(
            WebhookSecret.tenant_id == tenant_id,
            WebhookSecret.platform == platform,
            or_(WebhookSecret.expires_at.is_(None), WebhookSecret.expires_at > now),
        )
    )
    return [(r.secret, r.expires_at) for r in rows]


# --- platform connections -----------------------------------------------------------------


async def upsert_connection(
    session: AsyncSession, *, tenant_id: str, platform: str, api_base_url: str, access_token: str
) -> None:
    stmt = pg_insert(PlatformConnection).values(
        tenant_id=tenant_id, platform=platform, api_base_url=api_base_url, access_token=access_token
    )
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=["tenant_id", "platform"],
            set_={"api_base_url": api_base_url, "access_token": access_token},
        )
    )


async def connections_of_platforms(
    session: AsyncSession, platforms: tuple[str, ...]
) -> list[tuple[str, str]]:
    """(tenant id, platform) of every connection to one of ``platforms``."""
    rows = await session.execute(
        select(PlatformConnection.tenant_id, PlatformConnection.platform).where(
            PlatformConnection.platform.in_(platforms)
        )
    )
    return [(tenant_id, platform) for tenant_id, platform in rows.all()]


async def connection(
    session: AsyncSession, tenant_id: str, platform: str
) -> PlatformConnection | None:
    return await session.get(PlatformConnection, (tenant_id, platform))


async def record_reconcile_run(
    session: AsyncSession,
    *,
    tenant_id: str,
    platform: str,
    watermark: datetime | None,
    ran_at: datetime,
    error: str | None,
) -> None:
    """Where a reconciliation pass got to (the next one resumes there), when, and why
    it stopped early if it did."""
    await session.execute(
        update(PlatformConnection)
        .where(
            PlatformConnection.tenant_id == tenant_id,
            PlatformConnection.platform == platform,
        )
        .values(watermark=watermark, last_run_at=ran_at, last_error=error)
    )


# --- API keys -------------------------------------------------------------------------------


async def tenant_has_api_key(
    session: AsyncSession, table: Table, *, tenant_id: str, key_id: str
) -> bool:
    """``table``: the API key store's hash table."""
    row = (
        await session.execute(
            select(table.c.key_id).where(table.c.key_id == key_id, table.c.tenant_id == tenant_id)
        )
    ).first()
    return row is not None
