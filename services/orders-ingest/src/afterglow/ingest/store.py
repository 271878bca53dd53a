"""SQL the routes need, out of the route modules: the internal REST API's
Idempotency-Key store (a key is claimed with the request's digest in the request's
transaction, and its answer recorded there too, so a retried request gets the first
answer and a reused key with another body a 409), the operators' reads of stored
deliveries, a tenant's API keys for its own keys admin, the Zendesk requesters'
prefetch, and the BigCommerce worker's queue of deliveries waiting for their order's
fetch (claimed with SKIP LOCKED, leased by attempts and lease_until)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Row, Table, and_, or_, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.ingest.models import Delivery, HelpdeskConnection, IdempotencyKey


async def claim_idempotency_key(
    session: AsyncSession, tenant: str, key: str, route_name: str, digest: str, now: datetime
) -> bool:
    """True when this request claimed the key; False when the key was claimed before."""
    # A concurrent request with the same key waits on the primary key until the first
    # commits, then finds its answer.
    claimed = await session.execute(
        pg_insert(IdempotencyKey)
        .values(
            tenant_id=tenant,
            key=key,
            route=route_name,
            body_hash=digest,
            status_code=0,
            response={},
            created_at=now,
        )
        .on_conflict_do_nothing()
        .returning(IdempotencyKey.key)
    )
    return claimed.scalar() is not None


async def claimed_idempotency_key(session: AsyncSession, tenant: str, key: str) -> IdempotencyKey:
    """The earlier claim of a key (its route, digest and recorded answer)."""
    prior = await session.get(IdempotencyKey, (tenant, key))
    assert prior is not None
    return prior


async def record_idempotent_answer(
    session: AsyncSession, tenant: str, key: str, status_code: int, response: dict[str, Any]
) -> None:
    await session.execute(
        update(IdempotencyKey)
        .where(IdempotencyKey.tenant_id == tenant, IdempotencyKey.key == key)
        .values(status_code=status_code, response=response)
    )


# --- stored deliveries, for operators (api.operators) ---------------------------------


async def page_of_deliveries(
    session: AsyncSession,
    tenant_id: str,
    *,
    status: str | None,
    topic: str | None,
    platform: str | None,
    received_from: datetime | None,
    received_before: datetime | None,
    after: tuple[datetime, str] | None,
    limit: int,
) -> list[Delivery]:
    """Up to ``limit`` of the tenant's deliveries matching the filters, newest first
    (receiving time, then id), those after ``after`` (a page's last (received_at, id))."""
    q = select(Delivery).where(Delivery.tenant_id == tenant_id)
    if status:
        q = q.where(Delivery.status == status)
    if topic:
        q = q.where(Delivery.topic == topic)
    if platform:
        q = q.where(Delivery.platform == platform)
    if received_from:
        q = q.where(Delivery.received_at >= received_from)
    if received_before:
        q = q.where(Delivery.received_at < received_before)
    if after:
        at, did = after
        q = q.where(
            or_(Delivery.received_at < at, and_(Delivery.received_at == at, Delivery.id < did))
        )
    rows = await session.execute(
        q.order_by(Delivery.received_at.desc(), Delivery.id.desc()).limit(limit)
    )
    return list(rows.scalars())


async def delivery_of_tenant(
    session: AsyncSession, tenant_id: str, delivery_id: str, *, lock: bool = False
) -> Delivery | None:
    """One of the tenant's deliveries; ``lock``: its row locked until the transaction
    ends (a replay, so two replays of one delivery do not emit and count twice)."""
    q = select(Delivery).where(Delivery.tenant_id == tenant_id, Delivery.id == delivery_id)
    if lock:
        q = q.with_for_update()
    return (await session.execute(q)).scalar()


# --- the tenant's API keys, for its own keys admin (api.tenant_keys) --------------------


async def api_keys_of_tenant(session: AsyncSession, table: Table, tenant_id: str) -> list[Row[Any]]:
    """Every key of the tenant (the hash table's rows), newest first, revoked ones too."""
    rows = await session.execute(
        select(table)
        .where(table.c.tenant_id == tenant_id)
        .order_by(table.c.issued_at.desc(), table.c.key_id)
    )
    return list(rows)


async def api_key_scopes(
    session: AsyncSession, table: Table, tenant_id: str, key_id: str
) -> Row[Any, Any] | None:
    """A key's ``scopes`` and ``revoked_at``; None when the tenant has no such key."""
    return (
        await session.execute(
            select(table.c.scopes, table.c.revoked_at).where(
                table.c.key_id == key_id, table.c.tenant_id == tenant_id
            )
        )
    ).first()


# --- Zendesk requesters' prefetch (requesters) --------------------------------------------


async def zendesk_bodies_of_next_round(
    session: AsyncSession, *, status: str, batch: int
) -> Sequence[Row[Any, Any]]:
    """(tenant id, body) of the Zendesk deliveries among the next ``batch`` in
    ``status`` that a processing round will claim (the same order and limit), of which
    only the Zendesk ones: a backlog of shop orders is not scanned for the few tickets."""
    window = (
        select(Delivery.tenant_id, Delivery.platform, Delivery.body)
        .where(Delivery.status == status)
        .order_by(Delivery.received_at, Delivery.id)
        .limit(batch)
        .subquery()
    )
    return (
        await session.execute(
            select(window.c.tenant_id, window.c.body).where(window.c.platform == "zendesk")
        )
    ).all()


async def zendesk_connections(
    session: AsyncSession, tenants: Sequence[str]
) -> Sequence[HelpdeskConnection]:
    """These tenants' helpdesk connections that are Zendesk."""
    return (
        await session.scalars(
            select(HelpdeskConnection).where(
                HelpdeskConnection.tenant_id.in_(tenants),
                HelpdeskConnection.kind == "zendesk",
            )
        )
    ).all()


# --- deliveries waiting for a fetch of the order (bigcommerce) ----------------------------


async def lock_due_deliveries(
    session: AsyncSession, *, status: str, now: datetime, batch: int
) -> Sequence[Row[Any, Any, Any, Any, Any]]:
    """(id, tenant_id, body, attempts, traceparent) of up to ``batch`` deliveries in
    ``status`` due by ``now``, earliest first, locked; rows another transaction holds
    are skipped, not waited for."""
    return (
        await session.execute(
            select(
                Delivery.id,
                Delivery.tenant_id,
                Delivery.body,
                Delivery.attempts,
                Delivery.traceparent,
            )
            .where(Delivery.status == status, Delivery.next_attempt_at <= now)
            .order_by(Delivery.next_attempt_at)
            .limit(batch)
            .with_for_update(skip_locked=True)
        )
    ).all()


async def lease_deliveries(session: AsyncSession, ids: list[str], lease_until: datetime) -> None:
    """Count an attempt of each delivery and hide it until ``lease_until``: one statement."""
    await session.execute(
        update(Delivery)
        .where(Delivery.id.in_(ids))
        .values(attempts=Delivery.attempts + 1, next_attempt_at=lease_until)
        .execution_options(synchronize_session=False)
    )


async def delivery_if_leased(
    session: AsyncSession, *, delivery_id: str, status: str, attempts: int, lease_until: datetime
) -> Delivery | None:
    """The delivery, locked, if it is still in ``status`` under this lease (attempts,
    lease_until): not replayed, not claimed again by another worker after it ran out."""
    return (
        await session.execute(
            select(Delivery)
            .where(
                Delivery.id == delivery_id,
                Delivery.status == status,
                Delivery.attempts == attempts,
                Delivery.next_attempt_at == lease_until,
            )
            .with_for_update()
        )
    ).scalar()
