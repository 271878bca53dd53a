"""From stored deliveries to events, in batches, off the webhook's request path.

The receivers store a verified delivery as ``received`` and answer (see
:mod:`afterglow.ingest.group_commit`). This worker claims ``received`` deliveries with
``FOR UPDATE SKIP LOCKED`` (two processes never take the same one), normalizes them
in memory and applies them (order book, order facts, outbox events, final status) in
one transaction per batch, in sets: one statement per table for the batch
(:mod:`afterglow.ingest.batch`). The batch's work commits together or not at all, so a
worker killed midway leaves its deliveries ``received`` and they are claimed again. A
payload that cannot be normalized turns the delivery ``quarantined`` here, with the
reason, as the receivers did before; the rest of its batch applies.

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
with the one-by-one statements of :func:`afterglow.ingest.intake.apply`,
so one bad delivery cannot hold back the others: that one is ``failed``, with the
reason, for an operator to replay. A database error stops the round instead (the
supervisor restarts the loop with backoff): an outage is not the deliveries' fault.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
from typing import Any

from sqlalchemy import Row
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.events import tracing
from afterglow.ingest import batch, domain, identity, intake, intake_store, requesters
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
YIELD_EVERY = 20  # deliveries normalized between two turns of the event loop


def wakeup_of(runtime: Runtime) -> asyncio.Event:
    """Set by the writer after a commit; awaited by the worker between rounds."""
    return deps_of(runtime).processing_wakeup


async def processing_worker(runtime: Runtime) -> None:
    """Background loop (create_service_app workers=): rounds until nothing is left,
    then sleep until woken or the poll interval passes."""
    settings = _settings(runtime)
    wakeup = wakeup_of(runtime)
    writer = deps_of(runtime).writer
    last_total = writer.stored_total
    while True:
        pace = await _pace(runtime, settings.ingest_process_defer_s)
        wakeup.clear()  # before the round: a commit during it wakes the next one
        stored, last_total = writer.stored_total - last_total, writer.stored_total
        size = _round_size(settings, pace, stored=stored)
        claimed = await process_received(runtime, size)
        if claimed == BUSY:
            await asyncio.sleep(BUSY_RETRY_S)
        elif claimed < size:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(settings.ingest_process_poll_s):
                    await wakeup.wait()
                    # Woken by one commit: the deliveries committed in the next moment
                    # join its round. A round's statements cost the same for one
                    # delivery as for ten, and at 50 orders/s each round held one.
                    await asyncio.sleep(settings.ingest_process_linger_s)


class Pace(enum.Enum):
    """How webhooks arrive at this process, as the round about to run sees them."""

    QUIET = "quiet"  # none lately
    STEADY = "steady"  # they keep coming, and their commits keep up
    BURST = "burst"  # requests waited for their commit all through the deferral


def _round_size(settings: IngestSettings, pace: Pace, *, stored: int) -> int:
    """How many deliveries the next round claims. ``stored``: how many this process
    stored since the previous round began (one cycle of arrivals)."""
    if pace is Pace.QUIET:
        return settings.ingest_process_batch  # drain at full rounds
    if pace is Pace.BURST:
        # A short round. A full one (200) between deferrals of 0.5 s took ~80% of the
        # one event loop from the senders, who then waited (1,000/s offered: 620/s
        # answered, p99 850 ms). The backlog is stored; it drains at full rounds once
        # the burst is over.
        return settings.ingest_process_busy_batch
    # Twice what arrived during the previous cycle: the rounds keep up with the
    # arrivals and drain a backlog as fast as they come. Capped at the short round, a
    # cycle on a loaded CPU (12 round trips, 40-400 ms at 200/s) took fewer than had
    # arrived: 25 a round capped the stack near 170 orders/s, deliveries waiting 2-5 s
    # (p99) to be processed.
    return max(settings.ingest_process_busy_batch, min(2 * stored, settings.ingest_process_batch))


async def _pace(runtime: Runtime, max_defer_s: float) -> Pace:
    """While webhook requests of this process wait for their commit, the round waits
    (at most ``max_defer_s``): the two share one CPU, and in a burst the senders'
    answers matter more than events a moment sooner."""
    writer = deps_of(runtime).writer
    if max_defer_s > 0:
        # Until the first moment nobody waits, not a look every 20 ms: at a steady
        # 200/s a request is in a commit most of the time (a commit takes a few ms, one
        # arrives every 5), and the looks missed the gaps between them, deferring
        # rounds up to 0.5 s each.
        try:
            async with asyncio.timeout(max_defer_s):
                await writer.until_idle()
        except TimeoutError:
            return Pace.BURST
    # Nobody waits, but at 1,000/s the writer is idle between most arrivals: a full
    # round (200 deliveries, seconds of the loop) started in such a gap held up every
    # request behind it (p99 164 ms). Not deferred (a steady load would otherwise
    # starve the processing), only sized to the arrivals.
    return Pace.STEADY if writer.arrived_within(QUIET_S) else Pace.QUIET


async def process_received(runtime: Runtime, size: int) -> int:
    """One round: claim up to ``size`` received deliveries and apply them in one
    transaction. Returns how many were claimed, or ``BUSY``."""
    # Zendesk requesters known by id only are looked up first, outside the round's
    # transaction (afterglow.ingest.requesters): a slow helpdesk holds no lock.
    looked_up = await requesters.prefetch(runtime, deps_of(runtime).requester_cache, size)
    try:
        async with runtime.sessionmaker.begin() as session:
            rows = await _claim_as_applier(session, size)
            if rows is None:
                return BUSY  # another process is applying
            await _apply_rows(runtime, session, rows, looked_up=looked_up)
        return len(rows)
    except DBAPIError as exc:
        if not _is_conflict(exc):
            raise
        log.info("a batch met a concurrent one (%s); applying one by one", type(exc).__name__)
    except batch.ConcurrentOrder:
        log.info("an order of the batch was inserted concurrently; applying one by one")
    except Exception:
        log.exception("a batch of deliveries failed; applying them one by one")
    return await process_one_by_one(runtime, size)


async def _claim_as_applier(session: AsyncSession, batch: int) -> list[Row[Any]] | None:
    """Up to ``batch`` received deliveries, oldest first (what a shop said first, order
    created, is applied first), locked; None when this transaction is not the one
    applier now (the applier's lock is released at the transaction's end)."""
    return await intake_store.claim_as_applier(session, APPLIER_LOCK, RECEIVED, batch)


async def _apply_rows(
    runtime: Runtime,
    session: AsyncSession,
    rows: list[Row[Any]],
    *,
    in_sets: bool = True,
    looked_up: bool = True,
) -> None:
    """Normalize the claimed deliveries in memory, record the customer links their
    orders show and resolve their tickets to customers (one statement per table for
    the whole batch), then apply them in order: in sets (:mod:`afterglow.ingest.batch`),
    or with ``in_sets`` False each with its own statements (the fallback's path)."""
    if not rows:
        return
    with tracing.batch_span("apply deliveries", lambda: {"afterglow.deliveries": len(rows)}):
        claimed = []
        for n, row in enumerate(rows, 1):
            claimed.append(_normalized(batch.Delivery.of(row)))
            if n % YIELD_EVERY == 0:
                # Normalizing is pure CPU (~0.4 ms a delivery): a full round's would hold
                # this process's webhook requests for ~80 ms at once.
                await asyncio.sleep(0)
        normalized = [d for d in claimed if d.normalized is not None]
        items = [(d.tenant_id, d.normalized) for d in normalized if d.normalized is not None]
        cache = deps_of(runtime).requester_cache
        cut = requesters.first_unseen(cache, items, looked_up=looked_up)
        if cut is not None:
            # A Zendesk ticket not looked up yet: it and what follows stay received (in
            # order) for the next round, at once, which looks it up first.
            # Those quarantined are recorded wherever they are, as before.
            at = claimed.index(normalized[cut])
            claimed = claimed[:at] + [d for d in claimed[at:] if d.quarantine_reason]
            items = items[:cut]
            wakeup_of(runtime).set()
        requesters.enrich(cache, items)
        await identity.link_and_resolve(session, items, runtime.clock.now())
        if in_sets:
            await _apply_in_sets(runtime, session, claimed)
            return
        for d in claimed:
            await _apply_alone(runtime, session, d)


def _normalized(d: batch.Delivery) -> batch.Delivery:
    """Normalized in memory, or quarantined with the reason; a tracker's update (whose
    normalizing reads the order book) is left for its turn."""
    if d.platform in intake.READS_ORDER_BOOK:
        return d
    try:
        payload = parse_payload(d.body, d.platform)
        d.normalized = intake.normalize_offline(d.platform, d.topic, payload)
    except (domain.NormalizationError, AppError) as exc:
        d.quarantine_reason = _reason(exc)
        intake.QUARANTINED_TOTAL.labels(d.platform).inc()
    return d


def _reason(exc: Exception) -> str:
    if isinstance(exc, domain.NormalizationError):
        return intake.quarantine_reason(exc)
    return str(exc)


async def _apply_in_sets(
    runtime: Runtime, session: AsyncSession, deliveries: list[batch.Delivery]
) -> None:
    """Runs of common deliveries as sets; any other alone, in its place, after the
    set before it is written (it must see that set's writes, as one by one)."""
    run: list[batch.Delivery] = []
    for d in deliveries:
        if batch.is_common(d):
            run.append(d)
            continue
        await batch.apply_set(session, runtime.outbox, run)
        run = []
        await _apply_alone(runtime, session, d)
    await batch.apply_set(session, runtime.outbox, run)


async def _apply_alone(runtime: Runtime, session: AsyncSession, d: batch.Delivery) -> None:
    """One delivery with the one-by-one statements of :func:`intake.apply`."""
    if d.normalized is None and d.quarantine_reason is None:
        try:
            payload = parse_payload(d.body, d.platform)
            d.normalized = await intake.normalize(
                session, d.tenant_id, d.platform, d.topic, payload
            )
        except (domain.NormalizationError, AppError) as exc:
            d.quarantine_reason = _reason(exc)
            intake.QUARANTINED_TOTAL.labels(d.platform).inc()
    if d.normalized is None:
        reason = (d.quarantine_reason or "")[:1000]
        await intake_store.set_delivery_status(session, d.id, intake.QUARANTINED, reason)
        return
    with batch.delivery_span(d):
        if d.normalized.stored_body is not None:
            # customers/redact: kept without the contact data it asks us to forget.
            await intake_store.replace_delivery_body(session, d.id, d.normalized.stored_body)
        await intake.apply(
            session,
            runtime.outbox,
            runtime.tables,
            tenant_id=d.tenant_id,
            delivery_id=d.id,
            platform=d.platform,
            dedupe_key=d.dedupe_key,
            normalized=d.normalized,
            received_at=d.received_at,
        )


async def process_one_by_one(runtime: Runtime, size: int) -> int:
    """Up to ``size`` received deliveries, one transaction each, with the one-by-one
    statements (the fallback of a batch that failed: a delivery that still fails is
    ``failed``, the others apply). Returns how many were claimed."""
    # The batch may have found requesters to look up: each delivery applies alone,
    # first of its round, so they are looked up now.
    await requesters.prefetch(runtime, deps_of(runtime).requester_cache, size)
    done = 0
    for _ in range(size):
        row = None
        try:
            async with runtime.sessionmaker.begin() as session:
                rows = await _claim_as_applier(session, 1) or []
                if not rows:
                    return done
                row = rows[0]
                await _apply_rows(runtime, session, rows, in_sets=False)
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
