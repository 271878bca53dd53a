"""The SQL of feedback's metrics (:mod:`.metrics` assembles the figures from these rows).

Each function runs in the caller's transaction; the bucketed queries take the period's
bounds and interval as bind parameters (``:tenant``, ``:start``, ``:end``, ``:interval``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from sqlalchemy import Row, text
from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.kit.period import with_buckets

_SKU_RESPONSES = (
    " AND EXISTS (SELECT 1 FROM feedback.order_items oi WHERE oi.tenant_id = r.tenant_id"
    " AND oi.order_id = r.order_id AND oi.sku = :sku)"
)
_SKU_SURVEYS = _SKU_RESPONSES.replace("r.", "s.")

# Rows are first grouped by UTC day with date_bin (plain arithmetic on the timestamp),
# then the few hundred day rows are rolled up into day/week/month buckets. Calling
# date_trunc(..., 'UTC') on every row instead costs a time zone conversion per row and
# made the query 6x slower over 1M answers (see bench/feedback/run.py).
_QUERY = with_buckets(
    """answer_days AS (
    SELECT date_bin('1 day', r.responded_at, TIMESTAMPTZ '2000-01-03 00:00:00+00') AS day,
           count(*) FILTER (WHERE r.score >= :top) AS top,
           count(*) FILTER (WHERE r.score >= :mid AND r.score < :top) AS mid,
           count(*) FILTER (WHERE r.score < :mid) AS low,
           sum(r.score) AS score_sum
    FROM feedback.responses r
    WHERE r.tenant_id = :tenant AND r.kind = :kind AND NOT r.superseded
      AND r.responded_at >= :start AND r.responded_at < :end {sku_r}
    GROUP BY 1
), answers AS (
    SELECT date_trunc(:interval, day, 'UTC') AS bucket,
           sum(top) AS top, sum(mid) AS mid, sum(low) AS low, sum(score_sum) AS score_sum
    FROM answer_days GROUP BY 1
), send_days AS (
    SELECT date_bin('1 day', s.sent_at, TIMESTAMPTZ '2000-01-03 00:00:00+00') AS day,
           count(*) AS sent,
           count(s.first_answered_at) AS answered
    FROM feedback.surveys s
    WHERE s.tenant_id = :tenant AND s.kind = :kind
      AND s.sent_at >= :start AND s.sent_at < :end {sku_s}
    GROUP BY 1
), sends AS (
    SELECT date_trunc(:interval, day, 'UTC') AS bucket,
           sum(sent) AS sent, sum(answered) AS answered
    FROM send_days GROUP BY 1
)
SELECT b.bucket,
       coalesce(a.top, 0) AS top, coalesce(a.mid, 0) AS mid, coalesce(a.low, 0) AS low,
       coalesce(a.score_sum, 0) AS score_sum,
       coalesce(s.sent, 0) AS sent, coalesce(s.answered, 0) AS answered
FROM buckets b
LEFT JOIN answers a ON a.bucket = b.bucket
LEFT JOIN sends s ON s.bucket = b.bucket
ORDER BY b.bucket
"""
)


def query_text(with_sku: bool) -> str:
    return _QUERY.format(
        sku_r=_SKU_RESPONSES if with_sku else "", sku_s=_SKU_SURVEYS if with_sku else ""
    )


# Reviews: what is counted, and why the average keeps low ratings, is told in
# metrics.py (reviews section).
_REVIEW_SERIES = text(
    with_buckets(
        """received AS (
        SELECT date_trunc(:interval, created_at, 'UTC') AS bucket,
               count(*) AS reviews,
               count(*) FILTER (WHERE status = 'published') AS published,
               avg(rating) FILTER (WHERE status <> 'rejected') AS average_rating
        FROM feedback.reviews
        WHERE tenant_id = :tenant AND created_at >= :start AND created_at < :end
        GROUP BY 1
    )
    SELECT b.bucket, coalesce(r.reviews, 0) AS reviews, coalesce(r.published, 0) AS published,
           round(r.average_rating, 2)::float AS average_rating
    FROM buckets b LEFT JOIN received r ON r.bucket = b.bucket
    ORDER BY b.bucket
    """
    )
)

_REVIEW_TOTALS = text(
    """
    SELECT status, rating, count(*) AS reviews
    FROM feedback.reviews
    WHERE tenant_id = :tenant AND created_at >= :start AND created_at < :end
    GROUP BY status, rating
    """
)


async def answers_per_bucket(
    session: AsyncSession, with_sku: bool, params: dict[str, Any]
) -> Sequence[Row[Any]]:
    """Per bucket: answers per band, score sum, surveys sent and answered (Window.params)."""
    return (await session.execute(text(query_text(with_sku)), params)).all()


async def reviews_per_bucket(session: AsyncSession, params: dict[str, Any]) -> Sequence[Row[Any]]:
    """Per bucket: reviews received, published, and the average rating of the unrejected."""
    return (await session.execute(_REVIEW_SERIES, params)).all()


async def review_counts(session: AsyncSession, params: dict[str, Any]) -> Sequence[Row[Any]]:
    """(status, rating, reviews) of the period's reviews."""
    return (await session.execute(_REVIEW_TOTALS, params)).all()
