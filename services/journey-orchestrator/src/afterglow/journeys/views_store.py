"""What the read routes show, read in sets: a customer's journeys with their next timer
and history, the funnel's counts over a period, the live counts per step, and the
journey metrics of the instances started in a period.

Each reader is a fixed number of statements whatever the number of rows (grouped in
PostgreSQL, or one query for all of a customer's instances): none loops per row."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from sqlalchemy import func, select, text
from sqlalchemy.dialects.postgresql import distinct_on
from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.journeys.models import (
    CustomerProfile,
    GoalConversion,
    JourneyInstance,
    JourneyTimer,
    JourneyTransition,
)
from afterglow.kit.db import read_one_snapshot
from afterglow.kit.period import Period

# --- a customer's journey ----------------------------------------------------------------


@dataclass
class CustomerRows:
    profile: CustomerProfile | None
    # Newest first.
    instances: Sequence[JourneyInstance]
    # Instance id -> its earliest pending timer (instances without one are absent).
    next_timers: dict[str, Any]
    # Instance id -> its transitions, oldest first.
    history: dict[str, list[JourneyTransition]]


async def customer_rows(session: AsyncSession, tenant_id: str, customer_id: str) -> CustomerRows:
    """The customer's profile and every instance, each with its next timer and history:
    four queries for any number of instances (one per instance each made the page of a
    repeat buyer, polled by the console, grow with every order), in one snapshot: read
    apart, a poll straddling the consumer's commit saw an exited instance and no
    profile yet."""
    await read_one_snapshot(session)
    profile = await session.get(CustomerProfile, (tenant_id, customer_id))
    instances = (
        await session.scalars(
            select(JourneyInstance)
            .where(
                JourneyInstance.tenant_id == tenant_id,
                JourneyInstance.customer_id == customer_id,
            )
            .order_by(JourneyInstance.started_at.desc(), JourneyInstance.id)
        )
    ).all()
    ids = [i.id for i in instances]
    if not ids:
        return CustomerRows(profile, instances, {}, {})
    timers = await session.execute(
        select(JourneyTimer.instance_id, JourneyTimer.due_at, JourneyTimer.kind, JourneyTimer.id)
        .where(
            JourneyTimer.tenant_id == tenant_id,
            JourneyTimer.instance_id.in_(ids),
            JourneyTimer.state == "pending",
        )
        # The earliest per instance (DISTINCT ON keeps the first row of each).
        .ext(distinct_on(JourneyTimer.instance_id))
        .order_by(JourneyTimer.instance_id, JourneyTimer.due_at)
    )
    history: dict[str, list[JourneyTransition]] = {}
    for t in await session.scalars(
        select(JourneyTransition)
        .where(JourneyTransition.tenant_id == tenant_id, JourneyTransition.instance_id.in_(ids))
        .order_by(JourneyTransition.id)
    ):
        history.setdefault(t.instance_id, []).append(t)
    return CustomerRows(profile, instances, {t.instance_id: t for t in timers.all()}, history)


# --- the funnel ------------------------------------------------------------------------------


@dataclass
class FunnelCounts:
    # Stage -> journeys (instances) and customers that entered it: a repeat buyer's
    # second journey is a second pass through the funnel, but the same customer.
    entered: dict[str | None, int]
    customers: dict[str | None, int]
    # Version -> goal conversions.
    goals: dict[int, int]
    # Exit reason -> instances.
    exits: dict[str, int]


async def funnel_counts(
    session: AsyncSession, tenant_id: str, journey: str, start: datetime, end: datetime
) -> FunnelCounts:
    """Stage entries, goal conversions and exits of the journey in [start, end)."""
    counts = (
        await session.execute(
            select(
                JourneyTransition.to_stage,
                func.count(func.distinct(JourneyTransition.instance_id)),
                func.count(func.distinct(JourneyTransition.customer_id)),
            )
            .where(
                JourneyTransition.tenant_id == tenant_id,
                JourneyTransition.journey == journey,
                JourneyTransition.kind == "stage",
                JourneyTransition.at >= start,
                JourneyTransition.at < end,
            )
            .group_by(JourneyTransition.to_stage)
        )
    ).all()
    goals = (
        await session.execute(
            select(GoalConversion.version, func.count())
            .where(
                GoalConversion.tenant_id == tenant_id,
                GoalConversion.journey == journey,
                GoalConversion.converted_at >= start,
                GoalConversion.converted_at < end,
            )
            .group_by(GoalConversion.version)
        )
    ).all()
    exits = (
        await session.execute(
            select(JourneyTransition.reason, func.count())
            .where(
                JourneyTransition.tenant_id == tenant_id,
                JourneyTransition.journey == journey,
                JourneyTransition.kind == "exit",
                JourneyTransition.at >= start,
                JourneyTransition.at < end,
            )
            .group_by(JourneyTransition.reason)
        )
    ).all()
    return FunnelCounts(
        entered={stage: n for stage, n, _ in counts},
        customers={stage: n for stage, _, n in counts},
        goals={v: n for v, n in goals},
        exits={r: n for r, n in exits},
    )


# --- counts per step -------------------------------------------------------------------------


@dataclass
class StepRows:
    # (version, stage, status, instances) of the instances now.
    at_stage: Sequence[Any]
    # (version, stage, instances that ever entered it).
    entered: Sequence[Any]
    # (version, goal conversions).
    goals: Sequence[Any]


async def step_rows(session: AsyncSession, tenant_id: str, journey: str) -> StepRows:
    """Three grouped statements over the journey's rows of the tenant."""
    at_stage = await session.execute(
        select(JourneyInstance.version, JourneyInstance.stage, JourneyInstance.status, func.count())
        .where(JourneyInstance.tenant_id == tenant_id, JourneyInstance.journey == journey)
        .group_by(JourneyInstance.version, JourneyInstance.stage, JourneyInstance.status)
    )
    entered = await session.execute(
        select(
            JourneyTransition.version,
            JourneyTransition.to_stage,
            func.count(func.distinct(JourneyTransition.instance_id)),
        )
        .where(
            JourneyTransition.tenant_id == tenant_id,
            JourneyTransition.journey == journey,
            JourneyTransition.kind == "stage",
        )
        .group_by(JourneyTransition.version, JourneyTransition.to_stage)
    )
    goals = await session.execute(
        select(GoalConversion.version, func.count())
        .where(GoalConversion.tenant_id == tenant_id, GoalConversion.journey == journey)
        .group_by(GoalConversion.version)
    )
    return StepRows(at_stage.all(), entered.all(), goals.all())


# --- journey metrics over a period (definitions in :mod:`.metrics`) ---------------------------


_STARTED = """
    SELECT i.id, i.tenant_id, i.journey, i.version FROM journeys.journey_instances i
    WHERE i.tenant_id = :tenant AND i.started_at >= :start AND i.started_at < :end
      AND i.status <> 'skipped'
"""

# The f-strings below only splice in _STARTED, a constant: every value is a bind.
_OUTCOMES = text(
    f"""
    WITH started AS ({_STARTED})
    SELECT s.journey, s.version, count(*) AS started, count(g.instance_id) AS converted
    FROM started s
    LEFT JOIN journeys.goal_conversions g
      ON g.tenant_id = s.tenant_id AND g.instance_id = s.id
    GROUP BY s.journey, s.version ORDER BY s.journey, s.version
    """  # noqa: S608
)

_FUNNEL = text(
    f"""
    WITH started AS ({_STARTED})
    SELECT s.journey, s.version, t.to_stage AS stage, count(DISTINCT s.id) AS instances
    FROM started s
    JOIN journeys.journey_transitions t
      ON t.tenant_id = s.tenant_id AND t.instance_id = s.id AND t.kind = 'stage'
    GROUP BY s.journey, s.version, t.to_stage
    """  # noqa: S608
)

_REVENUE = text(
    f"""
    WITH started AS ({_STARTED})
    SELECT s.journey, s.version, g.currency, sum(g.amount_minor)::bigint AS amount,
           count(*) AS orders
    FROM started s
    JOIN journeys.goal_conversions g ON g.tenant_id = s.tenant_id AND g.instance_id = s.id
    WHERE g.amount_minor IS NOT NULL AND g.currency IS NOT NULL
    GROUP BY s.journey, s.version, g.currency ORDER BY s.journey, s.version, g.currency
    """  # noqa: S608
)

# The stages of each version in their written order (the funnel's order).
_STAGES = text(
    """
    SELECT name AS journey, version,
           jsonb_path_query_array(body, '$.stages[*].name') AS stages
    FROM journeys.journey_definitions WHERE tenant_id = :tenant
    """
)


@dataclass
class MetricsRows:
    # (journey, version, started, converted)
    outcomes: Sequence[Any]
    # (journey, version, stage, instances)
    funnel: Sequence[Any]
    # (journey, version, currency, amount, orders)
    revenue: Sequence[Any]
    # (journey, version) -> its stage names in written order
    written: dict[tuple[str, int], list[str]]


async def metrics_rows(session: AsyncSession, tenant_id: str, period: Period) -> MetricsRows:
    """The instances started in the period: outcomes, stages reached and goal revenue
    per journey version, and every version's stages in written order."""
    params = {"tenant": tenant_id, **period.params()}
    outcomes = (await session.execute(_OUTCOMES, params)).all()
    funnel = (await session.execute(_FUNNEL, params)).all()
    revenue = (await session.execute(_REVENUE, params)).all()
    written = {
        (r.journey, int(r.version)): [str(s) for s in (r.stages or [])]
        for r in (await session.execute(_STAGES, {"tenant": tenant_id})).all()
    }
    return MetricsRows(outcomes, funnel, revenue, written)
