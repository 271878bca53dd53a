"""The background worker: pending -> available, expiry, expiry notices, tier reviews.

Due accounts are found from partial indexes, then each is handled in its own short
transaction that locks the account row with ``FOR UPDATE SKIP LOCKED``: replicas share
the work, and an account busy with a redemption is simply picked up on the next pass.
"""

from __future__ import annotations

from datetime import datetime

from afterglow.kit.app import Runtime, Worker
from afterglow.kit.polling import PollingWorker
from afterglow.loyalty import store
from afterglow.loyalty.deps import deps_of
from afterglow.loyalty.settings import LoyaltySettings


async def process_account(runtime: Runtime, tenant: str, customer: str, now: datetime) -> bool:
    """Bring one account up to ``now`` in its own transaction. False when another
    replica holds it."""
    async with runtime.sessionmaker.begin() as session:
        return await deps_of(runtime).loyalty.catch_up(session, tenant, customer, now)


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
