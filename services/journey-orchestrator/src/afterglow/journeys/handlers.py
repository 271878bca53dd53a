"""Journey event handlers: every event first updates the customer's profile, then moves
the customer's instances through the pure engine (engine.handle_event), in the one
transaction the consumer runtime opens (with the inbox insert and the outbox rows)."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.events import CloudEvent, ConsumerGroup, on, on_batch
from afterglow.events.batch import event_span
from afterglow.events.catalog import CustomerErasureRequested, is_anonymous_subject
from afterglow.journeys import engine as d
from afterglow.journeys import erasure_store, store
from afterglow.kit.app import Runtime

# The moment an event happened in the world (anchors use it, not the envelope time,
# so a late delivery report still anchors the delay on the real delivery).
_WHEN_FIELDS = (
    "placed_at",
    "fulfilled_at",
    "delivered_at",
    "refunded_at",
    "cancelled_at",
    "opened_at",
    "resolved_at",
    "updated_at",
    "sent_at",
    "responded_at",
    "submitted_at",
    "published_at",
    "earned_at",
    "redeemed_at",
    "changed_at",
    "issued_at",
    "converted_at",
    "unsubscribed_at",
)


def occurrence(event: CloudEvent[Any]) -> d.Occurrence:
    data = event.data
    at: datetime = event.time
    for name in _WHEN_FIELDS:
        value = getattr(data, name, None)
        if isinstance(value, datetime):
            at = value
            break
    # The data as JSON values, without its type (the occurrence has it). Dropped after
    # the dump: ``exclude`` builds a filter per call, and dumping with it took twice as
    # long as the dump alone (8.5 against 4.2 us for an order.placed).
    fields = data.model_dump(mode="json")
    fields.pop("type", None)
    return d.Occurrence(event.id, event.type, at, fields)


async def apply_events(
    session: AsyncSession, runtime: Runtime, events: Sequence[CloudEvent[Any]]
) -> None:
    """Apply a batch of events (partition order) in sets: one query per table loads
    every profile, instance, timer and journey version the batch touches (profiles
    locked in (tenant, customer) order, store.py), the pure engine runs in memory in
    event order (two events of one customer see each other), and :class:`store.Changes`
    writes each table with one statement."""
    # An order without a customer (a POS sale: no id, email or phone): no profile,
    # no journey, so no message to nobody on an assumed consent.
    events = [e for e in events if not is_anonymous_subject(e.subject)]
    if not events:
        return
    now = runtime.clock.now()
    keys = sorted({(e.tenantid, e.subject) for e in events})
    tenants = {k[0] for k in keys}
    # A new tenant's default journey is committed apart (see ensure_defaults), so the
    # batches of its other partitions do not wait on this one.
    await store.ensure_defaults(session, tenants, now, apart=runtime.sessionmaker)
    profiles, new = await store.claim_profiles(session, keys, now)
    instances = {k: [] for k in new} | await store.instances_of(
        session, (k for k in keys if k not in new)
    )
    journeys = await store.tenant_journeys(
        session, tenants, ((k[0], i) for k, insts in instances.items() for i in insts)
    )
    changes = store.Changes(
        runtime.outbox,
        now,
        await store.timers_of(
            session, ((k[0], i.id) for k, insts in instances.items() for i in insts)
        ),
    )
    for event in events:
        # Per event, in the batch: the messages, events and timers this event causes
        # carry its trace (afterglow.events.tracing), not the batch's.
        with event_span(event):
            key = (event.tenantid, event.subject)
            tj = journeys[key[0]]
            current = instances[key]
            outcome = d.handle_event(
                tj.journeys, tj.active, current, profiles[key], occurrence(event), now
            )
            for res in outcome.results:
                changes.step(
                    key[0],
                    key[1],
                    tj.journeys[(res.state.journey, res.state.version)],
                    res,
                    outcome.profile,
                )
            by_id = {i.id: i for i in current}
            if outcome.goals:
                value = d.goal_value(occurrence(event))
                for iid in outcome.goals:
                    changes.goal(key[0], key[1], by_id[iid], event.id, value)
            profiles[key] = outcome.profile
            instances[key] = _newest_first(current, [r.state for r in outcome.results])
    for key in keys:
        changes.profile(key, profiles[key])
    await changes.write(session)


def _newest_first(
    current: list[d.InstanceState], moved: list[d.InstanceState]
) -> list[d.InstanceState]:
    """The customer's instances after a step, as the next event of the batch would
    read them from the table (newest first, at most store.INSTANCES_PER_CUSTOMER)."""
    if not moved:
        return current
    by_id = {i.id: i for i in current}
    by_id.update((s.id, s) for s in moved)
    ordered = sorted(by_id.values(), key=lambda i: i.started_at, reverse=True)
    return ordered[: store.INSTANCES_PER_CUSTOMER]


async def apply_event(session: AsyncSession, runtime: Runtime, event: CloudEvent[Any]) -> None:
    await apply_events(session, runtime, [event])


async def erase(
    session: AsyncSession, runtime: Runtime, event: CloudEvent[CustomerErasureRequested]
) -> None:
    """GDPR: wipe what describes the person and stop every journey (no more messages);
    counts and transitions (aggregates, no PII) remain."""
    now = runtime.clock.now()
    tenant = event.tenantid
    whole_tenant = getattr(event.data, "scope", "customer") == "tenant"
    customers = (
        await erasure_store.tenant_customers(session, tenant) if whole_tenant else [event.subject]
    )
    for customer in customers:
        profile = await store.lock_profile(session, tenant, customer, now)
        assert profile is not None
        instances = await store.customer_instances(session, tenant, customer)
        writer = store.Writer(session, runtime.outbox, tenant, customer, now)
        for inst in instances:
            if inst.status not in ("running", "paused"):
                continue
            res = d.StepResult(inst.copied())
            d.exit_instance(res, event.id, "erasure requested", now)
            j = await store.journey_version(session, tenant, inst.journey, inst.version)
            await writer.apply(j, res, profile)
        await store.save_profile(session, tenant, customer, d.erase(profile), now)
        await erasure_store.wipe_instance_orders(session, tenant, customer)


async def on_events(runtime: Runtime, session: AsyncSession, events: list[CloudEvent[Any]]) -> None:
    await apply_events(session, runtime, events)


async def on_erasure(
    runtime: Runtime, session: AsyncSession, event: CloudEvent[CustomerErasureRequested]
) -> None:
    await erase(session, runtime, event)


def _runtime(runtime: Runtime) -> Runtime:
    return runtime


# The engine's group: every event a journey can react to (engine.ENGINE_EVENTS), one
# batch function for all of them, so the runtime hands it each run of consecutive
# journey events of a partition batch, interleaved as they came; and erasures.
ENGINE = ConsumerGroup(
    "engine",
    *(on_batch(cls, on_events) for cls in d.ENGINE_EVENTS),
    on(CustomerErasureRequested, on_erasure),
    context=_runtime,
)

CONSUMERS = (ENGINE,)
