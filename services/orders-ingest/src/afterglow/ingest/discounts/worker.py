"""The worker that makes the platform calls for reward codes.

A round leases due rows (``FOR UPDATE SKIP LOCKED``, a short transaction that counts
the attempt), makes the calls with no transaction open, then applies each result in
its own transaction that checks the lease is still ours. Calls to different shops run
concurrently; one shop's calls run one after another, within its rate limit. A process
killed mid-call loses nothing: the lease runs out, the row is claimed again, and the
new attempt looks the code up in the shop before creating it (the shop may have
created it before the answer was lost), so no shop ever holds a code twice.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from datetime import datetime, timedelta
from typing import Any

from afterglow.events import CloudEvent, EventData, derived_event_id
from afterglow.events.catalog import (
    DiscountCreated,
    DiscountFailed,
    DiscountRevoked,
    MessageRequested,
)
from afterglow.ingest.deps import deps_of
from afterglow.ingest.discounts import domain, store
from afterglow.ingest.discounts.domain import PlatformError
from afterglow.ingest.discounts.platforms import Shops
from afterglow.ingest.intake import SOURCE
from afterglow.ingest.models import PlatformConnection, ShopDiscount
from afterglow.ingest.settings import IngestSettings
from afterglow.kit.app import Runtime
from afterglow.kit.polling import PollingWorker

log = logging.getLogger(__name__)


def shops_of(runtime: Runtime) -> Shops:
    """This process's platform caller (one bucket per shop, shared by every round)."""
    return deps_of(runtime).discount_shops


async def discount_worker(runtime: Runtime) -> None:
    """Background loop (create_service_app workers=): rounds until nothing is due."""
    settings = _settings(runtime)

    async def discount_round(now: datetime) -> int:
        return await run_due(runtime)

    # Not one transaction: the shops' APIs are called between the claim's and the results'.
    await PollingWorker(
        "ingest-discounts",
        discount_round,
        runtime.clock,
        settings.ingest_discount_poll_s,
        batch=settings.ingest_discount_batch,
    ).run()


async def run_due(runtime: Runtime) -> int:
    """One round; returns how many rows were claimed."""
    settings = _settings(runtime)
    lease_s = 2 * settings.ingest_discount_timeout_s + 5
    now = runtime.clock.now()
    async with runtime.sessionmaker.begin() as session:
        await store.expire_due(session, now)
        claims = await store.claim_due(session, now, settings.ingest_discount_batch, lease_s)
        conns = await store.connections(session, {c.tenant_id for c in claims})
    by_shop: dict[str, list[store.Claim]] = defaultdict(list)
    for claim in claims:
        by_shop[claim.tenant_id].append(claim)
    await asyncio.gather(
        *(_run_shop(runtime, mine, conns.get(tenant, {})) for tenant, mine in by_shop.items())
    )
    return len(claims)


async def _run_shop(
    runtime: Runtime, claims: list[store.Claim], conns: dict[str, PlatformConnection]
) -> None:
    for claim in claims:
        try:
            await _run_one(runtime, claim, conns)
        except Exception:
            # The row stays leased, so it is tried again when the lease runs out.
            log.exception("applying a discount call failed", extra={"code": claim.code})


async def _run_one(
    runtime: Runtime, claim: store.Claim, conns: dict[str, PlatformConnection]
) -> None:
    settings = _settings(runtime)
    shops = shops_of(runtime)
    platform = claim.platform or domain.choose_platform(set(conns))
    conn = conns.get(platform) if platform else None
    try:
        if conn is None:
            raise PlatformError(
                "no shop connection that can hold discount codes (shopify, woocommerce "
                "or bigcommerce) for this tenant",
                permanent=True,
            )
        async with asyncio.timeout(settings.ingest_discount_timeout_s):
            if claim.state == domain.CREATING:
                # After a failed attempt the shop may hold the code already (created,
                # answer lost): find it before creating a second one.
                found = await shops.find(conn, claim.discount) if claim.attempts > 1 else None
                pid = found or await shops.create(conn, claim.discount)
            else:
                await shops.disable(conn, claim.discount)
                pid = claim.discount.platform_discount_id
    except TimeoutError:
        limit = settings.ingest_discount_timeout_s
        await _failed(
            runtime,
            claim,
            platform,
            PlatformError(f"the shop did not answer within {limit:g} s", permanent=False),
        )
    except PlatformError as exc:
        await _failed(runtime, claim, platform, exc)
    except Exception as exc:
        # An answer of an unexpected shape (or a bug): retried, and counted, so that it
        # ends in discount.failed after the last attempt instead of retrying forever.
        log.exception("discount call raised", extra={"code": claim.code})
        reason = f"{type(exc).__name__}: {exc}"
        await _failed(runtime, claim, platform, PlatformError(reason, permanent=False))
    else:
        await _succeeded(runtime, claim, platform or "", pid)


async def _succeeded(runtime: Runtime, claim: store.Claim, platform: str, pid: str | None) -> None:
    now = runtime.clock.now()
    async with runtime.sessionmaker.begin() as session:
        row = await store.leased(session, claim)
        if row is None:
            log.info("discount result dropped: lease lost", extra={"code": claim.code})
            return
        row.platform, row.last_error, row.updated_at = platform, None, now
        if claim.state == domain.DISABLING:
            row.state, row.next_attempt_at = domain.DISABLED, None
            reason = row.revoke_reason if row.revoke_reason in ("clawback", "expired") else "manual"
            revoked = DiscountRevoked(
                code=row.code,
                reference=row.reference,
                reason=reason,
                revoked_at=now,
            )
            await runtime.outbox.add(session, _event(row, revoked, "revoked"))
            return
        assert pid is not None
        row.platform_discount_id = pid
        created = DiscountCreated(
            code=row.code,
            reference=row.reference,
            platform=platform,
            platform_discount_id=pid,
            created_at=now,
        )
        events: list[CloudEvent[Any]] = [_event(row, created, "created")]
        if row.revoke_reason is not None:
            # Clawed back while it was being created: disable it now, announce nothing.
            row.state, row.attempts, row.next_attempt_at = domain.DISABLING, 0, now
        else:
            row.state, row.attempts, row.next_attempt_at = domain.ACTIVE, 0, None
            if row.announce is not None:
                # The issuer's announcement, released with the proof that the code exists.
                msg = MessageRequested.model_validate(row.announce)
                events.append(
                    CloudEvent.new(
                        msg,
                        tenant_id=row.tenant_id,
                        subject=row.customer_id,
                        source=row.issuer,
                        id=derived_event_id(row.issuer, "announce", row.tenant_id, row.code),
                    )
                )
        row.announce = None
        await runtime.outbox.add(session, *events)


async def _failed(
    runtime: Runtime, claim: store.Claim, platform: str | None, exc: PlatformError
) -> None:
    settings = _settings(runtime)
    now = runtime.clock.now()
    reason = str(exc)[:500]
    async with runtime.sessionmaker.begin() as session:
        row = await store.leased(session, claim)
        if row is None:
            return
        row.last_error, row.updated_at, row.platform = reason, now, platform
        extra = {"tenant": row.tenant_id, "code": row.code, "attempt": claim.attempts}
        if exc.permanent or claim.attempts >= settings.ingest_discount_max_attempts:
            log.error("discount call failed for good: %s", reason, extra=extra)
            row.next_attempt_at = None
            if claim.state == domain.CREATING:
                # The customer is never told of it; the issuer is, and may re-credit.
                row.state, row.announce = domain.FAILED, None
                failed = DiscountFailed(
                    code=row.code, reference=row.reference, reason=reason, failed_at=now
                )
                await runtime.outbox.add(session, _event(row, failed, "failed"))
            # A disable that failed for good stays ``disabling`` with its error shown
            # (GET /v1/platform-actions): the code may still be live in the shop.
            return
        delay = domain.retry_delay_s(
            claim.attempts,
            settings.ingest_discount_retry_base_s,
            settings.ingest_discount_retry_max_s,
        )
        if exc.retry_after_s is not None:
            delay = max(delay, exc.retry_after_s)
        row.next_attempt_at = now + timedelta(seconds=delay)
        log.warning("discount call failed, will retry: %s", reason, extra=extra)


def _event(row: ShopDiscount, data: EventData, what: str) -> CloudEvent[Any]:
    return CloudEvent.new(
        data,
        tenant_id=row.tenant_id,
        subject=row.customer_id,
        source=SOURCE,
        id=derived_event_id(SOURCE, f"discount.{what}", row.tenant_id, row.code),
    )


def _settings(runtime: Runtime) -> IngestSettings:
    settings = runtime.settings
    assert isinstance(settings, IngestSettings)
    return settings
