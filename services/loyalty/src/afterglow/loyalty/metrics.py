"""Points over a period, per bucket: issued, redeemed, expired (the console's
dashboard), and the outstanding balance with its liability in money now.

Definitions (the same as the programme totals of ``GET /v1/metrics``):

- issued: points that became spendable (``earn_available``, and positive
  adjustments), when they did; pending points are not issued until the return window
  passes, so a refunded order never counts;
- redeemed, expired: what redemptions and expiries took, as positive numbers;
- outstanding: the available balances now (a balance is a state, not a flow: it has no
  period), and the liability: outstanding times the programme's point value.

One statement per figure (the series a GROUP BY over the ledger's buckets).
"""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

_SERIES = text(
    """
    WITH buckets AS (
        SELECT b AT TIME ZONE 'UTC' AS bucket
        FROM generate_series(
            date_trunc(:interval, CAST(:start AS timestamptz), 'UTC') AT TIME ZONE 'UTC',
            CAST(:end AS timestamptz) AT TIME ZONE 'UTC' - interval '1 microsecond',
            CAST('1 ' || :interval AS interval)
        ) AS b
    ), flows AS (
        SELECT date_trunc(:interval, created_at, 'UTC') AS bucket,
               sum(available_delta) FILTER (
                   WHERE kind = 'earn_available' OR (kind = 'adjust' AND available_delta > 0)
               ) AS issued,
               -sum(available_delta) FILTER (WHERE kind = 'redeem') AS redeemed,
               -sum(available_delta) FILTER (WHERE kind = 'expire') AS expired
        FROM loyalty.entries
        WHERE tenant_id = :tenant AND created_at >= :start AND created_at < :end
          AND kind IN ('earn_available', 'adjust', 'redeem', 'expire')
        GROUP BY 1
    )
    SELECT b.bucket, coalesce(f.issued, 0)::bigint AS issued,
           coalesce(f.redeemed, 0)::bigint AS redeemed, coalesce(f.expired, 0)::bigint AS expired
    FROM buckets b LEFT JOIN flows f ON f.bucket = b.bucket
    ORDER BY b.bucket
    """
)

_OUTSTANDING = text(
    """
    SELECT coalesce(sum(greatest(available, 0)), 0)::bigint AS outstanding
    FROM loyalty.accounts WHERE tenant_id = :tenant
    """
)


async def points_series(
    session: AsyncSession,
    tenant_id: str,
    start: datetime,
    end: datetime,
    interval: str,
    point_value_minor: Decimal,
    currency: str,
) -> dict[str, Any]:
    params = {"tenant": tenant_id, "start": start, "end": end, "interval": interval}
    rows = (await session.execute(_SERIES, params)).all()
    outstanding = int((await session.execute(_OUTSTANDING, {"tenant": tenant_id})).scalar_one())
    series = [
        {
            "start": r.bucket.date(),
            "issued": int(r.issued),
            "redeemed": int(r.redeemed),
            "expired": int(r.expired),
        }
        for r in rows
    ]
    return {
        "interval": interval,
        "issued": sum(p["issued"] for p in series),
        "redeemed": sum(p["redeemed"] for p in series),
        "expired": sum(p["expired"] for p in series),
        "outstanding": outstanding,
        "outstanding_liability": {
            "amount": int(Decimal(outstanding) * point_value_minor),
            "currency": currency,
        },
        "series": series,
    }
