"""Every SQL statement of the order-book metrics (:mod:`afterglow.ingest.metrics`): one
set-based statement per figure over the tenant's orders placed before ``end``."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import Row, text
from sqlalchemy.ext.asyncio import AsyncSession

_SUMMARY = text(
    """
    WITH book AS (
        SELECT subject, placed_at FROM ingest.orders
        WHERE tenant_id = :tenant AND placed_at IS NOT NULL AND placed_at < :end
    ), per_customer AS (
        SELECT subject,
               min(placed_at) AS first_at,
               count(*) AS orders_to_end,
               count(*) FILTER (WHERE placed_at >= :start) AS orders_in_period
        FROM book GROUP BY subject
    )
    SELECT coalesce(sum(orders_in_period), 0) AS orders,
           count(*) FILTER (WHERE orders_in_period > 0) AS customers,
           count(*) FILTER (WHERE first_at >= :start) AS new_customers,
           count(*) FILTER (WHERE orders_in_period > 0 AND orders_to_end >= 2) AS repeat_customers
    FROM per_customer
    """
)

_REVENUE = text(
    """
    SELECT currency, sum(total_amount - refunded_amount)::bigint AS amount, count(*) AS n
    FROM ingest.orders
    WHERE tenant_id = :tenant AND placed_at >= :start AND placed_at < :end
      AND currency IS NOT NULL AND total_amount IS NOT NULL
    GROUP BY currency ORDER BY n DESC, currency
    """
)

_DAYS = text(
    """
    SELECT (placed_at AT TIME ZONE 'UTC')::date AS day,
           count(*) AS orders, count(DISTINCT subject) AS customers
    FROM ingest.orders
    WHERE tenant_id = :tenant AND placed_at >= :start AND placed_at < :end
    GROUP BY 1 ORDER BY 1
    """
)

# One row per (cohort month, months since): customers active and revenue in the main
# currency. The cohort is fixed by the first order ever, so a customer whose first order
# predates the period belongs to no cohort of it.
_COHORTS = text(
    """
    WITH book AS (
        SELECT subject, placed_at, currency, total_amount - refunded_amount AS net
        FROM ingest.orders
        WHERE tenant_id = :tenant AND placed_at IS NOT NULL AND placed_at < :end
    ), firsts AS (
        SELECT subject, date_trunc('month', min(placed_at) AT TIME ZONE 'UTC') AS cohort
        FROM book GROUP BY subject
    ), cells AS (
        SELECT f.cohort, f.subject, b.currency, b.net,
               (extract(year FROM age(date_trunc('month', b.placed_at AT TIME ZONE 'UTC'),
                                      f.cohort)) * 12
                + extract(month FROM age(date_trunc('month', b.placed_at AT TIME ZONE 'UTC'),
                                         f.cohort)))::int AS k
        FROM firsts f JOIN book b USING (subject)
        WHERE f.cohort >= CAST(:start_month AS timestamp)
          AND f.cohort < CAST(:end_local AS timestamp)
    )
    SELECT cohort::date AS month, k,
           count(DISTINCT subject) AS active,
           coalesce(sum(net) FILTER (WHERE currency = :currency), 0)::bigint AS revenue
    FROM cells WHERE k < :months
    GROUP BY cohort, k ORDER BY cohort, k
    """
)


async def order_summary(
    session: AsyncSession, tenant_id: str, start: datetime, end: datetime
) -> Row[Any]:
    """One row: orders, customers, new_customers, repeat_customers of the period."""
    params = {"tenant": tenant_id, "start": start, "end": end}
    return (await session.execute(_SUMMARY, params)).one()


async def revenue_by_currency(
    session: AsyncSession, tenant_id: str, start: datetime, end: datetime
) -> list[Row[Any]]:
    """(currency, amount, n) of the period's orders, the most used currency first."""
    params = {"tenant": tenant_id, "start": start, "end": end}
    return list((await session.execute(_REVENUE, params)).all())


async def orders_per_day(
    session: AsyncSession, tenant_id: str, start: datetime, end: datetime
) -> list[Row[Any]]:
    """(day, orders, customers) for each UTC day of the period with an order."""
    params = {"tenant": tenant_id, "start": start, "end": end}
    return list((await session.execute(_DAYS, params)).all())


async def cohort_cells(
    session: AsyncSession,
    tenant_id: str,
    start: datetime,
    end: datetime,
    *,
    currency: str | None,
    months: int,
    start_month: datetime,
    end_local: datetime,
) -> list[Row[Any]]:
    """(month, k, active, revenue) per cohort and month since its first order."""
    params = {
        "tenant": tenant_id,
        "start": start,
        "end": end,
        "currency": currency,
        "months": months,
        "start_month": start_month,
        "end_local": end_local,
    }
    return list((await session.execute(_COHORTS, params)).all())
