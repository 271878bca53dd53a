"""The statements behind the referral metrics (afterglow.referrals.metrics): one per
figure, each a GROUP BY in PostgreSQL, over ``params``: tenant, start and end."""

from __future__ import annotations

from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncSession

_INVITED = text(
    """
    SELECT count(*) FROM referrals.codes
    WHERE tenant_id = :tenant AND invited_at >= :start AND invited_at < :end
    """
)

_BY_STATE = text(
    """
    SELECT state, currency, count(*) AS referrals,
           sum(order_total - refunded_amount)::bigint AS revenue
    FROM referrals.referrals
    WHERE tenant_id = :tenant AND placed_at >= :start AND placed_at < :end
    GROUP BY state, currency
    """
)

_REASONS = text(
    """
    SELECT coalesce(reason, 'unknown') AS reason, count(*) AS referrals
    FROM referrals.referrals
    WHERE tenant_id = :tenant AND placed_at >= :start AND placed_at < :end
      AND state = 'rejected'
    GROUP BY 1 ORDER BY 2 DESC, 1
    """
)


async def invited(session: AsyncSession, params: dict[str, Any]) -> int:
    return int((await session.execute(_INVITED, params)).scalar_one())


async def referrals_by_state(session: AsyncSession, params: dict[str, Any]) -> list[Any]:
    """Per state and currency: the count and the revenue net of refunds."""
    return list((await session.execute(_BY_STATE, params)).all())


async def rejection_reasons(session: AsyncSession, params: dict[str, Any]) -> list[Any]:
    return list((await session.execute(_REASONS, params)).all())
