"""Every SQL statement of helpdesk escalations (:mod:`afterglow.ingest.escalations`):
recording requests, the tenant's helpdesk connection, and the worker's claim and
outcome. One statement per table per batch."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import select, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.ingest.models import CustomerLink, Escalation, HelpdeskConnection


async def insert_escalations(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """One multi-row insert; an escalation already recorded (a redelivery) is ignored."""
    await session.execute(pg_insert(Escalation).values(rows).on_conflict_do_nothing())


async def upsert_helpdesk_connection(
    session: AsyncSession, tenant_id: str, values: dict[str, Any]
) -> None:
    stmt = pg_insert(HelpdeskConnection).values(tenant_id=tenant_id, **values)
    await session.execute(stmt.on_conflict_do_update(index_elements=["tenant_id"], set_=values))


async def latest_escalations(
    session: AsyncSession, tenant_id: str, limit: int
) -> Sequence[Escalation]:
    """The tenant's ``limit`` most recently requested escalations, newest first."""
    rows = await session.scalars(
        select(Escalation)
        .where(Escalation.tenant_id == tenant_id)
        .order_by(Escalation.requested_at.desc())
        .limit(limit)
    )
    return rows.all()


async def lock_due_escalations(
    session: AsyncSession, *, status: str, now: datetime, batch: int
) -> Sequence[Escalation]:
    """Up to ``batch`` escalations in ``status`` due by ``now``, earliest first, locked;
    rows another worker holds are skipped, not waited for."""
    return (
        await session.scalars(
            select(Escalation)
            .where(Escalation.status == status, Escalation.next_attempt_at <= now)
            .order_by(Escalation.next_attempt_at)
            .limit(batch)
            .with_for_update(skip_locked=True)
        )
    ).all()


async def helpdesk_connections(
    session: AsyncSession, tenants: Sequence[str]
) -> Sequence[HelpdeskConnection]:
    return (
        await session.scalars(
            select(HelpdeskConnection).where(HelpdeskConnection.tenant_id.in_(tenants))
        )
    ).all()


async def emails_of_subjects(
    session: AsyncSession, tenants: Sequence[str], subjects: Sequence[str]
) -> dict[tuple[str, str], str]:
    """(tenant id, customer) -> the customer's email, the latest seen of their links."""
    emails: dict[tuple[str, str], str] = {}
    for link in await session.scalars(
        select(CustomerLink)
        .where(
            CustomerLink.tenant_id.in_(tenants),
            CustomerLink.subject.in_(subjects),
            CustomerLink.kind == "email",
            CustomerLink.email.is_not(None),
        )
        .order_by(CustomerLink.seen_at)
    ):
        assert link.email is not None
        emails[(link.tenant_id, link.subject)] = link.email  # the latest seen wins
    return emails


async def lease_escalations(
    session: AsyncSession, keys: list[tuple[str, str]], lease_until: datetime
) -> None:
    """Count an attempt of each (tenant id, escalation id) and hide it until
    ``lease_until``: one statement for the batch."""
    await session.execute(
        update(Escalation)
        .where(tuple_(Escalation.tenant_id, Escalation.escalation_id).in_(keys))
        .values(attempts=Escalation.attempts + 1, next_attempt_at=lease_until)
        .execution_options(synchronize_session=False)
    )


async def record_outcomes(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """Every outcome of a round in one statement (a bulk update by primary key)."""
    await session.execute(update(Escalation), rows)
