"""Journey event handlers: every event first updates the customer's profile, then moves
the customer's instances through the pure engine (domain.handle_event), in the one
transaction the consumer runtime opens (with the inbox insert and the outbox rows)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import cast, select, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.events import CloudEvent, ConsumerGroup, on
from afterglow.events.catalog import CustomerErasureRequested, is_anonymous_subject
from afterglow.journeys import domain as d
from afterglow.journeys import store
from afterglow.journeys.models import CustomerProfile, JourneyInstance
from afterglow.kit.app import Runtime

# Merged into an erased customer's instance state (JSONB ||): their order and its dates.
ERASED_STATE_FIELDS = cast({"order_id": None, "anchors": {}}, JSONB)

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
    return d.Occurrence(event.id, event.type, at, data.model_dump(mode="json", exclude={"type"}))


async def apply_event(session: AsyncSession, runtime: Runtime, event: CloudEvent[Any]) -> None:
    if is_anonymous_subject(event.subject):
        # An order without a customer (a POS sale: no id, email or phone): no profile,
        # no journey, so no message to nobody on an assumed consent.
        return
    now = runtime.clock.now()
    tenant, customer = event.tenantid, event.subject
    await store.ensure_default(session, tenant, now)
    profile = await store.lock_profile(session, tenant, customer, now)
    assert profile is not None
    instances = await store.customer_instances(session, tenant, customer)
    journeys, active = await store.load_journeys_for(session, tenant, instances)
    occ = occurrence(event)
    outcome = d.handle_event(journeys, active, instances, profile, occ, now)
    writer = store.Writer(session, runtime.outbox, tenant, customer, now)
    for res in outcome.results:
        await writer.apply(journeys[(res.state.journey, res.state.version)], res, outcome.profile)
    by_id = {i.id: i for i in instances}
    for iid in outcome.goals:
        await writer.goal(by_id[iid], event.id)
    await store.save_profile(session, tenant, customer, outcome.profile, now)


async def erase(
    session: AsyncSession, runtime: Runtime, event: CloudEvent[CustomerErasureRequested]
) -> None:
    """GDPR: wipe what describes the person and stop every journey (no more messages);
    counts and transitions (aggregates, no PII) remain."""
    now = runtime.clock.now()
    tenant = event.tenantid
    whole_tenant = getattr(event.data, "scope", "customer") == "tenant"
    customers = (
        list(
            (
                await session.scalars(
                    select(CustomerProfile.customer_id).where(CustomerProfile.tenant_id == tenant)
                )
            ).all()
        )
        if whole_tenant
        else [event.subject]
    )
    for customer in customers:
        profile = await store.lock_profile(session, tenant, customer, now)
        assert profile is not None
        instances = await store.customer_instances(session, tenant, customer)
        writer = store.Writer(session, runtime.outbox, tenant, customer, now)
        for inst in instances:
            if inst.status not in ("running", "paused"):
                continue
            res = d.StepResult(inst.model_copy(deep=True))
            d._exit(res, event.id, "erasure requested", now)
            j = await store.journey_version(session, tenant, inst.journey, inst.version)
            await writer.apply(j, res, profile)
        await store.save_profile(session, tenant, customer, d.erase(profile), now)
        await session.execute(
            update(JourneyInstance)
            .where(JourneyInstance.tenant_id == tenant, JourneyInstance.customer_id == customer)
            # The state keeps its own copy of both (domain.InstanceState): wiped too.
            .values(
                order_id=None,
                anchors={},
                state=JourneyInstance.state.op("||")(ERASED_STATE_FIELDS),
            )
        )


async def on_event(runtime: Runtime, session: AsyncSession, event: CloudEvent[Any]) -> None:
    await apply_event(session, runtime, event)


async def on_erasure(
    runtime: Runtime, session: AsyncSession, event: CloudEvent[CustomerErasureRequested]
) -> None:
    await erase(session, runtime, event)


def _runtime(runtime: Runtime) -> Runtime:
    return runtime


# The engine's group: every event a journey can react to (domain.ENGINE_EVENTS), and
# erasures.
ENGINE = ConsumerGroup(
    "engine",
    *(on(cls, on_event) for cls in d.ENGINE_EVENTS),
    on(CustomerErasureRequested, on_erasure),
    context=_runtime,
)

CONSUMERS = (ENGINE,)
