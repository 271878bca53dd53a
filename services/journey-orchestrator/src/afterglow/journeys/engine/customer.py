"""The engine for one customer and one event: triggering, goals, re-entry, and the
survey-fatigue bookkeeping across all of the customer's instances."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime

from afterglow.journeys.engine.conditions import holds
from afterglow.journeys.engine.definition import Journey
from afterglow.journeys.engine.profile import Occurrence, Profile, project
from afterglow.journeys.engine.state import (
    InstanceState,
    StepResult,
    exit_instance,
    first_order_of,
    instance_id_for,
)
from afterglow.journeys.engine.step import not_started, on_event, start


def note_actions(profile: Profile, results: list[StepResult], now: datetime) -> Profile:
    """Requesting a survey counts as surveying for the fatigue window at once, so a
    repeat order a minute later cannot survey the customer twice."""
    if any(
        a.type == "survey" and "reminder_of" not in a.params for r in results for a in r.actions
    ):
        profile = profile.model_copy(update={"last_surveyed_at": now})
    return profile


def triggers(j: Journey, profile: Profile, ev: Occurrence, now: datetime) -> bool:
    if ev.type not in j.trigger.events:
        return False
    if j.trigger.filter is None:
        return True  # what holds() answers for no condition, without building the probe
    probe = InstanceState(
        id="-", journey=j.name, version=0, started_at=now, first_order=first_order_of(ev, profile)
    )
    return holds(j.trigger.filter, profile, probe, now)


def goal_reached(j: Journey, st: InstanceState, ev: Occurrence) -> bool:
    """A goal event within the window after the instance started, other than its own
    trigger (a repeat purchase is another order)."""
    g = j.goal
    if g is None or ev.type != g.event:
        return False
    if ev.order_id is not None and ev.order_id == st.order_id:
        return False
    return st.started_at < ev.at <= st.started_at + g.within


@dataclass(frozen=True)
class GoalValue:
    """What a goal conversion brought in: the converting order and its total, so the
    revenue of goal orders is summed from the conversions alone (without it a goal's
    revenue would need the order book of another service)."""

    order_id: str | None
    amount_minor: int | None
    currency: str | None


def goal_value(ev: Occurrence) -> GoalValue:
    """The order and total of a goal event (None for a goal that is not an order, or an
    order event that carries no total)."""
    total = ev.data.get("total")
    if isinstance(total, dict) and isinstance(total.get("amount"), int):
        return GoalValue(ev.order_id, int(total["amount"]), str(total.get("currency") or ""))
    return GoalValue(ev.order_id, None, None)


@dataclass
class Outcome:
    """Everything one input did to one customer: per instance, the new state."""

    profile: Profile
    results: list[StepResult] = field(default_factory=list)
    started: list[str] = field(default_factory=list)
    goals: list[str] = field(default_factory=list)  # instance ids that converted


def handle_event(
    journeys: dict[tuple[str, int], Journey],
    active: dict[str, int],
    instances: list[InstanceState],
    profile: Profile,
    ev: Occurrence,
    now: datetime,
) -> Outcome:
    """The engine for one customer and one event: project the profile, move every live
    instance, convert goals, then start what the event triggers (honouring re-entry).

    ``journeys`` holds every (name, version) the instances use plus the active versions;
    ``active`` maps name -> active version."""
    out = Outcome(project(profile, ev))
    prof = out.profile
    # A historical event (a history import, or a live delivery about an order older
    # than the tenant's limit) is counted in the profile above and may end or anchor a
    # running journey of its own order, but it converts no goal and starts nothing:
    # otherwise a two-year-old order would get a welcome, a check-in and a survey.
    historical = bool(ev.data.get("historical"))
    live = [i for i in instances if i.status in ("running", "paused")]
    for inst in instances:
        j = journeys[(inst.journey, inst.version)]
        # A skipped instance never ran: a later order is no conversion of it.
        if not historical and inst.status != "skipped" and goal_reached(j, inst, ev):
            out.goals.append(inst.id)
    for inst in live:
        out.results.append(on_event(journeys[(inst.journey, inst.version)], inst, prof, ev, now))
    for name, version in sorted(active.items()):
        j = journeys[(name, version)]
        if not triggers(j, prof, ev, now):
            continue
        if historical:
            # A late live order leaves a record of why nothing started; an import's
            # hundreds of past orders do not (the import's own result says so).
            iid = instance_id_for(name, ev.id)
            if ev.data.get("origin") == "late" and not any(i.id == iid for i in instances):
                out.results.append(not_started(j, version, iid, ev, now))
            continue
        running = [
            r
            for r in out.results
            if r.state.journey == name and r.state.status in ("running", "paused")
        ]
        if running and j.reentry == "ignore":
            continue
        if j.reentry == "restart":
            for r in running:
                # The documented default: the new order restarts the journey for that order.
                exit_instance(r, ev.id, "superseded by a new order", now)
        iid = instance_id_for(name, ev.id)
        if any(i.id == iid for i in instances):
            continue
        res = start(j, version, iid, ev, prof, now)
        out.results.append(res)
        out.started.append(iid)
    out.profile = note_actions(prof, out.results, now)
    return out
