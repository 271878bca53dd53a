"""NPS / CSAT / CES series computed in SQL: one pass over the last answer per survey
(``NOT superseded``, covered by the partial index ix_responses_metrics), date_trunc
buckets in UTC, FILTER clauses for the bands."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.feedback import domain
from afterglow.kit.period import with_buckets

# (top band from, middle band from): the thresholds of domain.band, per kind.
THRESHOLDS = {"nps": (9, 7), "csat": (4, 3), "ces": (5, 4)}
BAND_NAMES = {
    "nps": ("promoters", "passives", "detractors"),
    "csat": ("satisfied", "neutral", "dissatisfied"),
    "ces": ("satisfied", "neutral", "dissatisfied"),
}

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


@dataclass(frozen=True)
class Window:
    tenant_id: str
    kind: str
    start: datetime
    end: datetime
    interval: str
    sku: str | None = None

    def params(self) -> dict[str, Any]:
        top, mid = THRESHOLDS[self.kind]
        p: dict[str, Any] = {
            "tenant": self.tenant_id,
            "kind": self.kind,
            "start": self.start,
            "end": self.end,
            "interval": self.interval,
            "top": top,
            "mid": mid,
        }
        if self.sku is not None:
            p["sku"] = self.sku
        return p


def _figures(kind: str, top: int, mid: int, low: int, score_sum: int, sent: int, answered: int):
    names = BAND_NAMES[kind]
    responses = top + mid + low
    out: dict[str, Any] = {
        names[0]: top,
        names[1]: mid,
        names[2]: low,
        "responses": responses,
        "average": round(score_sum / responses, 2) if responses else None,
        "sent": sent,
        "answered": answered,
        # Of the surveys SENT in the period, the share answered so far (cohort rate):
        # answers in a period may belong to surveys sent earlier, so responses/sent
        # could exceed 100%.
        "response_rate": domain.rate(answered, sent),
    }
    if kind == "nps":
        out["nps"] = domain.nps(top, mid, low)
    elif kind == "csat":
        out["csat"] = domain.csat(top, responses)
    else:
        out["ces_satisfied_pct"] = domain.csat(top, responses)
    return out


async def series(session: AsyncSession, w: Window) -> dict[str, Any]:
    rows = (await session.execute(text(query_text(w.sku is not None)), w.params())).all()
    points = []
    totals = [0, 0, 0, 0, 0, 0]
    for r in rows:
        vals = [r.top, r.mid, r.low, r.score_sum, r.sent, r.answered]
        totals = [t + int(v) for t, v in zip(totals, vals, strict=True)]
        start = r.bucket
        points.append({"start": start.isoformat(), **_figures(w.kind, *map(int, vals))})
    return {
        "kind": w.kind,
        "from": w.start.isoformat(),
        "to": w.end.isoformat(),
        "interval": w.interval,
        "sku": w.sku,
        "total": _figures(w.kind, *totals),
        "series": points,
    }


# --- reviews --------------------------------------------------------------------------
#
# Review volume and average rating per bucket of a period (the console's dashboard).
# Counted: reviews submitted in the period (created_at), whatever their moderation.
# The average leaves out rejected ones only (spam, abuse): a low rating is never left
# out, since averaging only what was published would hide negative reviews (the FTC
# rule on review suppression). Buckets with no review are rows with 0 and no average.

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


def review_totals(rows: Any) -> dict[str, Any]:
    """(status, rating, count) rows into the period's totals. Pure."""
    by_status: dict[str, int] = {}
    ratings = {str(k): 0 for k in range(1, 6)}
    rated = weighted = 0
    for r in rows:
        n = int(r.reviews)
        by_status[r.status] = by_status.get(r.status, 0) + n
        if r.status != "rejected":
            ratings[str(r.rating)] = ratings.get(str(r.rating), 0) + n
            rated += n
            weighted += n * int(r.rating)
    return {
        "reviews": sum(by_status.values()),
        "published": by_status.get("published", 0),
        "pending": by_status.get("pending", 0),
        "rejected": by_status.get("rejected", 0),
        "average_rating": round(weighted / rated, 2) if rated else None,
        "ratings": ratings,
    }


async def review_series(
    session: AsyncSession, tenant_id: str, start: datetime, end: datetime, interval: str
) -> dict[str, Any]:
    params = {"tenant": tenant_id, "start": start, "end": end, "interval": interval}
    series_rows = (await session.execute(_REVIEW_SERIES, params)).all()
    totals = review_totals((await session.execute(_REVIEW_TOTALS, params)).all())
    return {
        "interval": interval,
        "total": totals,
        "series": [
            {
                "start": r.bucket.date().isoformat(),
                "reviews": int(r.reviews),
                "published": int(r.published),
                "average_rating": r.average_rating,
            }
            for r in series_rows
        ],
    }
