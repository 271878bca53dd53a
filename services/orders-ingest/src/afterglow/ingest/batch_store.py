"""Every SQL statement of a batch of stored deliveries applied in sets
(:mod:`afterglow.ingest.batch`): one statement per table for the whole batch.

Keys and rows travel as one array per column and ``unnest()`` turns them into rows, so
each statement has one text whatever the batch size: compiled and prepared once (a
``VALUES`` list or an ``IN`` list of N is a new statement for every N). Each function
is one round trip in the caller's transaction. Keys come in sorted, so the rows are
locked in one order (the lock order is :mod:`afterglow.ingest.batch`'s docstring).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

from sqlalchemy import Row, text
from sqlalchemy.ext.asyncio import AsyncSession

_LOCK_ORDERS = text(
    """
    SELECT o.tenant_id, o.order_id, o.platform_order_id, o.subject, o.total_amount,
        o.currency, o.presentment_amount, o.presentment_currency, o.customer_order_seq,
        o.refunded_amount, o.placed_at
    FROM ingest.orders AS o
    JOIN unnest(CAST(:tenant_id AS text[]), CAST(:order_id AS text[])) AS k(tenant_id, order_id)
        ON o.tenant_id = k.tenant_id AND o.order_id = k.order_id
    ORDER BY o.tenant_id, o.order_id
    FOR UPDATE OF o
    """
)


async def lock_orders(session: AsyncSession, keys: Sequence[tuple[str, str]]) -> list[Row[Any]]:
    """The order book's rows of these (tenant id, order id)s that exist, locked in key
    order until the transaction ends (a REST call or replay about the same order waits
    for the batch, and the batch's view of the order stays true until it writes)."""
    if not keys:
        return []
    result = await session.execute(
        _LOCK_ORDERS, {"tenant_id": [k[0] for k in keys], "order_id": [k[1] for k in keys]}
    )
    return list(result.all())


_LATE_ORDER_DAYS = text(
    "SELECT tenant_id, late_order_days FROM ingest.tenants "
    "WHERE tenant_id = ANY(CAST(:tenant_id AS text[]))"
)


async def late_order_days(session: AsyncSession, tenants: Sequence[str]) -> dict[str, int]:
    """The tenants' ``late_order_days`` (a tenant without the row is left out)."""
    if not tenants:
        return {}
    result = await session.execute(_LATE_ORDER_DAYS, {"tenant_id": list(tenants)})
    return {r.tenant_id: int(r.late_order_days) for r in result if r.late_order_days is not None}


_CLAIM_FACTS = text(
    """
    INSERT INTO ingest.order_facts (tenant_id, fact_key, event_id, delivery_id, created_at)
    SELECT * FROM unnest(
        CAST(:tenant_id AS text[]), CAST(:fact_key AS text[]), CAST(:event_id AS text[]),
        CAST(:delivery_id AS text[]), CAST(:created_at AS timestamptz[])
    )
    ON CONFLICT DO NOTHING
    RETURNING tenant_id, fact_key
    """
)


async def claim_facts(
    session: AsyncSession, rows: Sequence[dict[str, Any]]
) -> set[tuple[str, str]]:
    """Insert the order facts not stated before; the (tenant id, fact key)s inserted
    now (a fact stated by an earlier delivery, reconciliation or REST is not)."""
    if not rows:
        return set()
    result = await session.execute(_CLAIM_FACTS, _columns(rows, _FACT_COLUMNS))
    return {(r.tenant_id, r.fact_key) for r in result}


_FACT_COLUMNS = ("tenant_id", "fact_key", "event_id", "delivery_id", "created_at")

_BUMP_COUNTS = text(
    """
    INSERT INTO ingest.customer_order_counts AS c (tenant_id, subject, orders)
    SELECT * FROM unnest(
        CAST(:tenant_id AS text[]), CAST(:subject AS text[]), CAST(:orders AS integer[])
    )
    ON CONFLICT (tenant_id, subject) DO UPDATE SET orders = c.orders + excluded.orders
    RETURNING tenant_id, subject, orders
    """
)


async def bump_order_counts(
    session: AsyncSession, rows: Sequence[tuple[str, str, int]]
) -> dict[tuple[str, str], int]:
    """Add ``n`` to each (tenant id, subject, n)'s order counter (creating it); the
    counts after. The upsert locks each counter row till the transaction ends, so a
    concurrent order of the same customer counts after this batch's."""
    if not rows:
        return {}
    result = await session.execute(
        _BUMP_COUNTS,
        {
            "tenant_id": [r[0] for r in rows],
            "subject": [r[1] for r in rows],
            "orders": [r[2] for r in rows],
        },
    )
    return {(r.tenant_id, r.subject): int(r.orders) for r in result}


ORDER_COLUMNS = (
    "tenant_id",
    "order_id",
    "platform_order_id",
    "subject",
    "total_amount",
    "currency",
    "presentment_amount",
    "presentment_currency",
    "customer_order_seq",
    "refunded_amount",
    "placed_at",
)

_WRITE_ORDERS = text(
    """
    INSERT INTO ingest.orders AS o (tenant_id, order_id, platform_order_id, subject,
        total_amount, currency, presentment_amount, presentment_currency,
        customer_order_seq, refunded_amount, placed_at)
    SELECT * FROM unnest(
        CAST(:tenant_id AS text[]), CAST(:order_id AS text[]),
        CAST(:platform_order_id AS text[]), CAST(:subject AS text[]),
        CAST(:total_amount AS bigint[]), CAST(:currency AS text[]),
        CAST(:presentment_amount AS bigint[]), CAST(:presentment_currency AS text[]),
        CAST(:customer_order_seq AS integer[]), CAST(:refunded_amount AS bigint[]),
        CAST(:placed_at AS timestamptz[])
    )
    ON CONFLICT (tenant_id, order_id) DO UPDATE SET
        customer_order_seq = excluded.customer_order_seq,
        refunded_amount = excluded.refunded_amount,
        placed_at = excluded.placed_at
    RETURNING o.tenant_id, o.order_id, (o.xmax = 0) AS inserted
    """
)


async def write_orders(
    session: AsyncSession, rows: Sequence[dict[str, Any]]
) -> set[tuple[str, str]]:
    """Insert the new orders and write the changed ones (their rows locked by
    :func:`lock_orders`) in one statement; the (tenant id, order id)s inserted."""
    if not rows:
        return set()
    result = await session.execute(_WRITE_ORDERS, _columns(rows, ORDER_COLUMNS))
    return {(r.tenant_id, r.order_id) for r in result if r.inserted}


_FINISH = text(
    """
    UPDATE ingest.deliveries AS d SET
        status = v.status,
        event_ids = CASE WHEN v.event_ids IS NULL THEN d.event_ids
            ELSE ARRAY(SELECT jsonb_array_elements_text(CAST(v.event_ids AS jsonb))) END,
        subjects = CASE WHEN v.subjects IS NULL THEN d.subjects
            ELSE ARRAY(SELECT jsonb_array_elements_text(CAST(v.subjects AS jsonb))) END,
        last_error = COALESCE(v.last_error, d.last_error)
    FROM unnest(
        CAST(:id AS text[]), CAST(:status AS text[]), CAST(:event_ids AS text[]),
        CAST(:subjects AS text[]), CAST(:last_error AS text[])
    ) AS v(id, status, event_ids, subjects, last_error)
    WHERE d.id = v.id
    """
)


async def finish_deliveries(
    session: AsyncSession,
    outcomes: Sequence[tuple[str, str, list[str] | None, list[str] | None, str | None]],
) -> None:
    """Each (delivery id, status, event ids, subjects, last error): one statement. None
    leaves that column as it was (a quarantined delivery keeps its event ids, a
    processed one its last error), as the one-by-one statements did."""
    if not outcomes:
        return
    await session.execute(
        _FINISH,
        {
            "id": [o[0] for o in outcomes],
            "status": [o[1] for o in outcomes],
            # Arrays of arrays must be rectangular in PostgreSQL: each row's list
            # travels as JSON text and is expanded there.
            "event_ids": [None if o[2] is None else json.dumps(o[2]) for o in outcomes],
            "subjects": [None if o[3] is None else json.dumps(o[3]) for o in outcomes],
            "last_error": [o[4] for o in outcomes],
        },
    )


def _columns(rows: Sequence[dict[str, Any]], columns: Sequence[str]) -> dict[str, list[Any]]:
    return {c: [r[c] for r in rows] for c in columns}
