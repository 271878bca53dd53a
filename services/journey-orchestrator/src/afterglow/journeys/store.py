"""Persistence of the journey engine: load what :mod:`domain` needs, write back what it
decided (state, transitions, timers, outbox events) in the caller's transaction.

Handlers, the timer worker, and the migrate endpoint all go through here, so every
path writes the same rows and emits the same events.

Lock order (prevents deadlocks): profile row, then instance rows, then timer rows.
Event handlers wait for locks; the timer worker never waits (``SKIP LOCKED`` on all
three), so a handler and the worker cannot wait on each other in a cycle.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, insert, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.events import CloudEvent, Outbox, derived_event_id
from afterglow.events import catalog as c
from afterglow.journeys import domain as d
from afterglow.journeys.models import (
    CustomerProfile,
    GoalConversion,
    JourneyDefinition,
    JourneyInstance,
    JourneyTimer,
    JourneyTransition,
)

SOURCE = "journeys"
MESSAGE_KINDS = set(c.MessageKind.__args__)  # type: ignore[attr-defined]


# --- definitions -----------------------------------------------------------------------


_TENANTS_WITH_DEFINITIONS: set[str] = set()


async def ensure_default(session: AsyncSession, tenant_id: str, now: datetime) -> None:
    """Every tenant starts with DESIGN.md's journey as ``default`` v1, active.

    Definitions are never deleted, so a tenant seen with one needs no further check
    (saves a query per event)."""
    if tenant_id in _TENANTS_WITH_DEFINITIONS:
        return
    exists = await session.scalar(
        select(func.count())
        .select_from(JourneyDefinition)
        .where(JourneyDefinition.tenant_id == tenant_id)
    )
    if exists:
        _TENANTS_WITH_DEFINITIONS.add(tenant_id)
        return
    await session.execute(
        pg_insert(JourneyDefinition)
        .values(
            tenant_id=tenant_id,
            name="default",
            version=1,
            body=d.DEFAULT_JOURNEY.model_dump(mode="json"),
            active=True,
            created_at=now,
            activated_at=now,
        )
        .on_conflict_do_nothing()
    )


async def active_journeys(
    session: AsyncSession, tenant_id: str
) -> dict[str, tuple[int, d.Journey]]:
    # Names and versions only: a stored version never changes, so its body is read and
    # validated once per process (journey_version), not once per event.
    rows = await session.execute(
        select(JourneyDefinition.name, JourneyDefinition.version).where(
            JourneyDefinition.tenant_id == tenant_id, JourneyDefinition.active.is_(True)
        )
    )
    return {
        r.name: (r.version, await journey_version(session, tenant_id, r.name, r.version))
        for r in rows.all()
    }


_VERSIONS: dict[tuple[str, str, int], d.Journey] = {}


async def journey_version(
    session: AsyncSession, tenant_id: str, name: str, version: int
) -> d.Journey:
    # A stored version never changes, so it is read and validated once per process.
    key = (tenant_id, name, version)
    if key in _VERSIONS:
        return _VERSIONS[key]
    body = await session.scalar(
        select(JourneyDefinition.body).where(
            JourneyDefinition.tenant_id == tenant_id,
            JourneyDefinition.name == name,
            JourneyDefinition.version == version,
        )
    )
    if body is None:
        raise LookupError(f"journey {name!r} v{version} is not stored")
    if len(_VERSIONS) > 10_000:
        _VERSIONS.clear()
    _VERSIONS[key] = d.parse_journey(body)
    return _VERSIONS[key]


# --- profile ---------------------------------------------------------------------------


async def lock_profile(
    session: AsyncSession,
    tenant_id: str,
    customer_id: str,
    now: datetime,
    *,
    skip_locked: bool = False,
) -> d.Profile | None:
    if not skip_locked:
        await session.execute(
            pg_insert(CustomerProfile)
            .values(tenant_id=tenant_id, customer_id=customer_id, state={}, updated_at=now)
            .on_conflict_do_nothing()
        )
    q = select(CustomerProfile.state).where(
        CustomerProfile.tenant_id == tenant_id, CustomerProfile.customer_id == customer_id
    )
    q = q.with_for_update(skip_locked=skip_locked)
    rows = (await session.execute(q)).all()
    if not rows:
        return None
    return d.Profile.model_validate(rows[0].state or {})


async def save_profile(
    session: AsyncSession, tenant_id: str, customer_id: str, p: d.Profile, now: datetime
) -> None:
    await session.execute(
        update(CustomerProfile)
        .where(CustomerProfile.tenant_id == tenant_id, CustomerProfile.customer_id == customer_id)
        .values(
            orders_count=p.orders_count,
            total_spent=p.total_spent,
            currency=p.currency,
            first_order_at=p.first_order_at,
            last_order_at=p.last_order_at,
            open_tickets=len(p.open_tickets),
            consent=p.consent,
            timezone=p.timezone,
            tier=p.tier,
            last_surveyed_at=p.last_surveyed_at,
            last_nps=p.last_nps,
            last_band=p.last_band,
            state=p.model_dump(mode="json"),
            updated_at=now,
        )
    )


# --- instances -------------------------------------------------------------------------


async def customer_instances(
    session: AsyncSession, tenant_id: str, customer_id: str, *, skip_locked: bool = False
) -> list[d.InstanceState]:
    q = (
        select(JourneyInstance.state)
        .where(JourneyInstance.tenant_id == tenant_id, JourneyInstance.customer_id == customer_id)
        .order_by(JourneyInstance.started_at.desc())
        .limit(50)
        .with_for_update(skip_locked=skip_locked)
    )
    return [d.InstanceState.model_validate(r.state) for r in await session.execute(q)]


@dataclass
class Writer:
    """Writes one customer's engine results and their events."""

    session: AsyncSession
    outbox: Outbox
    tenant_id: str
    customer_id: str
    now: datetime

    async def apply(
        self, j: d.Journey, res: d.StepResult, profile: d.Profile, *, new: bool = False
    ) -> None:
        s = res.state
        values: dict[str, Any] = dict(
            stage=s.stage,
            status=s.status,
            anchors={k: v.isoformat() for k, v in s.anchors.items()},
            state=s.model_dump(mode="json"),
            updated_at=self.now,
            ended_at=self.now if s.status in ("exited", "completed", "skipped") else None,
            version=s.version,
        )
        stmt = pg_insert(JourneyInstance).values(
            id=s.id,
            tenant_id=self.tenant_id,
            customer_id=self.customer_id,
            journey=s.journey,
            order_id=s.order_id,
            started_at=s.started_at,
            **values,
        )
        await self.session.execute(stmt.on_conflict_do_update(index_elements=["id"], set_=values))
        events: list[CloudEvent[Any]] = []
        if res.transitions:
            # One multi-row INSERT per step, not one per transition.
            await self.session.execute(
                insert(JourneyTransition),
                [
                    dict(
                        tenant_id=self.tenant_id,
                        customer_id=self.customer_id,
                        instance_id=s.id,
                        journey=s.journey,
                        version=s.version,
                        kind=t.kind,
                        from_stage=t.from_stage,
                        to_stage=t.to_stage,
                        cause=t.cause,
                        reason=t.reason,
                        at=t.at,
                    )
                    for t in res.transitions
                ],
            )
        for t in res.transitions:
            if t.kind in ("stage", "exit", "complete"):
                to = (
                    t.to_stage
                    if t.kind == "stage"
                    else ("exited" if t.kind == "exit" else "completed")
                )
                events.append(
                    self._event(
                        c.JourneyStageChanged(
                            instance_id=s.id,
                            journey=s.journey,
                            version=s.version,
                            from_stage=t.from_stage,
                            to_stage=to or "unknown",
                            cause=t.cause,
                            changed_at=t.at,
                            order_id=s.order_id,
                        ),
                        s.id,
                        "stage",
                        t.cause,
                        t.kind,
                        to or "",
                    )
                )
        for a in res.actions:
            events.append(self._action_event(s, a, profile))
        if events:
            await self.outbox.add(self.session, *events)
        await self.sync_timers(j, s, profile)

    async def sync_timers(self, j: d.Journey, s: d.InstanceState, profile: d.Profile) -> None:
        """Make the pending timers equal to what the state needs (domain.timers_for)."""
        wanted = {d.timer_id(s.id, t): t for t in d.timers_for(j, s, profile)}
        pending = set(
            (
                await self.session.scalars(
                    select(JourneyTimer.id).where(
                        JourneyTimer.tenant_id == self.tenant_id,
                        JourneyTimer.instance_id == s.id,
                        JourneyTimer.state == "pending",
                    )
                )
            ).all()
        )
        stale = pending - wanted.keys()
        if stale:
            await self.session.execute(
                update(JourneyTimer).where(JourneyTimer.id.in_(stale)).values(state="cancelled")
            )
        fresh = [
            dict(
                id=tid,
                tenant_id=self.tenant_id,
                customer_id=self.customer_id,
                instance_id=s.id,
                kind=t.kind,
                key=t.key,
                due_at=t.due_at,
                payload={"journey": s.journey, "version": s.version},
                state="pending",
                created_at=self.now,
            )
            for tid, t in wanted.items()
            if tid not in pending
        ]
        if fresh:
            # A timer id already fired (same step, same due time) is not re-armed.
            await self.session.execute(
                pg_insert(JourneyTimer).values(fresh).on_conflict_do_nothing()
            )

    async def goal(self, inst: d.InstanceState, event_id: str) -> None:
        await self.session.execute(
            pg_insert(GoalConversion)
            .values(
                tenant_id=self.tenant_id,
                instance_id=inst.id,
                customer_id=self.customer_id,
                journey=inst.journey,
                version=inst.version,
                event_id=event_id,
                converted_at=self.now,
            )
            .on_conflict_do_nothing()
        )

    def _event(self, data: Any, *parts: str) -> CloudEvent[Any]:
        return CloudEvent.new(
            data,
            tenant_id=self.tenant_id,
            subject=self.customer_id,
            source=SOURCE,
            id=derived_event_id(SOURCE, self.tenant_id, *parts),
            time=self.now,
        )

    def _action_event(
        self, s: d.InstanceState, a: d.ActionOut, profile: d.Profile
    ) -> CloudEvent[Any]:
        # The request id comes from the instance and the step: a retried transaction or a
        # timer fired twice produces the same id, and the receiver de-duplicates.
        request_id = derived_event_id("journey-step", s.id, a.step)
        p = a.params
        data: Any
        if a.type == "message":
            kind = p["kind"] if p["kind"] in MESSAGE_KINDS else "custom"
            data = c.MessageRequested(
                request_id=request_id,
                kind=kind,
                template=p.get("template") or (None if kind == p["kind"] else p["kind"]),
                category=p["category"],
                order_id=p.get("order_id"),
                variables={"journey": s.journey, "stage": s.stage, "instance_id": s.id},
            )
        elif a.type == "survey":
            reminder_of = p.get("reminder_of")
            data = c.SurveyRequested(
                request_id=request_id,
                kind=p["kind"],
                order_id=p.get("order_id"),
                reminder=reminder_of is not None,
                reminder_of=derived_event_id("journey-step", s.id, reminder_of)
                if reminder_of
                else None,
                requested_at=self.now,
            )
        elif a.type == "request_review":
            if not p.get("order_id"):
                raise ValueError("a review is asked for an order; this instance has none")
            data = c.ReviewRequested(
                request_id=request_id,
                order_id=p["order_id"],
                requested_at=self.now,
                reminder=bool(p.get("reminder")),
            )
        elif a.type == "invite_referral":
            data = c.ReferralInvited(
                invited_at=self.now,
                reason="promoter",
                score=p.get("score"),
                journey_instance_id=s.id,
            )
        elif a.type == "escalate_support":
            data = c.SupportEscalationRequested(
                reason=p["reason"],
                requested_at=self.now,
                priority=p["priority"],
                order_id=p.get("order_id"),
                score=p.get("score"),
                comment=p.get("comment"),
                survey_id=p.get("survey_id"),
            )
        else:  # pragma: no cover - the domain emits only the types above
            raise ValueError(f"unknown action {a.type}")
        return self._event(data, s.id, a.step, a.type)


async def load_journeys_for(
    session: AsyncSession, tenant_id: str, instances: list[d.InstanceState]
) -> tuple[dict[tuple[str, int], d.Journey], dict[str, int]]:
    active = await active_journeys(session, tenant_id)
    journeys = {(name, v): j for name, (v, j) in active.items()}
    for inst in instances:
        key = (inst.journey, inst.version)
        if key not in journeys:
            journeys[key] = await journey_version(session, tenant_id, inst.journey, inst.version)
    return journeys, {name: v for name, (v, _) in active.items()}
