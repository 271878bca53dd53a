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

from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.events import CloudEvent, on_batch
from afterglow.events.catalog import SurveyRequested, TicketOpened, TicketResolved, TicketUpdated
from afterglow.feedback import service, support_store, tickets
from afterglow.feedback.deps import deps_of
from afterglow.feedback.models import SupportTicket
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
    known = await support_store.tickets_of(session, keys)
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
    await support_store.upsert_tickets(session, [asdict(state[k]) for k in keys])


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
        due = await support_store.lock_due_csat(session, now, settings.feedback_csat_batch)
        if not due:
            return 0
        customers = sorted({(t.tenant_id, t.customer_id) for t in due})
        last = await support_store.last_survey_sent(session, customers, now - fatigue)
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
        await support_store.record_csat_outcomes(session, outcomes)
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
        for r in await support_store.ticket_times(session, params)
    ]
    csat = [
        {
            "ticket_id": r.ticket_id,
            "score": r.score,
            "satisfied": r.score >= 4,
            "responded_at": r.responded_at.isoformat(),
        }
        for r in await support_store.csat_answers(session, params)
    ]
    return {
        "from": start.isoformat(),
        "to": end.isoformat(),
        "weeks": weeks,
        "csat_by_ticket": csat,
    }


def _settings(runtime: Runtime) -> FeedbackSettings:
    return deps_of(runtime).settings
