"""Every SQL statement of intake (:mod:`afterglow.ingest.intake`) and of the webhook
hot path around it (the group commit, :mod:`afterglow.ingest.group_commit`; the
processing worker, :mod:`afterglow.ingest.processing`): the raw deliveries, the order
book (orders, their facts, customers' order counters), and requeueing sent outbox rows.
Each function is one statement (one round trip) in the caller's transaction, so the
hot path makes the same round trips as when the statements were inline."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Row, Table, delete, func, or_, select, text, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncSession

from afterglow.ingest.models import CustomerOrderCount, Delivery, Order, OrderFact, Tenant

# --- raw deliveries -------------------------------------------------------------------------


async def insert_delivery(session: AsyncSession, values: dict[str, Any]) -> str | None:
    """The delivery's id, or None when a delivery with that id was stored before (a
    concurrent twin blocks on the unique index until the first commits)."""
    stmt = pg_insert(Delivery).values(**values).on_conflict_do_nothing().returning(Delivery.id)
    return (await session.execute(stmt)).scalar()


# The webhook hot path's group commit (afterglow.ingest.group_commit): one array per
# column (group_commit._COLUMNS, in its order), unnested into one multi-row insert.
_INSERT = text(
    """
    INSERT INTO ingest.deliveries (id, tenant_id, platform, topic, dedupe_key, status,
        received_at, headers, body, event_ids, subjects, replays, attempts,
        next_attempt_at, last_error, traceparent)
    SELECT id, tenant_id, platform, topic, dedupe_key, status, received_at,
        CAST(headers AS jsonb), body, CAST(ARRAY[] AS text[]), CAST(ARRAY[] AS text[]),
        0, 0, next_attempt_at, last_error, traceparent
    FROM unnest(
        CAST(:id AS text[]), CAST(:tenant_id AS text[]), CAST(:platform AS text[]),
        CAST(:topic AS text[]), CAST(:dedupe_key AS text[]), CAST(:status AS text[]),
        CAST(:received_at AS timestamptz[]), CAST(:headers AS text[]),
        CAST(:body AS bytea[]), CAST(:next_attempt_at AS timestamptz[]),
        CAST(:last_error AS text[]), CAST(:traceparent AS text[])
    ) AS t(id, tenant_id, platform, topic, dedupe_key, status, received_at, headers,
        body, next_attempt_at, last_error, traceparent)
    ON CONFLICT DO NOTHING
    RETURNING id
    """
)


async def insert_raw_deliveries(conn: AsyncConnection, params: dict[str, list[Any]]) -> set[str]:
    """Insert a batch of deliveries in one statement; the ids of those stored now (a
    delivery stored before is left alone and its id not returned)."""
    result = await conn.execute(_INSERT, params)
    return set(result.scalars())


async def set_delivery_outcome(
    session: AsyncSession, did: str, status: str, ids: list[str], subjects: Sequence[str]
) -> None:
    await session.execute(
        update(Delivery)
        .where(Delivery.id == did)
        .values(status=status, event_ids=ids, subjects=list(subjects))
    )


async def redact_customer_deliveries(
    session: AsyncSession, tenant_id: str, emails: list[str], subjects: list[str], keep: str
) -> None:
    """Blank body and headers of the tenant's deliveries (but ``keep``) that spoke about
    these subjects or carry one of these emails anywhere (looked for in the lower-cased
    body): a scan of one tenant's rows."""
    about = [Delivery.subjects.overlap(subjects)] if subjects else []
    carries = [
        func.strpos(func.lower(func.convert_from(Delivery.body, "UTF8")), email) > 0
        for email in emails
    ]
    await session.execute(
        update(Delivery)
        .where(Delivery.tenant_id == tenant_id, Delivery.id != keep, or_(*about, *carries))
        .values(body=b"{}", headers={"x-afterglow-redacted": "customers/redact"})
    )


async def redact_tenant_deliveries(session: AsyncSession, tenant_id: str, keep: str) -> None:
    """Blank body and headers of every delivery of the tenant but ``keep``."""
    await session.execute(
        update(Delivery)
        .where(Delivery.tenant_id == tenant_id, Delivery.id != keep)
        .values(body=b"{}", headers={"x-afterglow-redacted": "shop/redact"})
    )


# --- applying stored deliveries (the processing worker, :mod:`afterglow.ingest.processing`)


# The applier's lock and its claim in one round trip: the lock is tried once (a
# volatile function in a CTE is evaluated once), and the claim runs only if it was
# taken. One row with ``applier`` false and no delivery: another process applies.
_CLAIM_AS_APPLIER = text(
    """
    WITH lock AS (SELECT pg_try_advisory_xact_lock(:key) AS applier)
    SELECT lock.applier, d.id, d.tenant_id, d.platform, d.topic, d.dedupe_key, d.body,
        d.received_at, d.traceparent
    FROM lock LEFT JOIN LATERAL (
        SELECT id, tenant_id, platform, topic, dedupe_key, body, received_at, traceparent
        FROM ingest.deliveries
        WHERE lock.applier AND status = :status
        ORDER BY received_at, id
        LIMIT :batch
        FOR UPDATE SKIP LOCKED
    ) AS d ON true
    """
)


async def claim_as_applier(
    session: AsyncSession, key: int, status: str, batch: int
) -> list[Row[Any]] | None:
    """(id, tenant_id, platform, topic, dedupe_key, body, received_at, traceparent) of
    up to ``batch`` deliveries in ``status``, oldest first, locked (rows another
    transaction holds are skipped), once the transaction took the advisory lock
    ``key`` (released at its end); None when another transaction holds it."""
    rows = (
        await session.execute(_CLAIM_AS_APPLIER, {"key": key, "status": status, "batch": batch})
    ).all()
    if not rows[0].applier:
        return None
    return [r for r in rows if r.id is not None]


async def set_delivery_status(
    session: AsyncSession, did: str, status: str, last_error: str
) -> None:
    await session.execute(
        update(Delivery).where(Delivery.id == did).values(status=status, last_error=last_error)
    )


async def replace_delivery_body(session: AsyncSession, did: str, body: bytes) -> None:
    await session.execute(update(Delivery).where(Delivery.id == did).values(body=body))


async def move_delivery_status(
    session: AsyncSession, did: str, *, from_status: str, to_status: str, last_error: str
) -> None:
    """Only while the delivery is still in ``from_status``."""
    await session.execute(
        update(Delivery)
        .where(Delivery.id == did, Delivery.status == from_status)
        .values(status=to_status, last_error=last_error)
    )


# --- the order book -----------------------------------------------------------------------


async def upsert_order(session: AsyncSession, values: dict[str, Any]) -> None:
    """Record an order; one already known learns ``placed_at`` if it had none (first
    seen through a later event), and is left alone when ``placed_at`` is None."""
    stmt = pg_insert(Order).values(**values)
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=[Order.tenant_id, Order.order_id],
            set_={"placed_at": func.coalesce(Order.placed_at, stmt.excluded.placed_at)},
        )
        if values["placed_at"] is not None
        else stmt.on_conflict_do_nothing()
    )


async def known_order(
    session: AsyncSession, tenant_id: str, order_id: str
) -> Row[Any, Any, Any, Any, Any, Any] | None:
    """(subject, total_amount, currency, presentment_amount, presentment_currency,
    refunded_amount) of the order, None when the book does not have it."""
    return (
        await session.execute(
            select(
                Order.subject,
                Order.total_amount,
                Order.currency,
                Order.presentment_amount,
                Order.presentment_currency,
                Order.refunded_amount,
            ).where(Order.tenant_id == tenant_id, Order.order_id == order_id)
        )
    ).first()


async def customer_order_seq(session: AsyncSession, tenant_id: str, order_id: str) -> Any:
    """The order's number among its customer's orders as kept on it (None if not yet)."""
    return (
        await session.execute(
            select(Order.customer_order_seq).where(
                Order.tenant_id == tenant_id, Order.order_id == order_id
            )
        )
    ).scalar()


async def bump_customer_order_count(session: AsyncSession, tenant_id: str, subject: str) -> Any:
    """One upsert on the customer's counter row (which locks it till the transaction
    ends); the count after this order."""
    bump = pg_insert(CustomerOrderCount).values(tenant_id=tenant_id, subject=subject, orders=1)
    return (
        await session.execute(
            bump.on_conflict_do_update(
                index_elements=["tenant_id", "subject"],
                set_={"orders": CustomerOrderCount.orders + 1},
            ).returning(CustomerOrderCount.orders)
        )
    ).scalar_one()


async def set_customer_order_seq(
    session: AsyncSession, tenant_id: str, order_id: str, seq: Any
) -> None:
    await session.execute(
        update(Order)
        .where(Order.tenant_id == tenant_id, Order.order_id == order_id)
        .values(customer_order_seq=seq)
    )


async def add_to_refunded(
    session: AsyncSession, tenant_id: str, order_id: str, currency: str, amount: int
) -> None:
    """Add ``amount`` to the order's refunded sum if the order is in ``currency``."""
    await session.execute(
        update(Order)
        .where(
            Order.tenant_id == tenant_id,
            Order.order_id == order_id,
            Order.currency == currency,
        )
        .values(refunded_amount=Order.refunded_amount + amount)
    )


async def tenant_late_order_days(session: AsyncSession, tenant_id: str) -> Any:
    """The tenant's setting (None when not set, or no such tenant)."""
    return await session.scalar(select(Tenant.late_order_days).where(Tenant.tenant_id == tenant_id))


async def order_id_of_platform_id(
    session: AsyncSession, tenant_id: str, platform_order_id: str
) -> str | None:
    return (
        await session.execute(
            select(Order.order_id)
            .where(Order.tenant_id == tenant_id, Order.platform_order_id == platform_order_id)
            .limit(1)
        )
    ).scalar()


async def insert_order_fact(
    session: AsyncSession,
    *,
    tenant_id: str,
    fact_key: str,
    event_id: str,
    delivery_id: str,
    created_at: datetime,
) -> bool:
    """False when the fact was stated before (by an earlier delivery or reconciliation)."""
    inserted = (
        await session.execute(
            pg_insert(OrderFact)
            .values(
                tenant_id=tenant_id,
                fact_key=fact_key,
                event_id=event_id,
                delivery_id=delivery_id,
                created_at=created_at,
            )
            .on_conflict_do_nothing()
            .returning(OrderFact.fact_key)
        )
    ).scalar()
    return inserted is not None


async def delete_tenant_order_book(session: AsyncSession, tenant_id: str) -> None:
    """The tenant's orders and customers' order counters (two statements, in order)."""
    await session.execute(delete(Order).where(Order.tenant_id == tenant_id))
    await session.execute(
        delete(CustomerOrderCount).where(CustomerOrderCount.tenant_id == tenant_id)
    )


# --- the outbox -------------------------------------------------------------------------------


async def requeue_sent_events(session: AsyncSession, outbox: Table, ids: list[str]) -> None:
    """Mark these outbox rows, those already sent, unsent again."""
    await session.execute(
        update(outbox)
        .where(outbox.c.event_id.in_(ids), outbox.c.sent_at.is_not(None))
        .values(sent_at=None)
    )
