"""Referral metrics over a period (the console's dashboard): invitations, referred
orders by outcome, the revenue they brought and the rejections by reason.

Definitions:

- invited: advocates whose code was first handed out (``invited_at``) in the period;
- referred orders are those *placed* in the period, counted by their state now:
  confirmed (a conversion: the return window passed), pending, held for review,
  rejected (with its reason: self-referral, cancelled, refunded, ...); an order placed
  near the period's end may still be pending;
- revenue: of confirmed conversions, the order totals less refunds, per currency
  (never added across currencies); pending revenue likewise for pending and held.

One statement per figure, each a GROUP BY in PostgreSQL (metrics_store).
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.kit.period import Period
from afterglow.referrals import metrics_store


def _per_currency(rows: list[Any], states: tuple[str, ...]) -> dict[str, int]:
    out: dict[str, int] = {}
    for r in rows:
        if r.state in states:
            out[r.currency] = out.get(r.currency, 0) + int(r.revenue)
    return dict(sorted(out.items()))


async def referral_metrics(session: AsyncSession, tenant_id: str, period: Period) -> dict[str, Any]:
    params = {"tenant": tenant_id, **period.params()}
    invited = await metrics_store.invited(session, params)
    rows = await metrics_store.referrals_by_state(session, params)
    reasons = await metrics_store.rejection_reasons(session, params)
    count: dict[str, int] = {}
    for r in rows:
        count[r.state] = count.get(r.state, 0) + int(r.referrals)
    return {
        "invited": invited,
        "referred_orders": sum(count.values()),
        "conversions": count.get("confirmed", 0),
        "pending": count.get("pending", 0),
        "held": count.get("held", 0),
        "rejected": count.get("rejected", 0),
        "rejection_reasons": [{"reason": r.reason, "referrals": int(r.referrals)} for r in reasons],
        "revenue": _per_currency(rows, ("confirmed",)),
        "pending_revenue": _per_currency(rows, ("pending", "held")),
    }
