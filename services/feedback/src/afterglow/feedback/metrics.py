"""NPS / CSAT / CES series and the review dashboard: the figures assembled from the rows
of :mod:`.metrics_store` (one pass over the last answer per survey, ``NOT superseded``,
covered by the partial index ix_responses_metrics; date_trunc buckets in UTC, FILTER
clauses for the bands)."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.feedback import domain, metrics_store

# (top band from, middle band from): the thresholds of domain.band, per kind.
THRESHOLDS = {"nps": (9, 7), "csat": (4, 3), "ces": (5, 4)}
BAND_NAMES = {
    "nps": ("promoters", "passives", "detractors"),
    "csat": ("satisfied", "neutral", "dissatisfied"),
    "ces": ("satisfied", "neutral", "dissatisfied"),
}


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
    rows = await metrics_store.answers_per_bucket(session, w.sku is not None, w.params())
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
# The queries are metrics_store.reviews_per_bucket and review_counts.


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
    series_rows = await metrics_store.reviews_per_bucket(session, params)
    totals = review_totals(await metrics_store.review_counts(session, params))
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
