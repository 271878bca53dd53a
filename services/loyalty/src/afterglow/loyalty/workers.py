"""The background worker: pending -> available, expiry, expiry notices, tier reviews.

Due accounts are found from partial indexes, then each is handled in its own short
transaction that locks the account row with ``FOR UPDATE SKIP LOCKED``: replicas share
the work, and an account busy with a redemption is simply picked up on the next pass.
"""

from __future__ import annotations

from datetime import datetime

from afterglow.events import derived_event_id
from afterglow.kit.app import Runtime, Worker
from afterglow.kit.polling import PollingWorker
from afterglow.loyalty import domain, store
from afterglow.loyalty.settings import LoyaltySettings


async def process_account(runtime: Runtime, tenant: str, customer: str, now: datetime) -> bool:
    """Bring one account up to ``now``. False when another replica holds it."""
    async with runtime.sessionmaker.begin() as session:
        rules = await store.load_rules(session, tenant)
        account = await store.lock_account(
            session, tenant, customer, now, rules, create=False, skip_locked=True
        )
        if account is None:
            return False
        wallet = await store.load_wallet(session, account)
        entries: list[domain.Entry] = []
        for lot in list(wallet.lots):
            entries += wallet.release(lot, rules, now)
        entries += wallet.expire(now)
        await store.persist(session, runtime.outbox, account, wallet, entries, now)
        candidates = [lot for lot in wallet.lots if lot.notify_at and lot.notify_at <= now]
        fresh = await store.unnotified_lots(session, [lot.id for lot in candidates])
        soon = [
            lot
            for lot in candidates
            if lot.id in fresh and lot.state == "available" and lot.remaining > 0
        ]
        if soon:
            first = min(lot.expires_at for lot in soon if lot.expires_at)
            # Derived from the lots, so a retried pass asks for the same message.
            request_id = "loyalty:points_expiring:" + derived_event_id(
                tenant, customer, *sorted(lot.id for lot in soon)
            )
            await runtime.outbox.add(
                session,
                store.message(
                    account,
                    "points_expiring",
                    request_id,
                    {
                        "points_expiring": sum(lot.remaining for lot in soon),
                        "expires_on": first.date().isoformat(),
                        "expires_at": first.isoformat(),
                        "points_balance": wallet.spendable,
                    },
                ),
            )
            await store.mark_notified(session, [lot.id for lot in soon], now)
        if (account.tier_review_at is not None and account.tier_review_at <= now) or entries:
            await store.refresh_tier(
                session, runtime.outbox, rules, account, now, f"review:{now.isoformat()}"
            )
        return True


async def run_once(runtime: Runtime, now: datetime | None = None) -> int:
    """One pass over up to ``loyalty_worker_batch`` due accounts; how many it handled.

    Not one transaction for the pass: each account has its own (process_account), so
    a redemption waits for one account's pass, never for a whole round's."""
    settings = runtime.settings
    limit = settings.loyalty_worker_batch if isinstance(settings, LoyaltySettings) else 200
    now = now or runtime.clock.now()
    async with runtime.sessionmaker() as session:
        due = await store.due_accounts(session, now, limit)
    done = 0
    for tenant, customer in due:
        done += await process_account(runtime, tenant, customer, now)
    return done


async def release_and_expire(runtime: Runtime) -> None:
    """The loop: a pass every ``loyalty_worker_interval_s``, at once again after a full
    one (a backlog keeps draining)."""
    settings = runtime.settings
    interval = settings.loyalty_worker_interval_s if isinstance(settings, LoyaltySettings) else 5.0
    batch = settings.loyalty_worker_batch if isinstance(settings, LoyaltySettings) else 200

    async def loyalty_round(now: datetime) -> int:
        return await run_once(runtime, now)

    await PollingWorker("loyalty-worker", loyalty_round, runtime.clock, interval, batch=batch).run()


# The service's background loops (app.py starts each, supervised, in the worker role).
WORKERS: tuple[Worker, ...] = (release_and_expire,)
