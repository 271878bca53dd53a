"""Support as a programme: ticket times, and a CSAT survey after each solved ticket.

The ``ticket.*`` events (from orders-ingest) are applied a batch at a time: one read
of the tickets the batch touches, the rules in memory (afterglow.feedback.tickets), one
upsert. The CSAT worker claims due surveys (``FOR UPDATE SKIP LOCKED``), checks the
survey fatigue window with one query for the batch's customers, asks the survey
through the same use case as a journey's ``survey.requested`` (request id
``csat:<ticket>``, so a ticket is asked once whatever repeats), and records each
outcome with its reason.
"""

from __future__ import annotations

import logging
from dataclasses import asdict
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.events import CloudEvent, on_batch
from afterglow.events.catalog import SurveyRequested, TicketOpened, TicketResolved, TicketUpdated
from afterglow.feedback import service, tickets
from afterglow.feedback.deps import deps_of
from afterglow.feedback.models import SupportTicket, Survey
from afterglow.feedback.settings import FeedbackSettings
from afterglow.kit.app import Runtime
from afterglow.kit.polling import PollingWorker, TransactionalRound, in_one_transaction

log = logging.getLogger(__name__)


async def apply_tickets(
    runtime: Runtime,
    session: AsyncSession,
    events: list[CloudEvent[Any]],
) -> None:
    """ticket.opened, .updated and .resolved, interleaved as they came, in one pass."""
    delay = timedelta(hours=_settings(runtime).feedback_csat_delay_hours)
    await apply_ticket_events(session, events, delay)


# ticket.*: support times and the CSAT after a solve, in the feedback events group.
TICKET_SUBSCRIPTIONS = (
    on_batch(TicketOpened, apply_tickets),
    on_batch(TicketUpdated, apply_tickets),
    on_batch(TicketResolved, apply_tickets),
)


async def apply_ticket_events(
    session: AsyncSession, events: list[CloudEvent[Any]], csat_delay: timedelta
) -> None:
    keys = sorted({(e.tenantid, str(e.data.ticket_id)) for e in events})
    known = await session.scalars(
        select(SupportTicket).where(
            tuple_(SupportTicket.tenant_id, SupportTicket.ticket_id).in_(keys)
        )
    )
    state: dict[tuple[str, str], tickets.Ticket] = {
        (r.tenant_id, r.ticket_id): tickets.Ticket(
            r.tenant_id,
            r.ticket_id,
            r.customer_id,
            r.helpdesk,
            r.channel,
            r.opened_at,
            r.first_response_at,
            r.resolved_at,
            r.csat_status,
            r.csat_due_at,
            r.csat_reason,
        )
        for r in known
    }
    for e in events:
        key = (e.tenantid, str(e.data.ticket_id))
        state[key] = tickets.apply(
            state.get(key), e.type, e.data, e.tenantid, e.subject, csat_delay
        )
    rows = [asdict(state[k]) for k in keys]
    stmt = pg_insert(SupportTicket).values(rows)
    columns = [c for c in rows[0] if c not in ("tenant_id", "ticket_id")]
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=["tenant_id", "ticket_id"],
            set_={c: getattr(stmt.excluded, c) for c in columns},
        )
    )


# --- the CSAT worker --------------------------------------------------------------------


async def csat_worker(runtime: Runtime) -> None:
    """Background loop (create_service_app workers=)."""
    settings = _settings(runtime)
    await PollingWorker(
        "feedback-csat",
        in_one_transaction(runtime.sessionmaker, csat_round(runtime)),
        runtime.clock,
        settings.feedback_csat_poll_s,
        batch=settings.feedback_csat_batch,
    ).run()


async def send_due_csat(runtime: Runtime) -> int:
    """One round, as the worker runs it (tests step it)."""
    send = in_one_transaction(runtime.sessionmaker, csat_round(runtime))
    return await send(runtime.clock.now())


def csat_round(runtime: Runtime) -> TransactionalRound:
    """One round in one transaction: the surveys and their outcomes commit together."""
    settings = _settings(runtime)
    fatigue = timedelta(days=settings.feedback_survey_fatigue_days)

    async def send_round(session: AsyncSession, now: datetime) -> int:
        due = (
            await session.scalars(
                select(SupportTicket)
                .where(SupportTicket.csat_status == tickets.DUE, SupportTicket.csat_due_at <= now)
                .order_by(
                    SupportTicket.tenant_id, SupportTicket.customer_id, SupportTicket.csat_due_at
                )
                .limit(settings.feedback_csat_batch)
                .with_for_update(skip_locked=True)
            )
        ).all()
        if not due:
            return 0
        customers = sorted({(t.tenant_id, t.customer_id) for t in due})
        last = {
            (r.tenant_id, r.customer_id): r.last
            for r in await session.execute(
                select(Survey.tenant_id, Survey.customer_id, func.max(Survey.sent_at).label("last"))
                .where(
                    tuple_(Survey.tenant_id, Survey.customer_id).in_(customers),
                    Survey.sent_at > now - fatigue,
                )
                .group_by(Survey.tenant_id, Survey.customer_id)
            )
        }
        outcomes = []
        for t in due:
            who = (t.tenant_id, t.customer_id)
            reason = tickets.csat_decision(last.get(who), now, fatigue)
            if reason is None:
                await _ask(runtime, session, settings, t, now)
                last[who] = now  # a second ticket of theirs in this batch is fatigued
            outcomes.append(
                {
                    "tenant_id": t.tenant_id,
                    "ticket_id": t.ticket_id,
                    "csat_status": tickets.SENT if reason is None else tickets.SKIPPED,
                    "csat_reason": reason,
                }
            )
        await session.execute(update(SupportTicket), outcomes)
        return len(due)

    return send_round


async def _ask(
    runtime: Runtime,
    session: AsyncSession,
    settings: FeedbackSettings,
    t: SupportTicket,
    now: datetime,
) -> None:
    request = SurveyRequested(
        request_id=f"csat:{t.ticket_id}",
        kind="csat",
        ticket_id=t.ticket_id,
        requested_at=now,
    )
    event = CloudEvent.new(request, tenant_id=t.tenant_id, subject=t.customer_id, source="feedback")
    await service.handle_survey_requested(session, runtime.outbox, settings, event, now)


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


def _num(value: Any) -> float | None:
    return None if value is None else round(float(value), 3)


async def support_metrics(
    session: AsyncSession, tenant_id: str, start: datetime, end: datetime
) -> dict[str, Any]:
    params = {"tenant": tenant_id, "start": start, "end": end}
    weeks = [
        {
            "week": r.week.isoformat(),
            "channel": r.channel,
            "tickets": r.tickets,
            "first_response_s": {
                "count": r.responded,
                "median": _num(r.frt_median),
                "p90": _num(r.frt_p90),
            },
            "resolution_s": {
                "count": r.resolved,
                "median": _num(r.res_median),
                "p90": _num(r.res_p90),
            },
        }
        for r in await session.execute(_TIMES, params)
    ]
    csat = [
        {
            "ticket_id": r.ticket_id,
            "score": r.score,
            "satisfied": r.score >= 4,
            "responded_at": r.responded_at.isoformat(),
        }
        for r in await session.execute(_CSAT, params)
    ]
    return {
        "from": start.isoformat(),
        "to": end.isoformat(),
        "weeks": weeks,
        "csat_by_ticket": csat,
    }


def _settings(runtime: Runtime) -> FeedbackSettings:
    return deps_of(runtime).settings
