"""Every SQL statement of support (:mod:`.support`): the tickets a ``ticket.*`` batch
touches, the CSAT worker's claim and outcomes, and the support metrics' queries.

Each function runs in the caller's transaction and never commits (the consumer's batch
or the worker's round does, so a ticket's state and its CSAT survey stay atomic)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Row, func, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.feedback import tickets
from afterglow.feedback.models import SupportTicket, Survey

# --- tickets --------------------------------------------------------------------------


async def tickets_of(
    session: AsyncSession, keys: Sequence[tuple[str, str]]
) -> Sequence[SupportTicket]:
    """The stored tickets among (tenant_id, ticket_id) keys, in one read."""
    return (
        await session.scalars(
            select(SupportTicket).where(
                tuple_(SupportTicket.tenant_id, SupportTicket.ticket_id).in_(keys)
            )
        )
    ).all()


async def upsert_tickets(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """Every ticket of a batch in one statement: a new one inserted, a known one overwritten."""
    stmt = pg_insert(SupportTicket).values(rows)
    columns = [c for c in rows[0] if c not in ("tenant_id", "ticket_id")]
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=["tenant_id", "ticket_id"],
            set_={c: getattr(stmt.excluded, c) for c in columns},
        )
    )


# --- the CSAT worker ------------------------------------------------------------------


async def lock_due_csat(
    session: AsyncSession, now: datetime, limit: int
) -> Sequence[SupportTicket]:
    """Up to ``limit`` tickets whose CSAT is due, locked; SKIP LOCKED so two workers never
    claim the same ticket (which would ask its survey twice)."""
    return (
        await session.scalars(
            select(SupportTicket)
            .where(SupportTicket.csat_status == tickets.DUE, SupportTicket.csat_due_at <= now)
            .order_by(SupportTicket.tenant_id, SupportTicket.customer_id, SupportTicket.csat_due_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    ).all()


async def last_survey_sent(
    session: AsyncSession, customers: Sequence[tuple[str, str]], since: datetime
) -> dict[tuple[str, str], datetime]:
    """Per (tenant_id, customer_id), their last survey sent after ``since``, in one query."""
    return {
        (r.tenant_id, r.customer_id): r.last
        for r in await session.execute(
            select(Survey.tenant_id, Survey.customer_id, func.max(Survey.sent_at).label("last"))
            .where(
                tuple_(Survey.tenant_id, Survey.customer_id).in_(customers),
                Survey.sent_at > since,
            )
            .group_by(Survey.tenant_id, Survey.customer_id)
        )
    }


async def record_csat_outcomes(session: AsyncSession, outcomes: list[dict[str, Any]]) -> None:
    """Each ticket's csat_status and csat_reason, by primary key, as one executemany."""
    await session.execute(update(SupportTicket), outcomes)


# --- metrics --------------------------------------------------------------------------

# Per ISO week (Monday, UTC) of the opening, and per channel: ticket count, median and
# 90th percentile of first-response and resolution seconds (percentile_cont ignores
# the tickets still waiting for either).
_TIMES = text(
    """
SELECT date_trunc('week', t.opened_at AT TIME ZONE 'UTC') AT TIME ZONE 'UTC' AS week,
       coalesce(t.channel, 'unknown') AS channel,
       count(*) AS tickets,
       count(t.first_response_at) AS responded,
       count(t.resolved_at) AS resolved,
       percentile_cont(0.5) WITHIN GROUP (
           ORDER BY extract(epoch FROM t.first_response_at - t.opened_at)) AS frt_median,
       percentile_cont(0.9) WITHIN GROUP (
           ORDER BY extract(epoch FROM t.first_response_at - t.opened_at)) AS frt_p90,
       percentile_cont(0.5) WITHIN GROUP (
           ORDER BY extract(epoch FROM t.resolved_at - t.opened_at)) AS res_median,
       percentile_cont(0.9) WITHIN GROUP (
           ORDER BY extract(epoch FROM t.resolved_at - t.opened_at)) AS res_p90
FROM feedback.support_tickets t
WHERE t.tenant_id = :tenant AND t.opened_at >= :start AND t.opened_at < :end
GROUP BY 1, 2
ORDER BY 1, 2
"""
)

# The last answer to each ticket's CSAT survey.
_CSAT = text(
    """
SELECT s.ticket_id, r.score, r.responded_at
FROM feedback.surveys s
JOIN feedback.responses r ON r.survey_id = s.id AND NOT r.superseded
WHERE s.tenant_id = :tenant AND s.kind = 'csat' AND s.ticket_id IS NOT NULL
  AND r.responded_at >= :start AND r.responded_at < :end
ORDER BY r.responded_at
LIMIT 1000
"""
)


async def ticket_times(session: AsyncSession, params: dict[str, Any]) -> Sequence[Row[Any]]:
    """Per week and channel: counts and first-response/resolution percentiles."""
    return (await session.execute(_TIMES, params)).all()


async def csat_answers(session: AsyncSession, params: dict[str, Any]) -> Sequence[Row[Any]]:
    """The CSAT answers of the period, oldest first (ticket_id, score, responded_at)."""
    return (await session.execute(_CSAT, params)).all()
