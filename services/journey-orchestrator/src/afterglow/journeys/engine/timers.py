"""When things are due: a stage's wait, and the timers a state needs. Timers are a
function of the state, so the caller diffs wanted against pending after every step and
a pause, a resume, a new anchor or a migration never leaves a stale timer behind."""

from __future__ import annotations

from datetime import datetime

from afterglow.journeys.engine.definition import Journey, Stage, SurveyAction, WaitForAction
from afterglow.journeys.engine.paths import current_stage, resolve, step_key
from afterglow.journeys.engine.profile import Profile
from afterglow.journeys.engine.state import InstanceState, TimerSpec, blocked_here
from afterglow.journeys.engine.timing import at_local


def stage_due(j: Journey, stage: Stage, st: InstanceState, profile: Profile) -> datetime | None:
    """When the stage's wait is over, or None while its anchor event has not come."""
    w = stage.wait
    if w is None:
        return st.waiting_since or st.started_at
    due: datetime | None = None
    if w.after is None:
        due = (st.waiting_since or st.started_at) + w.delay
    elif w.after in st.anchors:
        due = st.anchors[w.after] + w.delay
    elif w.fallback is not None and w.fallback.after in st.anchors:
        due = st.anchors[w.fallback.after] + w.fallback.delay
    if due is None:
        return None
    return at_local(due, w.at, profile.timezone or j.timezone)


def timers_for(j: Journey, st: InstanceState, profile: Profile) -> list[TimerSpec]:
    """The timers this state needs (none while paused or finished)."""
    if st.status != "running" or st.stage_index >= len(j.stages):
        return []
    stage = current_stage(j, st)
    if st.pc is None:
        due = stage_due(j, stage, st, profile)
        return [] if due is None else [TimerSpec(f"{st.stage_index}:due", "stage_due", due)]
    action = resolve(stage, st.pc)
    key = step_key(st, st.pc)
    if st.waiting_since is None or not blocked_here(st, key):
        return []
    out = []
    if isinstance(action, SurveyAction):
        if action.reminder_after is not None and not st.reminded:
            out.append(
                TimerSpec(f"{key}:reminder", "reminder", st.waiting_since + action.reminder_after)
            )
        out.append(TimerSpec(f"{key}:timeout", "timeout", st.waiting_since + action.stop_after))
    elif isinstance(action, WaitForAction):
        out.append(TimerSpec(f"{key}:timeout", "timeout", st.waiting_since + action.timeout))
    return out
