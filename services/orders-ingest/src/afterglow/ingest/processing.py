"""From stored deliveries to events, in batches, off the webhook's request path.

The receivers store a verified delivery as ``received`` and answer (see
:mod:`afterglow.ingest.group_commit`). This worker claims ``received`` deliveries with
``FOR UPDATE SKIP LOCKED`` (two processes never take the same one), normalizes them
and applies each (order book, order facts, outbox events, final status) in one
transaction per batch: the batch's work commits together or not at all, so a worker
killed midway leaves its deliveries ``received`` and they are claimed again. A payload
that cannot be normalized turns the delivery ``quarantined`` here, with the reason,
as the receivers did before.

One process at a time applies deliveries (a transaction-level advisory lock, tried,
not waited for): with two ingest replicas each claiming the oldest rows, one could
commit an order's fulfilment before the other committed the order itself, and the
fulfilled event would reach the journeys before the placed one (an e2e run with two
instances left a customer in onboarding for good). A batch is a set, so one applier
is not the bottleneck; the webhook path stays parallel.

The writer wakes the worker after each commit (an in-process event); a poll is the
backstop for deliveries stored by another process, or left by a crash.

A batch that fails for an unexpected reason (a bug on one payload, a deadlock with a
concurrent batch) is rolled back and its deliveries are applied one transaction each,
so one bad delivery cannot hold back the others: that one is ``failed``, with the
reason, for an operator to replay. A database error stops the round instead (the
supervisor restarts the loop with backoff): an outage is not the deliveries' fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import datetime
from typing import Any

from sqlalchemy import Row
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.events import tracing
from afterglow.events.context import event_context
from afterglow.ingest import domain, identity, intake, intake_store, requesters
from afterglow.ingest.deps import deps_of
from afterglow.ingest.group_commit import RECEIVED
from afterglow.ingest.payloads import parse_payload
from afterglow.ingest.settings import IngestSettings
from afterglow.kit.app import Runtime
from afterglow.kit.errors import AppError

log = logging.getLogger(__name__)

FAILED = "failed"
# The advisory lock key of "applying stored deliveries" (any 64-bit constant of ours).
APPLIER_LOCK = 0x61676C6F77_01  # "aglow" 1
BUSY = -1  # a round found another process applying
BUSY_RETRY_S = 0.05  # ... and tries again this soon: what this process stored waits
# No webhook request arrived for this long: the burst is over, a full round may run.
QUIET_S = 0.05
DEFER_STEP_S = 0.02  # how often a deferred round looks again


def wakeup_of(runtime: Runtime) -> asyncio.Event:
    """Set by the writer after a commit; awaited by the worker between rounds."""
    return deps_of(runtime).processing_wakeup


async def processing_worker(runtime: Runtime) -> None:
    """Background loop (create_service_app workers=): rounds until nothing is left,
    then sleep until woken or the poll interval passes."""
    settings = _settings(runtime)
    wakeup = wakeup_of(runtime)
    while True:
        busy = await _answers_first(runtime, settings.ingest_process_defer_s)
        wakeup.clear()  # before the round: a commit during it wakes the next one
        # Requests still waiting after the deferral, or still arriving: a short round.
        # A delivery costs ~5-10 ms of CPU here; a full round (200) between deferrals
        # of 0.5 s took ~80% of the one event loop from the senders, who then waited
        # (1,000/s offered: 620/s answered, p99 850 ms). The backlog is stored; it
        # drains at full batches once the burst is over.
        batch = settings.ingest_process_busy_batch if busy else settings.ingest_process_batch
        claimed = await process_received(runtime, batch)
        if claimed == BUSY:
            await asyncio.sleep(BUSY_RETRY_S)
        elif claimed < batch:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(settings.ingest_process_poll_s):
                    await wakeup.wait()


async def _answers_first(runtime: Runtime, max_defer_s: float) -> bool:
    """While webhook requests of this process wait for their commit, the round waits
    (at most ``max_defer_s``): the two share one CPU, and in a burst the senders'
    answers matter more than events a moment sooner. True when requests still wait,
    or kept arriving (a burst under way): the round is then a short one."""
    writer = deps_of(runtime).writer
    if max_defer_s > 0:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + max_defer_s
        while writer.waiting > 0:
            if loop.time() >= deadline:
                return True
            await asyncio.sleep(DEFER_STEP_S)
    # Nobody waits, but at 1,000/s the writer is idle between most arrivals: a full
    # round (200 deliveries, seconds of the loop) started in such a gap held up every
    # request behind it (p99 164 ms). Not deferred (a steady load would otherwise
    # starve the processing), only shorter.
    return writer.arrived_within(QUIET_S)


async def process_received(runtime: Runtime, batch: int) -> int:
    """One round: claim up to ``batch`` received deliveries and apply them in one
    transaction. Returns how many were claimed, or ``BUSY``."""
    # Zendesk requesters known by id only are looked up first, outside the round's
    # transaction (afterglow.ingest.requesters): a slow helpdesk holds no lock.
    await requesters.prefetch(runtime, deps_of(runtime).requester_cache, batch)
    try:
        async with runtime.sessionmaker.begin() as session:
            if not await _applier(session):
                return BUSY  # another process is applying
            rows = await _claim(session, batch)
            await _apply_rows(runtime, session, rows)
        return len(rows)
    except DBAPIError as exc:
        if not _is_conflict(exc):
            raise
        log.info("a batch met a concurrent one (%s); applying one by one", type(exc).__name__)
    except Exception:
        log.exception("a batch of deliveries failed; applying them one by one")
    return await _one_by_one(runtime, batch)


async def _applier(session: AsyncSession) -> bool:
    """Whether this transaction is the one applier now (released at its end)."""
    return await intake_store.try_lock_applier(session, APPLIER_LOCK)


async def _claim(session: AsyncSession, batch: int) -> list[Row[Any]]:
    # Oldest first, so what a shop said first (order created) is applied first.
    return await intake_store.lock_oldest_in_status(session, RECEIVED, batch)


async def _apply_rows(runtime: Runtime, session: AsyncSession, rows: list[Row[Any]]) -> None:
    """Normalize the claimed deliveries, record the customer links their orders show
    and resolve their tickets to customers (one statement per table for the whole
    batch), then apply each in order."""
    if not rows:
        return
    with tracing.batch_span("apply deliveries", lambda: {"afterglow.deliveries": len(rows)}):
        ready: list[tuple[Row[Any], domain.Normalized]] = []
        for row in rows:
            normalized = await _normalize_one(session, row)
            if normalized is not None:
                ready.append((row, normalized))
        items = [(str(row._mapping["tenant_id"]), n) for row, n in ready]
        cache = deps_of(runtime).requester_cache
        cut = requesters.first_unseen(cache, items)
        if cut is not None:
            # A Zendesk ticket stored while the lookups ran: it and what follows stay
            # received (in order) for the next round, at once, which looks it up first.
            ready, items = ready[:cut], items[:cut]
            wakeup_of(runtime).set()
        requesters.enrich(cache, items)
        await identity.link_and_resolve(session, items, runtime.clock.now())
        for row, normalized in ready:
            # The webhook's trace goes on: the events emitted here carry it.
            with _delivery_span(row):
                await _apply_one(runtime, session, row, normalized)


def _delivery_span(row: Row[Any]) -> contextlib.AbstractContextManager[None]:
    d = row._mapping
    if not tracing.enabled():
        return event_context(None, d["traceparent"])  # off: no span, its name unbuilt
    return tracing.continued(
        f"apply delivery {d['platform']} {d['topic']}",
        d["traceparent"],
        attributes={"afterglow.delivery.id": str(d["id"]), "afterglow.tenant": str(d["tenant_id"])},
    )


async def _normalize_one(session: AsyncSession, row: Row[Any]) -> domain.Normalized | None:
    """The delivery's normalized content; None when it was quarantined instead."""
    d = row._mapping
    did, tenant_id, platform = str(d["id"]), str(d["tenant_id"]), str(d["platform"])
    try:
        payload = parse_payload(bytes(d["body"]), platform)
        return await intake.normalize(session, tenant_id, platform, str(d["topic"]), payload)
    except (domain.NormalizationError, AppError) as exc:
        reason = (
            intake.quarantine_reason(exc)
            if isinstance(exc, domain.NormalizationError)
            else str(exc)
        )
        await intake_store.set_delivery_status(session, did, intake.QUARANTINED, reason[:1000])
        intake.QUARANTINED_TOTAL.labels(platform).inc()
        return None


async def _apply_one(
    runtime: Runtime, session: AsyncSession, row: Row[Any], normalized: domain.Normalized
) -> None:
    d = row._mapping
    did, tenant_id, platform = str(d["id"]), str(d["tenant_id"]), str(d["platform"])
    received_at: datetime = d["received_at"]
    if normalized.stored_body is not None:
        # customers/redact: kept without the contact data it asks us to forget.
        await intake_store.replace_delivery_body(session, did, normalized.stored_body)
    await intake.apply(
        session,
        runtime.outbox,
        runtime.tables,
        tenant_id=tenant_id,
        delivery_id=did,
        platform=platform,
        dedupe_key=str(d["dedupe_key"]),
        normalized=normalized,
        received_at=received_at,
    )


async def _one_by_one(runtime: Runtime, batch: int) -> int:
    done = 0
    for _ in range(batch):
        row = None
        try:
            async with runtime.sessionmaker.begin() as session:
                rows = await _claim(session, 1) if await _applier(session) else []
                if not rows:
                    return done
                row = rows[0]
                await _apply_rows(runtime, session, rows)
        except DBAPIError as exc:
            if not _is_conflict(exc):
                raise
            continue  # claimed again on a next round
        except Exception as exc:
            if row is None:
                raise
            log.exception("a delivery could not be applied; marked failed")
            async with runtime.sessionmaker.begin() as session:
                await intake_store.move_delivery_status(
                    session,
                    row.id,
                    from_status=RECEIVED,
                    to_status=FAILED,
                    last_error=f"{type(exc).__name__}: {exc}"[:1000],
                )
        done += 1
    return done


def _is_conflict(exc: DBAPIError) -> bool:
    """A deadlock or serialization failure with a concurrent batch: worth retrying."""
    return getattr(exc.orig, "sqlstate", None) in ("40P01", "40001") or "deadlock" in str(exc)


def _settings(runtime: Runtime) -> IngestSettings:
    settings = runtime.settings
    assert isinstance(settings, IngestSettings)
    return settings
