"""Order-book metrics over a period: orders, customers, repeat purchase rate, retention
cohorts and revenue per customer by cohort (the console's dashboard reads them).

Definitions (written down because every tool defines them a little differently):

- a period is whole UTC days ``from`` .. ``to``, both included;
- orders: orders placed in the period; revenue: their totals less what was refunded,
  per currency (money is never added across currencies);
- customers: distinct customers with an order in the period; new customers: those
  whose first order ever falls in the period;
- repeat purchase rate: of the period's customers, the share with two or more orders
  placed up to the period's end (Shopify's "returning customer rate" counts the same);
- cohorts: customers grouped by the month of their first order, when that month starts
  in the period; cell ``k`` counts those of the cohort who ordered in the k-th month
  after it (0 = the first month, always the whole cohort) up to the period's end;
- revenue per customer at 3, 6 and 12 months: what the cohort spent in its first 3, 6
  or 12 months, divided by its size, in the period's main currency (the one most of
  its orders were placed in); None while the cohort is younger than that.

Orders stored before ingest kept ``placed_at`` are left out (see migration 0009).
Each figure is one set-based statement over the tenant's orders (in
:mod:`afterglow.ingest.metrics_store`); none loops per row.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, date, datetime, time, timedelta
from typing import Annotated, Any

from fastapi import Depends, Query
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.ingest import metrics_store
from afterglow.kit import openapi
from afterglow.kit.auth import Principal, require_scope
from afterglow.kit.db import Session
from afterglow.kit.errors import Unprocessable
from afterglow.kit.routing import service_router

router = service_router(prefix="/v1/metrics", tags=["orders and support events"])

MAX_PERIOD_DAYS = 731
COHORT_MONTHS = 12  # months since the first order shown per cohort (0..11)
CLV_MONTHS = (3, 6, 12)


class Amount(BaseModel):
    currency: str
    amount: int


class DayCount(BaseModel):
    day: date
    orders: int
    customers: int


class Cohort(BaseModel):
    month: date
    customers: int
    # active[k]: customers of the cohort who ordered in month k after the first
    active: list[int]
    # revenue per customer (minor units) within 3, 6, 12 months; None while too young
    revenue_per_customer: dict[str, int | None]


class OrderMetrics(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "from": "2026-01-01",
                    "to": "2026-03-31",
                    "orders": 5,
                    "customers": 3,
                    "new_customers": 3,
                    "repeat_customers": 1,
                    "repeat_purchase_rate": 0.3333,
                    "revenue": [{"currency": "USD", "amount": 50000}],
                    "currency": "USD",
                    "days": [{"day": "2026-01-05", "orders": 1, "customers": 1}],
                    "cohorts": [
                        {
                            "month": "2026-01-01",
                            "customers": 2,
                            "active": [2, 1, 0],
                            "revenue_per_customer": {"3": 15000, "6": None, "12": None},
                        }
                    ],
                }
            ]
        },
        populate_by_name=True,
    )
    from_: date = Field(alias="from")
    to: date
    orders: int
    customers: int
    new_customers: int
    repeat_customers: int
    repeat_purchase_rate: float | None
    revenue: list[Amount]
    currency: str | None
    days: list[DayCount]
    cohorts: list[Cohort]


def bounds(from_: date, to: date) -> tuple[datetime, datetime]:
    """The period's instants: from midnight UTC of ``from_`` to the midnight after ``to``."""
    return (
        datetime.combine(from_, time(), UTC),
        datetime.combine(to + timedelta(days=1), time(), UTC),
    )


def months_between(first: date, last: date) -> int:
    return (last.year - first.year) * 12 + last.month - first.month


def pivot_cohorts(
    rows: Sequence[Any], period_end: date, months: int = COHORT_MONTHS
) -> list[Cohort]:
    """Rows (month, k, active, revenue) into one cohort each. Pure, so the arithmetic
    of revenue per customer is checked without a database."""
    by_month: dict[date, dict[int, tuple[int, int]]] = {}
    for r in rows:
        by_month.setdefault(r.month, {})[int(r.k)] = (int(r.active), int(r.revenue))
    cohorts = []
    for month, cells in sorted(by_month.items()):
        size = cells[0][0] if 0 in cells else 0
        age = months_between(month, period_end)  # full months elapsed up to the period end
        span = min(months, age + 1)
        active = [cells.get(k, (0, 0))[0] for k in range(span)]
        clv: dict[str, int | None] = {}
        for m in CLV_MONTHS:
            if age + 1 < m or size == 0:
                clv[str(m)] = None
            else:
                spent = sum(cells.get(k, (0, 0))[1] for k in range(m))
                clv[str(m)] = round(spent / size)
        cohorts.append(Cohort(month=month, customers=size, active=active, revenue_per_customer=clv))
    return cohorts


async def order_metrics(
    session: AsyncSession, tenant_id: str, from_: date, to: date
) -> OrderMetrics:
    start, end = bounds(from_, to)
    summary = await metrics_store.order_summary(session, tenant_id, start, end)
    revenue = await metrics_store.revenue_by_currency(session, tenant_id, start, end)
    days = await metrics_store.orders_per_day(session, tenant_id, start, end)
    currency = revenue[0].currency if revenue else None
    cohort_rows = await metrics_store.cohort_cells(
        session,
        tenant_id,
        start,
        end,
        currency=currency,
        months=COHORT_MONTHS,
        start_month=start.replace(day=1, tzinfo=None),
        end_local=end.replace(tzinfo=None),
    )
    customers = int(summary.customers)
    repeat = int(summary.repeat_customers)
    return OrderMetrics(
        from_=from_,
        to=to,
        orders=int(summary.orders),
        customers=customers,
        new_customers=int(summary.new_customers),
        repeat_customers=repeat,
        repeat_purchase_rate=round(repeat / customers, 4) if customers else None,
        revenue=[Amount(currency=r.currency, amount=int(r.amount)) for r in revenue],
        currency=currency,
        days=[DayCount(day=d.day, orders=int(d.orders), customers=int(d.customers)) for d in days],
        cohorts=pivot_cohorts(cohort_rows, to),
    )


_BAD_PERIOD = openapi.error(
    422,
    "The period is reversed or longer than two years",
    "unprocessable",
    "to is before from",
    field="to",
)


@router.get(
    "/orders",
    summary="Order-book metrics over a period (scope orders:read)",
    response_model=OrderMetrics,
    responses=_BAD_PERIOD,
)
async def get_order_metrics(
    session: Session,
    from_: Annotated[date, Query(alias="from", examples=["2026-01-01"])],
    to: Annotated[date, Query(examples=["2026-03-31"])],
    principal: Principal = Depends(require_scope("orders:read")),
) -> OrderMetrics:
    if to < from_:
        raise Unprocessable("to is before from", field="to")
    if (to - from_).days >= MAX_PERIOD_DAYS:
        raise Unprocessable(f"the period is longer than {MAX_PERIOD_DAYS} days", field="to")
    return await order_metrics(session, principal.tenant_id, from_, to)
