"""Referrals' background loops (CONVENTIONS item 2: every service's ``WORKERS``)."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.kit.app import Runtime, Worker
from afterglow.kit.polling import PollingWorker, in_one_transaction
from afterglow.referrals.deps import deps_of


async def confirm_conversions(runtime: Runtime) -> None:
    """Confirm conversions whose return window has passed. Time comes from the runtime's
    clock, so tests move a ManualClock instead of waiting 30 days."""
    svc = deps_of(runtime).referrals
    settings = svc.settings

    async def confirm_round(session: AsyncSession, now: datetime) -> int:
        return await svc.confirm_due(session, settings.referrals_confirm_batch)

    await PollingWorker(
        "referral-confirmations",
        in_one_transaction(runtime.sessionmaker, confirm_round),
        runtime.clock,
        settings.referrals_confirm_interval_s,
        batch=settings.referrals_confirm_batch,  # a full round: a backlog, keep draining
    ).run()


WORKERS: tuple[Worker, ...] = (confirm_conversions,)
