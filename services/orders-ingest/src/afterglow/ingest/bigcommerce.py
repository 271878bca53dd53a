"""BigCommerce's deferred fetch: its webhooks carry ids only, so the order is read from
the store's API, but never inside the webhook request. BigCommerce blocks a domain
whose success rate drops under 90% and deactivates a hook after 11 failed retries, so
a slow or down store API must not make us fail its webhooks: the receiver stores the
delivery as ``fetch_pending`` and answers at once, and this worker does the fetch.

A round claims due deliveries with ``FOR UPDATE SKIP LOCKED`` in a short transaction
that counts the attempt and leases the row (``next_attempt_at`` moves past the fetch
deadline), so two replicas never fetch one delivery at once and no transaction stays
open across the store's network calls. The fetches run concurrently; each result is
applied in its own transaction that locks the row again and checks the lease is still
ours, so the events, the order fact and ``processed`` commit together. A failed fetch
is retried with bounded exponential backoff; after the last attempt, or at once when
the order cannot be normalized, the delivery is ``failed`` with the reason. A process
killed mid-fetch loses nothing: the lease runs out and the delivery is claimed again.
"""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.events import tracing
from afterglow.ingest import domain, identity, intake, registry_store, store
from afterglow.ingest.models import Delivery, PlatformConnection
from afterglow.ingest.platforms import bigcommerce as bc
from afterglow.ingest.settings import IngestSettings
from afterglow.kit.app import Runtime
from afterglow.kit.outbound import check_destination
from afterglow.kit.polling import PollingWorker

log = logging.getLogger(__name__)

PLATFORM = "bigcommerce"
FETCH_PENDING = "fetch_pending"
FAILED = "failed"


@dataclass(frozen=True)
class Claim:
    """A delivery this worker leased: the lease is (attempts, lease_until)."""

    id: str
    tenant_id: str
    body: bytes
    attempts: int
    lease_until: datetime
    traceparent: str | None = None  # the webhook's trace, continued by the fetch


@dataclass(frozen=True)
class FetchFailure:
    reason: str
    permanent: bool


async def queue(
    session: AsyncSession,
    *,
    tenant_id: str,
    topic: str,
    dedupe_key: str,
    headers: dict[str, str],
    body: bytes,
    received_at: datetime,
) -> intake.Outcome:
    """Store a verified order webhook for the worker (due now); a repeat of the same
    ``hash`` is a duplicate, whatever state the first one is in."""
    did = await intake.store_delivery(
        session,
        tenant_id=tenant_id,
        platform=PLATFORM,
        topic=topic,
        dedupe_key=dedupe_key,
        headers=headers,
        body=body,
        received_at=received_at,
        status=FETCH_PENDING,
        next_attempt_at=received_at,
    )
    if did is None:
        return intake.Outcome(intake.delivery_id_for(tenant_id, PLATFORM, dedupe_key), "duplicate")
    return intake.Outcome(did, FETCH_PENDING)


def requeue(delivery: Delivery, now: datetime) -> None:
    """Replay: fetch again from the first attempt (the caller holds the row's lock)."""
    delivery.status = FETCH_PENDING
    delivery.attempts = 0
    delivery.next_attempt_at = now
    delivery.last_error = None


async def fetch_worker(runtime: Runtime) -> None:
    """Background loop (create_service_app workers=): rounds until nothing is due."""
    settings = _settings(runtime)

    async def fetch_round(now: datetime) -> int:
        return await fetch_due(runtime)

    # Not one transaction: the fetches run between the claim's and the results'.
    await PollingWorker(
        "ingest-bigcommerce-fetch",
        fetch_round,
        runtime.clock,
        settings.ingest_fetch_poll_interval_s,
        batch=settings.ingest_fetch_batch,
    ).run()


async def fetch_due(runtime: Runtime) -> int:
    """One round: claim due deliveries, fetch them concurrently, apply each result.
    Returns how many were claimed."""
    settings = _settings(runtime)
    # The lease outlives the fetch's deadline, so it only runs out on a dead worker.
    lease_s = 2 * settings.ingest_fetch_timeout_s
    async with runtime.sessionmaker.begin() as session:
        claims = await claim_due(session, runtime.clock.now(), settings.ingest_fetch_batch, lease_s)
    results = await asyncio.gather(
        *(_process(runtime, claim) for claim in claims), return_exceptions=True
    )
    for claim, result in zip(claims, results, strict=True):
        # The row stays leased, so it is retried when the lease runs out.
        if isinstance(result, Exception):
            log.error("applying a fetch failed", exc_info=result, extra={"delivery": claim.id})
    return len(claims)


async def claim_due(
    session: AsyncSession, now: datetime, batch: int, lease_s: float
) -> list[Claim]:
    """Lease up to ``batch`` due deliveries; rows another transaction holds are skipped,
    not waited for. Counting the attempt here means a fetch that kills its process
    still uses up an attempt."""
    rows = await store.lock_due_deliveries(session, status=FETCH_PENDING, now=now, batch=batch)
    if not rows:
        return []
    lease_until = now + timedelta(seconds=lease_s)
    await store.lease_deliveries(session, [r.id for r in rows], lease_until)
    return [
        Claim(r.id, r.tenant_id, r.body, r.attempts + 1, lease_until, r.traceparent) for r in rows
    ]


async def _process(runtime: Runtime, claim: Claim) -> None:
    # The webhook's trace goes on through the fetch: the events applied carry it.
    with tracing.continued(
        "fetch delivery bigcommerce",
        claim.traceparent,
        kind=tracing.SpanKind.INTERNAL,
        attributes={"afterglow.delivery.id": claim.id, "afterglow.tenant": claim.tenant_id},
    ):
        outcome = await _fetch_and_normalize(runtime, claim)
        if isinstance(outcome, FetchFailure):
            await _record_failure(runtime, claim, outcome)
        else:
            await _apply(runtime, claim, outcome)


async def _fetch_and_normalize(runtime: Runtime, claim: Claim) -> domain.Normalized | FetchFailure:
    settings = _settings(runtime)
    try:
        order_id = bc.bigcommerce_order_ref(_stored_payload(claim.body))
        async with asyncio.timeout(settings.ingest_fetch_timeout_s):
            order, products, refunds = await fetch_bigcommerce_order(
                runtime, claim.tenant_id, order_id
            )
        # The same cleaning and error mapping as a webhook's payload: an order of the
        # wrong shape fails for good, naming why, instead of being retried as an outage.
        with domain.normalization_errors():
            normalized = bc.normalize_bigcommerce_order(
                domain.clean_payload(order),
                domain.clean_payload(products),
                domain.clean_payload(refunds),
            )
        return domain.check_subjects(normalized)
    except domain.NormalizationError as exc:
        # The same order gives the same error on every attempt: fail now, naming the field.
        field = f" (field {exc.field})" if exc.field else ""
        return FetchFailure(f"normalization: {exc}{field}", permanent=True)
    except TimeoutError:
        limit = settings.ingest_fetch_timeout_s
        return FetchFailure(f"the store API did not answer within {limit:g} s", permanent=False)
    except Exception as exc:
        # Store API down, credentials or connection missing, or a bug: all worth retrying
        # (an operator can fix the connection meanwhile); the last attempt records it.
        return FetchFailure(f"{type(exc).__name__}: {exc}"[:500], permanent=False)


def _stored_payload(body: bytes) -> dict[str, Any]:
    try:
        payload = json.loads(body)
    except (ValueError, UnicodeDecodeError) as exc:
        raise domain.NormalizationError("the stored body is not JSON") from exc
    if not isinstance(payload, dict):
        raise domain.NormalizationError("the stored body is not a JSON object")
    return payload


async def fetch_bigcommerce_order(
    runtime: Runtime, tenant_id: str, order_id: str
) -> tuple[dict[str, Any], list[dict[str, Any]], list[dict[str, Any]]]:
    """BigCommerce webhooks carry ids only: read the order, its products and, when the
    order says some money went back, its refunds (each one a refund event)."""
    assert runtime.http is not None
    async with runtime.sessionmaker() as session:
        conn = await registry_store.connection(session, tenant_id, PLATFORM)
    if conn is None:
        raise LookupError("no BigCommerce connection for this tenant")
    # Checked before every request, not only when saved: a name may resolve elsewhere.
    await check_destination(
        conn.api_base_url, allow_private=runtime.settings.outbound_allow_private
    )
    headers = {"X-Auth-Token": conn.access_token, "Accept": "application/json"}
    base = f"{conn.api_base_url}/v2/orders/{order_id}"
    order = await runtime.http.get(base, headers=headers)
    order.raise_for_status()
    products = await runtime.http.get(f"{base}/products", headers=headers)
    products.raise_for_status()
    body = order.json()
    return body, products.json(), await fetch_bigcommerce_refunds(runtime, conn, body)


def has_refunds(order: dict[str, Any]) -> bool:
    """Refunded (4), partially refunded (14), or a refunded amount: worth one more call.
    Orders without refunds (most) cost no extra request."""
    try:
        refunded = float(order.get("refunded_amount") or 0)
    except (TypeError, ValueError):
        refunded = 0.0
    return int(order.get("status_id") or 0) in (4, 14) or refunded > 0


async def fetch_bigcommerce_refunds(
    runtime: Runtime, conn: PlatformConnection, order: dict[str, Any]
) -> list[dict[str, Any]]:
    """The order's refunds from the V3 payment actions API (``{"data": [...]}``)."""
    assert runtime.http is not None
    if not has_refunds(order):
        return []
    headers = {"X-Auth-Token": conn.access_token, "Accept": "application/json"}
    url = f"{conn.api_base_url}/v3/orders/{order.get('id')}/payment_actions/refunds"
    resp = await runtime.http.get(url, headers=headers)
    resp.raise_for_status()
    data = resp.json().get("data")
    return [r for r in data if isinstance(r, dict)] if isinstance(data, list) else []


async def _leased(session: AsyncSession, claim: Claim) -> Delivery | None:
    """The delivery, locked, if the lease is still ours: not replayed, not claimed again
    by another worker after our lease ran out."""
    return await store.delivery_if_leased(
        session,
        delivery_id=claim.id,
        status=FETCH_PENDING,
        attempts=claim.attempts,
        lease_until=claim.lease_until,
    )


async def _apply(runtime: Runtime, claim: Claim, normalized: domain.Normalized) -> None:
    """Events, order fact and ``processed`` in one transaction.

    The fact table applies as for any first delivery, so a re-fetch (replay) emits only
    what no delivery said yet; what this delivery said before is published again with
    its old ids, as every replay does, and downstream inboxes drop it."""
    async with runtime.sessionmaker.begin() as session:
        d = await _leased(session, claim)
        if d is None:
            log.info("fetch result dropped: lease lost", extra={"delivery": claim.id})
            return
        await identity.link_and_resolve(session, [(d.tenant_id, normalized)], d.received_at)
        emitted = await intake.emit(
            session,
            runtime.outbox,
            runtime.tables,
            tenant_id=d.tenant_id,
            delivery_id=d.id,
            platform=PLATFORM,
            dedupe_key=d.dedupe_key,
            normalized=normalized,
            received_at=d.received_at,
            ids_by_fact=True,
        )
        await intake.requeue_sent(session, runtime.tables, list(d.event_ids))
        d.event_ids = list(dict.fromkeys([*d.event_ids, *emitted.ids]))
        d.subjects = intake.merge_subjects(d.subjects, emitted.subjects)
        d.status = "processed"
        d.next_attempt_at = None
        d.last_error = None


async def _record_failure(runtime: Runtime, claim: Claim, failure: FetchFailure) -> None:
    settings = _settings(runtime)
    async with runtime.sessionmaker.begin() as session:
        d = await _leased(session, claim)
        if d is None:
            return
        d.last_error = failure.reason
        extra = {"delivery": d.id, "tenant": d.tenant_id, "attempt": claim.attempts}
        if failure.permanent or claim.attempts >= settings.ingest_fetch_max_attempts:
            d.status = FAILED
            d.next_attempt_at = None
            log.error("BigCommerce fetch failed for good: %s", failure.reason, extra=extra)
            return
        delay = domain.retry_delay_s(
            claim.attempts, settings.ingest_fetch_retry_base_s, settings.ingest_fetch_retry_max_s
        )
        d.next_attempt_at = runtime.clock.now() + timedelta(seconds=delay)
        log.warning("BigCommerce fetch failed, will retry: %s", failure.reason, extra=extra)


def _settings(runtime: Runtime) -> IngestSettings:
    settings = runtime.settings
    assert isinstance(settings, IngestSettings)
    return settings
