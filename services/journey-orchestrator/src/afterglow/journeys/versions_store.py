"""Journey definitions as the API manages them: versions stored, listed, activated and
deactivated, and the running instances a migration moves between versions.

The engine's own reading of definitions (the default journey, the active versions and
bodies a batch needs, cached) stays in :mod:`.store`; this module holds the statements
of the definition routes, in the caller's transaction."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.journeys.models import CustomerProfile, JourneyDefinition, JourneyInstance


async def definitions_of(session: AsyncSession, tenant_id: str) -> Sequence[JourneyDefinition]:
    """Every version of every journey of the tenant, by name then version."""
    return (
        await session.scalars(
            select(JourneyDefinition)
            .where(JourneyDefinition.tenant_id == tenant_id)
            .order_by(JourneyDefinition.name, JourneyDefinition.version)
        )
    ).all()


async def definition(
    session: AsyncSession, tenant_id: str, name: str, version: int | None
) -> JourneyDefinition | None:
    """That version of the journey; without one, the active version, else the latest."""
    q = select(JourneyDefinition).where(
        JourneyDefinition.tenant_id == tenant_id, JourneyDefinition.name == name
    )
    if version is not None:
        q = q.where(JourneyDefinition.version == version)
    else:
        q = q.order_by(JourneyDefinition.active.desc(), JourneyDefinition.version.desc())
    return (await session.scalars(q.limit(1))).first()


async def latest_version(session: AsyncSession, tenant_id: str, name: str) -> int | None:
    latest: int | None = await session.scalar(
        select(func.max(JourneyDefinition.version)).where(
            JourneyDefinition.tenant_id == tenant_id, JourneyDefinition.name == name
        )
    )
    return latest


async def lock_versions(session: AsyncSession, tenant_id: str, name: str) -> None:
    """Serialise version numbering of one journey until the transaction ends: two
    versions stored at once would otherwise both read the same latest number and the
    second insert would fail on the unique (tenant, name, version) index."""
    await session.execute(select(func.pg_advisory_xact_lock(func.hashtext(f"{tenant_id}:{name}"))))


def add_version(
    session: AsyncSession,
    tenant_id: str,
    name: str,
    version: int,
    body: dict[str, Any],
    now: datetime,
) -> None:
    """A new, inactive version (inserted at the transaction's flush)."""
    session.add(
        JourneyDefinition(
            tenant_id=tenant_id,
            name=name,
            version=version,
            body=body,
            active=False,
            created_at=now,
        )
    )


async def deactivate_active(session: AsyncSession, tenant_id: str, name: str) -> None:
    """The journey's active version (if any) no longer takes new customers."""
    await session.execute(
        update(JourneyDefinition)
        .where(
            JourneyDefinition.tenant_id == tenant_id,
            JourneyDefinition.name == name,
            JourneyDefinition.active,
        )
        .values(active=False)
    )


async def activate(session: AsyncSession, row: JourneyDefinition, now: datetime) -> None:
    """``row`` becomes the version new customers enter. The one active before is
    switched off and flushed first: the partial unique index allows one active version
    per journey, and a flush that set the new one first would violate it."""
    await deactivate_active(session, row.tenant_id, row.name)
    await session.flush()
    row.active = True
    row.activated_at = now


async def instances_to_migrate(
    session: AsyncSession, tenant_id: str, name: str, version: int
) -> Sequence[JourneyInstance]:
    """The journey's running and paused instances on another version than ``version``,
    locked (an event handled meanwhile would otherwise step an instance the migration
    is moving), by customer."""
    return (
        await session.scalars(
            select(JourneyInstance)
            .where(
                JourneyInstance.tenant_id == tenant_id,
                JourneyInstance.journey == name,
                JourneyInstance.status.in_(["running", "paused"]),
                JourneyInstance.version != version,
            )
            .order_by(JourneyInstance.customer_id)
            .with_for_update()
        )
    ).all()


async def profile_states(
    session: AsyncSession, tenant_id: str, customer_ids: Iterable[str]
) -> dict[str, dict[str, Any]]:
    """Customer id -> the engine's profile document, for a set of customers: one query."""
    ids = sorted(set(customer_ids))
    if not ids:
        return {}
    rows = await session.execute(
        select(CustomerProfile.customer_id, CustomerProfile.state).where(
            CustomerProfile.tenant_id == tenant_id, CustomerProfile.customer_id.in_(ids)
        )
    )
    return {r.customer_id: r.state for r in rows.all()}
