"""Background loops of the journey engine: the durable timer loop.

Each round claims due timers with ``FOR UPDATE SKIP LOCKED`` in one transaction, applies
them through the same pure engine as the event handlers, marks them fired and commits.
Two replicas never fire one timer twice (a claimed row is skipped by the other), and a
replica killed mid-round loses nothing: its transaction dies, the locks go, and the
timers are still pending for the next claimant.
"""

from __future__ import annotations

import asyncio
import logging
from collections import defaultdict
from datetime import datetime
from typing import Any

from prometheus_client import Counter, Histogram
from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.journeys import domain as d
from afterglow.journeys import store
from afterglow.journeys.models import JourneyInstance, JourneyTimer
from afterglow.journeys.settings import Settings
from afterglow.kit.app import Runtime, Worker

log = logging.getLogger(__name__)

TIMERS_FIRED = Counter("afterglow_journey_timers_fired_total", "Journey timers fired")
# How late a due timer is when a round claims it (now - due_at). A timer claimed but
# left for the next round (its customer held elsewhere) is observed again, later: what
# the alert on timers more than five minutes late (deploy/) must see. A stopped timer
# loop observes nothing; readiness and the fired rate on the dashboard show that.
TIMER_LATENESS = Histogram(
    "afterglow_journey_timer_lateness_seconds",
    "Seconds between a journey timer's due time and a timer round claiming it",
    buckets=(1, 5, 15, 30, 60, 120, 300, 600, 1800, 3600, 4 * 3600),
)


async def claim_due(
    session: AsyncSession, now: datetime, batch: int, tenant_id: str | None = None
) -> list[Any]:
    """Lock up to ``batch`` due, pending timers; rows another transaction holds are
    skipped, not waited for. The locks last until the caller's transaction ends."""
    q = (
        select(
            JourneyTimer.id,
            JourneyTimer.tenant_id,
            JourneyTimer.customer_id,
            JourneyTimer.instance_id,
            JourneyTimer.due_at,
        )
        .where(JourneyTimer.state == "pending", JourneyTimer.due_at <= now)
        .order_by(JourneyTimer.due_at)
        .limit(batch)
        .with_for_update(skip_locked=True)
    )
    if tenant_id is not None:
        q = q.where(JourneyTimer.tenant_id == tenant_id)
    return list((await session.execute(q)).all())


async def fire_due_timers(runtime: Runtime, batch: int) -> int:
    """One round: returns how many timers were fired."""
    now = runtime.clock.now()
    async with runtime.sessionmaker.begin() as session:
        rows = await claim_due(session, now, batch)
        by_customer: dict[tuple[str, str], list[tuple[str, str]]] = defaultdict(list)
        for r in rows:
            by_customer[(r.tenant_id, r.customer_id)].append((r.id, r.instance_id))
            TIMER_LATENESS.observe(max(0.0, (now - r.due_at).total_seconds()))
        fired = 0
        for (tenant, customer), timers in by_customer.items():
            fired += await _fire_for_customer(session, runtime, tenant, customer, timers, now)
        return fired


async def _fire_for_customer(
    session: AsyncSession,
    runtime: Runtime,
    tenant: str,
    customer: str,
    timers: list[tuple[str, str]],
    now: datetime,
) -> int:
    # Never wait here: a handler holding this customer wins, and the timers stay pending
    # (released when this transaction ends) for the next round.
    profile = await store.lock_profile(session, tenant, customer, now, skip_locked=True)
    if profile is None:
        return 0
    ids = sorted({iid for _, iid in timers})
    instances = {
        r.state["id"]: d.InstanceState.model_validate(r.state)
        for r in await session.execute(
            select(JourneyInstance.state)
            .where(JourneyInstance.tenant_id == tenant, JourneyInstance.id.in_(ids))
            .with_for_update(skip_locked=True)
        )
    }
    existing = set(
        (
            await session.scalars(
                select(JourneyInstance.id).where(
                    JourneyInstance.tenant_id == tenant, JourneyInstance.id.in_(ids)
                )
            )
        ).all()
    )
    writer = store.Writer(session, runtime.outbox, tenant, customer, now)
    fired = 0
    for timer_id, iid in timers:
        inst = instances.get(iid)
        if inst is None and iid in existing:
            continue  # held by someone else this instant: next round
        await session.execute(
            update(JourneyTimer)
            .where(JourneyTimer.id == timer_id, JourneyTimer.state == "pending")
            .values(state="fired", fired_at=now)
        )
        fired += 1
        TIMERS_FIRED.inc()
        if inst is None:
            continue
        j = await store.journey_version(session, tenant, inst.journey, inst.version)
        res = d.on_timer(j, inst, profile, timer_id, now)
        profile = d.note_actions(profile, [res], now)
        instances[iid] = res.state
        await writer.apply(j, res, profile)
    await store.save_profile(session, tenant, customer, profile, now)
    return fired


def journey_workers(runtime: Runtime) -> list[Worker]:
    settings = runtime.settings
    interval = settings.journeys_timer_poll_interval_s if isinstance(settings, Settings) else 1.0
    batch = settings.journeys_timer_batch if isinstance(settings, Settings) else 200

    async def timer_loop(rt: Runtime) -> None:
        while True:
            fired = await fire_due_timers(rt, batch)
            if fired < batch:
                await asyncio.sleep(interval)

    timer_loop.__name__ = "journey-timers"
    return [timer_loop]
