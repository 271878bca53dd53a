"""Every SQL statement of reward codes, set-based: one statement per batch."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import DateTime, Text, case, column, select, tuple_, update, values
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.ingest.discounts import domain
from afterglow.ingest.models import PlatformConnection, ShopDiscount


@dataclass(frozen=True)
class Claim:
    """A row this worker leased: the lease is (attempts, lease_until)."""

    tenant_id: str
    code: str
    state: str
    platform: str | None
    attempts: int
    lease_until: datetime
    discount: domain.Discount


async def insert_requests(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """A repeated request (same tenant and code) changes nothing: the code is the key."""
    if rows:
        await session.execute(
            pg_insert(ShopDiscount)
            .values(rows)
            .on_conflict_do_nothing(index_elements=["tenant_id", "code"])
        )


async def mark_used(
    session: AsyncSession, spent: list[tuple[str, str, str, datetime]], now: datetime
) -> list[tuple[str, str, str, str, str, datetime]]:
    """``spent``: (tenant, code, order id, placed at), each code once. Returns the rows
    that became used: (tenant, code, customer, issuer, reference, used at)."""
    if not spent:
        return []
    v = values(
        column("tenant_id", Text),
        column("code", Text),
        column("order_id", Text),
        column("used_at", DateTime(timezone=True)),
        name="spent",
    ).data(spent)
    t = ShopDiscount.__table__.c
    result = await session.execute(
        update(ShopDiscount)
        .where(
            t.tenant_id == v.c.tenant_id,
            t.code == v.c.code,
            # A code being disabled that an order spent meanwhile is spent, not revoked.
            t.state.in_((domain.ACTIVE, domain.DISABLING)),
        )
        .values(
            state=domain.USED,
            used_order_id=v.c.order_id,
            used_at=v.c.used_at,
            next_attempt_at=None,
            updated_at=now,
        )
        .returning(t.tenant_id, t.code, t.customer_id, t.issuer, t.reference, t.used_at)
        .execution_options(synchronize_session=False)
    )
    return [tuple(r) for r in result.all()]


async def request_revokes(
    session: AsyncSession, revokes: list[tuple[str, str, str]], now: datetime
) -> None:
    """``revokes``: (tenant, code, reason). An active code gets its disable call due now;
    one still being created is disabled as soon as it exists (and never announced); one
    that never reached the shop is simply disabled. A used code stays used."""
    if not revokes:
        return
    v = values(
        column("tenant_id", Text), column("code", Text), column("reason", Text), name="rv"
    ).data(revokes)
    t = ShopDiscount.__table__.c
    active = t.state == domain.ACTIVE
    await session.execute(
        update(ShopDiscount)
        .where(
            t.tenant_id == v.c.tenant_id,
            t.code == v.c.code,
            t.state.in_((domain.ACTIVE, domain.CREATING, domain.FAILED)),
        )
        .values(
            state=case(
                (active, domain.DISABLING),
                (t.state == domain.FAILED, domain.DISABLED),
                else_=t.state,
            ),
            revoke_reason=v.c.reason,
            next_attempt_at=case((active, now), else_=t.next_attempt_at),
            attempts=case((active, 0), else_=t.attempts),
            announce=None,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )


async def expire_due(session: AsyncSession, now: datetime) -> None:
    """Active codes past their end get their disable call due now."""
    await session.execute(
        update(ShopDiscount)
        .where(ShopDiscount.state == domain.ACTIVE, ShopDiscount.ends_at <= now)
        .values(
            state=domain.DISABLING,
            revoke_reason="expired",
            next_attempt_at=now,
            attempts=0,
            updated_at=now,
        )
        .execution_options(synchronize_session=False)
    )


async def claim_due(
    session: AsyncSession, now: datetime, batch: int, lease_s: float
) -> list[Claim]:
    """Lease up to ``batch`` rows with a call due; rows another worker holds are
    skipped. The attempt is counted here, so a call that kills its process still uses
    one up (and the next attempt, after the lease, looks the code up first)."""
    rows = (
        (
            await session.execute(
                select(ShopDiscount)
                .where(
                    ShopDiscount.state.in_(domain.DUE_STATES),
                    ShopDiscount.next_attempt_at <= now,
                )
                .order_by(ShopDiscount.next_attempt_at)
                .limit(batch)
                .with_for_update(skip_locked=True)
            )
        )
        .scalars()
        .all()
    )
    if not rows:
        return []
    lease_until = now + timedelta(seconds=lease_s)
    await session.execute(
        update(ShopDiscount)
        .where(
            tuple_(ShopDiscount.tenant_id, ShopDiscount.code).in_(
                [(r.tenant_id, r.code) for r in rows]
            )
        )
        .values(attempts=ShopDiscount.attempts + 1, next_attempt_at=lease_until)
        .execution_options(synchronize_session=False)
    )
    return [
        Claim(
            tenant_id=r.tenant_id,
            code=r.code,
            state=r.state,
            platform=r.platform,
            attempts=r.attempts + 1,
            lease_until=lease_until,
            discount=domain.Discount(
                code=r.code,
                customer_id=r.customer_id,
                title=r.title,
                value_kind=r.value_kind,
                amount_minor=r.amount_minor,
                currency=r.currency,
                percent=r.percent,
                starts_at=r.starts_at,
                ends_at=r.ends_at,
                platform_discount_id=r.platform_discount_id,
            ),
        )
        for r in rows
    ]


async def connections(
    session: AsyncSession, tenants: set[str]
) -> dict[str, dict[str, PlatformConnection]]:
    """The shop connections of the given tenants, by tenant and platform (one query)."""
    out: dict[str, dict[str, PlatformConnection]] = {}
    if not tenants:
        return out
    rows = await session.scalars(
        select(PlatformConnection).where(
            PlatformConnection.tenant_id.in_(tenants),
            PlatformConnection.platform.in_(domain.PLATFORMS),
        )
    )
    for conn in rows:
        session.expunge(conn)  # read after the session closes, during the calls
        out.setdefault(conn.tenant_id, {})[conn.platform] = conn
    return out


async def leased(session: AsyncSession, claim: Claim) -> ShopDiscount | None:
    """The row, locked, if the lease is still ours (no other worker claimed it after our
    lease ran out)."""
    return (
        await session.execute(
            select(ShopDiscount)
            .where(
                ShopDiscount.tenant_id == claim.tenant_id,
                ShopDiscount.code == claim.code,
                ShopDiscount.state == claim.state,
                ShopDiscount.attempts == claim.attempts,
                ShopDiscount.next_attempt_at == claim.lease_until,
            )
            .with_for_update()
        )
    ).scalar()


async def page(
    session: AsyncSession, tenant_id: str, state: str | None, limit: int
) -> list[ShopDiscount]:
    q = select(ShopDiscount).where(ShopDiscount.tenant_id == tenant_id)
    if state:
        q = q.where(ShopDiscount.state == state)
    q = q.order_by(ShopDiscount.updated_at.desc(), ShopDiscount.code).limit(limit)
    return list((await session.scalars(q)).all())
