"""The dry run: events through the engine on a virtual clock. It calls exactly the
functions the live service calls, so a simulation and the real engine agree by
construction."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from pydantic import BaseModel, ConfigDict, Field, field_validator

from afterglow.journeys.engine.customer import handle_event, note_actions
from afterglow.journeys.engine.definition import Journey
from afterglow.journeys.engine.event_types import EventType
from afterglow.journeys.engine.profile import Occurrence, Profile
from afterglow.journeys.engine.state import ActionOut, InstanceState, Transition, timer_id
from afterglow.journeys.engine.step import on_timer
from afterglow.journeys.engine.timers import timers_for


class SimEvent(BaseModel):
    model_config = ConfigDict(extra="forbid")
    id: str | None = None
    type: EventType
    at: datetime
    data: dict[str, Any] = Field(default_factory=dict)

    @field_validator("at")
    @classmethod
    def _aware(cls, v: datetime) -> datetime:
        if v.tzinfo is None:
            raise ValueError("timestamps must carry a time zone")
        return v


@dataclass(frozen=True)
class SimRecord:
    at: datetime
    instance_id: str
    transitions: list[Transition]
    actions: list[ActionOut]


def simulate(
    j: Journey,
    events: list[SimEvent],
    *,
    version: int = 1,
    profile: Profile | None = None,
    horizon: timedelta = timedelta(days=400),
) -> list[SimRecord]:
    """Run ``events`` (in time order) through the engine with a virtual clock, firing
    every timer at its due time, until nothing is pending or ``horizon`` after the last
    event. Uses exactly the functions the live service uses."""
    prof = profile or Profile()
    instances: dict[str, InstanceState] = {}
    records: list[SimRecord] = []
    evs = sorted(events, key=lambda e: e.at)
    end = (evs[-1].at if evs else datetime.now(UTC)) + horizon
    journeys = {(j.name, version): j}

    def pending() -> list[tuple[datetime, str, str]]:
        out = []
        for inst in instances.values():
            for t in timers_for(j, inst, prof):
                out.append((t.due_at, inst.id, timer_id(inst.id, t)))
        return sorted(out)

    def fire_until(limit: datetime) -> None:
        nonlocal prof
        for _ in range(10_000):
            due = [p for p in pending() if p[0] <= limit]
            if not due:
                return
            at, iid, tid = due[0]
            res = on_timer(j, instances[iid], prof, tid, at)
            prof = note_actions(prof, [res], at)
            instances[iid] = res.state
            if res.transitions or res.actions:
                records.append(SimRecord(at, iid, res.transitions, res.actions))

    for n, e in enumerate(evs):
        fire_until(e.at)
        occ = Occurrence(e.id or f"sim-{n}", e.type, e.at, e.data)
        outcome = handle_event(
            journeys, {j.name: version}, list(instances.values()), prof, occ, e.at
        )
        prof = outcome.profile
        for res in outcome.results:
            instances[res.state.id] = res.state
            if res.transitions or res.actions:
                records.append(SimRecord(e.at, res.state.id, res.transitions, res.actions))
    fire_until(end)
    return records
