"""Every SQL statement of customer identity (:mod:`afterglow.ingest.identity`): the
links a batch's orders show, tickets' pinned resolutions, and an erasure's deletes.
One statement per table per batch."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import case, delete, or_, select, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.ingest.models import CustomerLink, Escalation, TicketCustomer


async def upsert_links(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """One multi-row upsert of customer links (``rows`` not empty)."""
    stmt = pg_insert(CustomerLink).values(rows)
    new, old = stmt.excluded, CustomerLink
    # customers.preferred, in SQL: a guest hash never replaces a platform customer id.
    guest_new = new.subject.like("email:%") | new.subject.like("phone:%")
    guest_old = old.subject.like("email:%") | old.subject.like("phone:%")
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=["tenant_id", "kind", "value_hash"],
            set_={
                "subject": case((guest_new & ~guest_old, old.subject), else_=new.subject),
                "email": case((new.email.is_(None), old.email), else_=new.email),
                "seen_at": new.seen_at,
            },
        )
    )


async def pinned_tickets(
    session: AsyncSession, ticket_keys: Sequence[tuple[str, str]]
) -> list[TicketCustomer]:
    """The stored resolutions of these (tenant id, ticket id)s."""
    known = await session.scalars(
        select(TicketCustomer).where(
            tuple_(TicketCustomer.tenant_id, TicketCustomer.ticket_id).in_(ticket_keys)
        )
    )
    return list(known)


async def escalation_subjects(
    session: AsyncSession, esc_keys: Sequence[tuple[str, str]]
) -> dict[tuple[str, str], str]:
    """(tenant id, escalation id) -> the escalated customer, for those that exist."""
    result = await session.execute(
        select(Escalation.tenant_id, Escalation.escalation_id, Escalation.subject).where(
            tuple_(Escalation.tenant_id, Escalation.escalation_id).in_(esc_keys)
        )
    )
    return {(r.tenant_id, r.escalation_id): r.subject for r in result}


async def linked_subjects(
    session: AsyncSession, link_keys: Sequence[tuple[str, str, str]]
) -> dict[tuple[str, str, str], str]:
    """(tenant id, kind, value hash) -> the linked customer, for those linked."""
    result = await session.execute(
        select(
            CustomerLink.tenant_id,
            CustomerLink.kind,
            CustomerLink.value_hash,
            CustomerLink.subject,
        ).where(
            tuple_(CustomerLink.tenant_id, CustomerLink.kind, CustomerLink.value_hash).in_(
                link_keys
            )
        )
    )
    return {(r.tenant_id, r.kind, r.value_hash): r.subject for r in result}


async def pin_tickets(session: AsyncSession, rows: list[dict[str, object]]) -> None:
    """One multi-row insert of new tickets' resolutions; a ticket pinned meanwhile
    keeps its first resolution."""
    await session.execute(pg_insert(TicketCustomer).values(rows).on_conflict_do_nothing())


async def delete_links(
    session: AsyncSession, tenant_id: str, subjects: Sequence[str], email_hashes: Sequence[str]
) -> None:
    """The tenant's links to these customers and of these email hashes (at least one
    of the two not empty)."""
    conditions = []
    if subjects:
        conditions.append(CustomerLink.subject.in_(list(subjects)))
    if email_hashes:
        conditions.append(
            (CustomerLink.kind == "email") & CustomerLink.value_hash.in_(list(email_hashes))
        )
    await session.execute(
        delete(CustomerLink).where(CustomerLink.tenant_id == tenant_id, or_(*conditions))
    )


async def clear_escalation_comments(
    session: AsyncSession, tenant_id: str, subjects: Sequence[str]
) -> None:
    """What these customers wrote in their survey answers, copied for the helpdesk."""
    await session.execute(
        update(Escalation)
        .where(Escalation.tenant_id == tenant_id, Escalation.subject.in_(list(subjects)))
        .values(comment=None)
    )


async def delete_tenant_identities(session: AsyncSession, tenant_id: str) -> None:
    """A tenant's erasure: its links, its tickets' resolutions, its escalations'
    copied comments. Three statements, in this order."""
    await session.execute(delete(CustomerLink).where(CustomerLink.tenant_id == tenant_id))
    await session.execute(delete(TicketCustomer).where(TicketCustomer.tenant_id == tenant_id))
    await session.execute(
        update(Escalation).where(Escalation.tenant_id == tenant_id).values(comment=None)
    )


async def subjects_of_email_hash(
    session: AsyncSession, tenant_id: str, email_hash: str
) -> list[str]:
    """The customers the tenant has linked to this email hash, sorted."""
    rows = await session.scalars(
        select(CustomerLink.subject)
        .where(
            CustomerLink.tenant_id == tenant_id,
            CustomerLink.kind == "email",
            CustomerLink.value_hash == email_hash,
        )
        .order_by(CustomerLink.subject)
    )
    return list(rows)
