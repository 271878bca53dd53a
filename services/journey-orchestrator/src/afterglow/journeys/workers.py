"""Background loops of the journey engine: the durable timer loop.

Each round claims due timers with ``FOR UPDATE SKIP LOCKED`` in one transaction, applies
them through the same pure engine as the event handlers, marks them fired and commits,
reading and writing in sets (one statement per table per round, not per timer).
Two replicas never fire one timer twice (a claimed row is skipped by the other), and a
replica killed mid-round loses nothing: its transaction dies, the locks go, and the
timers are still pending for the next claimant.
"""

from __future__ import annotations

import logging
from datetime import datetime

from prometheus_client import Counter, Histogram
from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.events import Outbox
from afterglow.events.tracing import linked
from afterglow.journeys import engine as d
from afterglow.journeys import store
from afterglow.journeys.settings import Settings
from afterglow.kit.app import Runtime, Worker
from afterglow.kit.polling import PollingWorker, TransactionalRound, in_one_transaction

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


# The claim is a store statement (store.claim_due_timers); the name stays here for the
# tests and the bench that hold timers the way a round does.
claim_due = store.claim_due_timers


async def fire_due_timers(runtime: Runtime, batch: int, lane: store.Lane = store.Lane()) -> int:
    """One round in its own transaction (what the timer loop runs; tests step it)."""
    fire = in_one_transaction(runtime.sessionmaker, timer_round(runtime.outbox, batch, lane))
    return await fire(runtime.clock.now())


def timer_round(outbox: Outbox, batch: int, lane: store.Lane = store.Lane()) -> TransactionalRound:
    """One round, in sets: claim up to ``batch`` due timers (SKIP LOCKED), lock their
    customers' profiles and instances without waiting (a customer a consumer holds is
    skipped: its timers stay pending for the next round), load the timers and journey
    versions of the whole round with one query each, fire in memory in due order, and
    write each table once (store.Changes). Returns how many timers were fired."""

    async def fire_round(session: AsyncSession, now: datetime) -> int:
        rows = await store.claim_due_timers(session, now, batch, lane=lane)
        for r in rows:
            TIMER_LATENESS.observe(max(0.0, (now - r.due_at).total_seconds()))
        if not rows:
            return 0
        # Never wait here: a handler holding a customer wins.
        profiles = await store.lock_profiles(
            session, {(r.tenant_id, r.customer_id) for r in rows}, now, skip_locked=True
        )
        mine = [r for r in rows if (r.tenant_id, r.customer_id) in profiles]
        wanted = sorted({(r.tenant_id, r.instance_id) for r in mine})
        instances, held = await store.instances_by_id(session, wanted)
        # A timer moves an instance on the version it runs; which version is active
        # does not matter here, so that query is left out (no tenants passed).
        journeys = await store.tenant_journeys(
            session, (), ((i.tenant, i.state) for i in instances.values())
        )
        changes = store.Changes(outbox, now, await store.timers_of(session, instances.keys()))
        locked = dict(profiles)
        fired = 0
        for r in mine:  # due order (store.claim_due_timers)
            key = (r.tenant_id, r.customer_id)
            ikey = (r.tenant_id, r.instance_id)
            if ikey in held:
                continue  # held by someone else this instant: next round
            changes.fire(r.id, r.instance_id)
            fired += 1
            TIMERS_FIRED.inc()
            loaded = instances.get(ikey)
            if loaded is None:
                continue  # its instance is gone: nothing to move
            # A trace of its own (days after its cause), linked to what scheduled it;
            # the messages and events of this step are in it.
            with linked(
                f"fire timer {r.kind}",
                [r.traceparent],
                new_trace=True,
                attributes={"afterglow.timer.id": r.id, "afterglow.tenant": r.tenant_id},
            ):
                j = journeys[r.tenant_id].journeys[(loaded.state.journey, loaded.state.version)]
                res = d.on_timer(j, loaded.state, profiles[key], r.id, now)
                profiles[key] = d.note_actions(profiles[key], [res], now)
                loaded.state = res.state
                changes.step(r.tenant_id, r.customer_id, j, res, profiles[key])
        for key, profile in profiles.items():
            # Only what a step changed is written (note_actions returns the profile it
            # was given when nothing changed): a reminder or a timeout leaves the
            # profile as it was, and rewriting ~1 KB of JSON per customer cost more
            # than the step.
            if profile is not locked[key]:
                changes.profile(key, profile)
        await changes.write(session)
        return fired

    return fire_round


def journey_workers(runtime: Runtime) -> list[Worker]:
    settings = runtime.settings
    interval = settings.journeys_timer_poll_interval_s if isinstance(settings, Settings) else 1.0
    batch = settings.journeys_timer_batch if isinstance(settings, Settings) else 200
    lanes = settings.journeys_timer_lanes if isinstance(settings, Settings) else 1
    # Rounds run back to back under load, like the group commits' writers: on their
    # pool, with no liveness ping on checkout (three round trips, BEGIN, a query and
    # ROLLBACK, per round). A connection that died while idle fails its round as a
    # transient error (connection invalidated), the pool drops it and the worker runs
    # the round again on a new one; nothing of the failed round was committed.
    sessions = runtime.writer_sessionmaker()

    return [
        PollingWorker(
            "journey-timers" if lanes == 1 else f"journey-timers-{i}",
            in_one_transaction(sessions, timer_round(runtime.outbox, batch, store.Lane(i, lanes))),
            runtime.clock,
            interval,
            batch=batch,
        )
        for i in range(lanes)
    ]
