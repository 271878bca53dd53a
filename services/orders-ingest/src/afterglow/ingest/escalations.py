"""A detractor's escalation becomes a ticket in the tenant's helpdesk.

Why here: orders-ingest already holds every credential for the outside world (the
platforms' webhook secrets and API tokens, sealed) and receives the helpdesks'
webhooks; keeping the helpdesk's API token next to them means no token is copied into
a second service, and the ticket's returning webhook lands where the escalation is
known (afterglow.ingest.customers resolves it to the escalated customer).

The journey orchestrator emits ``support.escalation_requested``; the consumer records
it (one multi-row insert per batch, a repeat is ignored). The worker then claims due
escalations (``FOR UPDATE SKIP LOCKED``, a lease that outlives the call's deadline so
only a dead worker's claim runs out), calls the helpdesk through the outbound guard
with a timeout, and records the ticket, or the error with a retry time: transient
failures (transport, 408/409/429/5xx) retry with backoff, a refusal fails at once.

A retry never opens a second ticket: Zendesk gets the same ``Idempotency-Key`` and,
first, a lookup by ``external_id``; Gorgias (no idempotency key) the same lookup by
``external_id``; a generic receiver gets the same ``webhook-id``.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.events import CloudEvent, ConsumerGroup, on_batch
from afterglow.events.catalog import SupportEscalationRequested
from afterglow.ingest import escalations_store, helpdesk
from afterglow.ingest.deps import deps_of
from afterglow.ingest.settings import IngestSettings
from afterglow.kit.app import Runtime
from afterglow.kit.outbound import ForbiddenDestination, check_destination
from afterglow.kit.polling import PollingWorker

log = logging.getLogger(__name__)

PENDING, CREATED, FAILED = "pending", "created", "failed"
ESCALATION_TYPE = "afterglow.support.escalation_requested.v1"


async def record(
    runtime: Runtime, session: AsyncSession, events: list[CloudEvent[SupportEscalationRequested]]
) -> None:
    await record_escalations(session, events, runtime.clock.now())
    deps_of(runtime).escalation_wakeup.set()


def _runtime(runtime: Runtime) -> Runtime:
    return runtime


# Escalations to open in the tenant's helpdesk (ingest holds its credentials).
ESCALATIONS = ConsumerGroup(
    "escalations", on_batch(SupportEscalationRequested, record), context=_runtime
)


async def record_escalations(
    session: AsyncSession, events: list[CloudEvent[SupportEscalationRequested]], now: datetime
) -> None:
    """Due at once, by this service's clock (the requester's clock may differ)."""
    rows = []
    for e in events:
        data = e.data
        rows.append(
            {
                "tenant_id": e.tenantid,
                "escalation_id": e.id,
                "subject": e.subject,
                "reason": data.reason,
                "priority": data.priority,
                "order_id": data.order_id,
                "survey_id": data.survey_id,
                "score": data.score,
                "comment": data.comment,
                "requested_at": data.requested_at,
                "status": PENDING,
                "attempts": 0,
                "next_attempt_at": now,
            }
        )
    if rows:
        await escalations_store.insert_escalations(session, rows)


async def set_connection(
    session: AsyncSession,
    *,
    tenant_id: str,
    kind: str,
    api_base_url: str,
    username: str | None,
    secret: str,
) -> None:
    values = {"kind": kind, "api_base_url": api_base_url, "username": username, "secret": secret}
    await escalations_store.upsert_helpdesk_connection(session, tenant_id, values)


async def list_escalations(session: AsyncSession, tenant_id: str) -> list[dict[str, Any]]:
    rows = await escalations_store.latest_escalations(session, tenant_id, limit=200)
    return [
        {
            "escalation_id": r.escalation_id,
            "customer_id": r.subject,
            "status": r.status,
            "helpdesk": r.helpdesk,
            "ticket": r.ticket_ref,
            "attempts": r.attempts,
            "last_error": r.last_error,
        }
        for r in rows
    ]


# --- the worker -----------------------------------------------------------------------


@dataclass(frozen=True)
class Claim:
    tenant_id: str
    escalation_id: str
    attempt: int
    draft: helpdesk.TicketDraft
    connection: helpdesk.Connection | None


@dataclass(frozen=True)
class Result:
    status: str  # created | pending (retry) | failed
    ticket_ref: str | None = None
    error: str | None = None


async def escalation_worker(runtime: Runtime) -> None:
    """Background loop (create_service_app workers=)."""
    settings = _settings(runtime)
    wakeup = deps_of(runtime).escalation_wakeup

    async def escalation_round(now: datetime) -> int:
        return await send_due(runtime)

    # Not one transaction: the helpdesks are called between the claim's and the results'.
    await PollingWorker(
        "ingest-escalations",
        escalation_round,
        runtime.clock,
        settings.ingest_helpdesk_poll_s,
        batch=settings.ingest_helpdesk_batch,
        wake=wakeup,
    ).run()


async def send_due(runtime: Runtime) -> int:
    """One round: claim due escalations, call their helpdesks concurrently, record
    each outcome. Returns how many were claimed."""
    settings = _settings(runtime)
    lease_s = 3 * settings.ingest_helpdesk_timeout_s
    async with runtime.sessionmaker.begin() as session:
        claims = await claim_due(
            session, runtime.clock.now(), settings.ingest_helpdesk_batch, lease_s
        )
    results = await asyncio.gather(*(_send(runtime, c) for c in claims))
    if claims:
        async with runtime.sessionmaker.begin() as session:
            await _record_all(session, runtime, claims, list(results))
    return len(claims)


async def claim_due(
    session: AsyncSession, now: datetime, batch: int, lease_s: float
) -> list[Claim]:
    """Lease up to ``batch`` due escalations with their tenant's helpdesk and the
    requester's email (one query per table). The attempt is counted here, so a call
    that kills its process still uses one up."""
    rows = await escalations_store.lock_due_escalations(
        session, status=PENDING, now=now, batch=batch
    )
    if not rows:
        return []
    tenants = sorted({r.tenant_id for r in rows})
    conns = {
        c.tenant_id: helpdesk.Connection(c.kind, c.api_base_url, c.username, c.secret)
        for c in await escalations_store.helpdesk_connections(session, tenants)
    }
    emails = await escalations_store.emails_of_subjects(
        session, tenants, sorted({r.subject for r in rows})
    )
    lease_until = now + timedelta(seconds=lease_s)
    keys = [(r.tenant_id, r.escalation_id) for r in rows]
    await escalations_store.lease_escalations(session, keys, lease_until)
    claims = []
    for r in rows:
        draft = helpdesk.TicketDraft(
            escalation_id=r.escalation_id,
            customer=r.subject,
            reason=r.reason,
            priority=r.priority,
            score=r.score,
            comment=r.comment,
            order_id=r.order_id,
            survey_id=r.survey_id,
            requester_email=emails.get((r.tenant_id, r.subject)),
        )
        conn = conns.get(r.tenant_id)
        claims.append(Claim(r.tenant_id, r.escalation_id, r.attempts + 1, draft, conn))
    return claims


async def _send(runtime: Runtime, claim: Claim) -> Result:
    conn = claim.connection
    if conn is None:
        return Result(PENDING, error="the tenant has no helpdesk connection")
    if conn.kind == "gorgias" and not claim.draft.requester_email:
        return Result(FAILED, error="Gorgias needs the customer's email; no order showed it")
    settings = _settings(runtime)
    http = runtime.http
    assert http is not None
    try:
        await check_destination(conn.api_base_url, allow_private=settings.outbound_allow_private)
        if claim.attempt > 1:
            # An earlier attempt may have created the ticket and lost the answer.
            found = await _lookup(http, conn, claim.draft, settings.ingest_helpdesk_timeout_s)
            if found is not None:
                return Result(CREATED, ticket_ref=found)
        call = helpdesk.create_call(conn, claim.draft, int(runtime.clock.now().timestamp()))
        answer = await http.request(
            call.method,
            call.url,
            headers=call.headers,
            content=call.body,
            timeout=settings.ingest_helpdesk_timeout_s,
        )
    except ForbiddenDestination as exc:
        return Result(FAILED, error=f"api_base_url {exc}")
    except httpx.HTTPError as exc:
        return Result(PENDING, error=f"{type(exc).__name__}: {exc}"[:500])
    if answer.is_success:
        return Result(
            CREATED, ticket_ref=helpdesk.created_ticket(conn, _body(answer), claim.escalation_id)
        )
    error = f"{conn.kind} answered {answer.status_code}: {answer.text[:300]}"
    return Result(PENDING if helpdesk.transient(answer.status_code) else FAILED, error=error)


async def _lookup(
    http: httpx.AsyncClient, conn: helpdesk.Connection, draft: helpdesk.TicketDraft, limit_s: float
) -> str | None:
    call = helpdesk.lookup_call(conn, draft)
    if call is None:
        return None
    answer = await http.request(
        call.method, call.url, headers=call.headers, params=call.params, timeout=limit_s
    )
    answer.raise_for_status()
    return helpdesk.found_ticket(conn, _body(answer))


def _body(answer: httpx.Response) -> dict[str, Any]:
    try:
        value = json.loads(answer.content or b"{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


async def _record_all(
    session: AsyncSession, runtime: Runtime, claims: list[Claim], results: list[Result]
) -> None:
    """Every outcome of the round in one statement (a bulk update by primary key)."""
    settings = _settings(runtime)
    now = runtime.clock.now()
    rows: list[dict[str, Any]] = []
    for claim, result in zip(claims, results, strict=True):
        row: dict[str, Any] = {
            "tenant_id": claim.tenant_id,
            "escalation_id": claim.escalation_id,
            "last_error": result.error,
            "helpdesk": claim.connection.kind if claim.connection else None,
            "ticket_ref": result.ticket_ref,
        }
        if result.status == CREATED:
            row |= {"status": CREATED, "next_attempt_at": None}
        elif result.status == FAILED or claim.attempt >= settings.ingest_helpdesk_max_attempts:
            row |= {"status": FAILED, "next_attempt_at": None}
            log.warning(
                "an escalation could not be sent to the helpdesk",
                extra={"escalation": claim.escalation_id, "error": result.error},
            )
        else:
            delay = helpdesk.retry_delay_s(
                claim.attempt,
                settings.ingest_helpdesk_retry_base_s,
                settings.ingest_helpdesk_retry_max_s,
            )
            row |= {"status": PENDING, "next_attempt_at": now + timedelta(seconds=delay)}
        rows.append(row)
    if rows:
        await escalations_store.record_outcomes(session, rows)


def _settings(runtime: Runtime) -> IngestSettings:
    settings = runtime.settings
    assert isinstance(settings, IngestSettings)
    return settings
