"""One customer across platform and helpdesk: one statement per table per batch (the
statements are :mod:`afterglow.ingest.identity_store`).

Before a batch of normalized deliveries is applied, :func:`link_and_resolve` records
the links its orders show (one multi-row upsert) and resolves its ticket events to
customers (one read per table, one multi-row insert of the new tickets' resolutions),
rewriting those events' subjects. The rules are :mod:`afterglow.ingest.customers`.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.ingest import customers, domain, identity_store

# (tenant id, normalized delivery): the unit a batch is made of.
Item = tuple[str, domain.Normalized]


async def link_and_resolve(session: AsyncSession, items: Sequence[Item], now: datetime) -> None:
    """Record the batch's links, then resolve its tickets (in place: the emits'
    subjects become the resolved customer). Items are in the order they apply."""
    await record_links(session, items, now)
    await resolve_tickets(session, items, now)


async def record_links(session: AsyncSession, items: Sequence[Item], now: datetime) -> None:
    rows = []
    for tenant_id in sorted({t for t, _ in items}):
        emits = [(e.data, e.subject) for t, n in items if t == tenant_id for e in n.emits]
        for link in customers.links_from(emits, domain.email_hash, domain.phone_hash):
            rows.append(
                {
                    "tenant_id": tenant_id,
                    "kind": link.kind,
                    "value_hash": link.value_hash,
                    "subject": link.subject,
                    "email": link.email,
                    "seen_at": now,
                }
            )
    if not rows:
        return
    await identity_store.upsert_links(session, rows)


async def resolve_tickets(session: AsyncSession, items: Sequence[Item], now: datetime) -> None:
    asking = [(t, n, n.requester) for t, n in items if n.requester is not None and n.emits]
    if not asking:
        return
    ticket_keys = sorted({(t, r.ticket_id) for t, _, r in asking})
    known = await identity_store.pinned_tickets(session, ticket_keys)
    pinned = {
        (row.tenant_id, row.ticket_id): customers.Resolution(
            row.subject, row.resolved_by, row.reason
        )
        for row in known
    }
    esc_keys = sorted({(t, r.escalation_id) for t, _, r in asking if r.escalation_id})
    escalations: dict[tuple[str, str], str] = {}
    if esc_keys:
        escalations = await identity_store.escalation_subjects(session, esc_keys)
    link_keys = sorted(
        {(t, "email", r.email_hash) for t, _, r in asking if r.email_hash}
        | {(t, "phone", r.phone_hash) for t, _, r in asking if r.phone_hash}
    )
    links: dict[tuple[str, str, str], str] = {}
    if link_keys:
        links = await identity_store.linked_subjects(session, link_keys)
    new_rows: dict[tuple[str, str], dict[str, object]] = {}
    for tenant_id, normalized, r in asking:
        key = (tenant_id, r.ticket_id)
        resolution = customers.resolve(
            r,
            pinned=pinned.get(key),
            escalations={e: s for (t, e), s in escalations.items() if t == tenant_id},
            links={(k, h): s for (t, k, h), s in links.items() if t == tenant_id},
        )
        if key not in pinned:
            # Pinned for the rest of the batch too: a ticket's created and solved events
            # in one batch go to one customer.
            pinned[key] = resolution
            new_rows[key] = {
                "tenant_id": tenant_id,
                "ticket_id": r.ticket_id,
                "subject": resolution.subject,
                "resolved_by": resolution.resolved_by,
                "reason": resolution.reason,
                "first_seen_at": now,
            }
        normalized.emits = [domain.Emit(e.data, resolution.subject) for e in normalized.emits]
    if new_rows:
        await identity_store.pin_tickets(session, [new_rows[k] for k in sorted(new_rows)])


async def forget(
    session: AsyncSession, tenant_id: str, subjects: Sequence[str], emails: Sequence[str]
) -> None:
    """An erasure: the links to these customers and those of these emails go."""
    hashes = [h for h in (domain.email_hash(e) for e in emails) if h]
    if not subjects and not hashes:
        return
    await identity_store.delete_links(session, tenant_id, subjects, hashes)
    if subjects:
        await identity_store.clear_escalation_comments(session, tenant_id, subjects)


async def forget_tenant(session: AsyncSession, tenant_id: str) -> None:
    await identity_store.delete_tenant_identities(session, tenant_id)
