"""The step function: start an instance, apply an event or a timer to it, and advance it
as far as it can go now. A timer that fires late or stale simply re-runs the advance,
which only moves when something is due."""

from __future__ import annotations

from datetime import datetime

from afterglow.journeys.engine import actions
from afterglow.journeys.engine.conditions import describe, holds
from afterglow.journeys.engine.definition import Journey, SurveyAction, WaitForAction
from afterglow.journeys.engine.event_types import (
    REFUNDED,
    SURVEY_RESPONDED,
    TICKET_OPENED,
    TICKET_RESOLVED,
)
from afterglow.journeys.engine.paths import current_stage, next_pc, resolve, step_key
from afterglow.journeys.engine.profile import Occurrence, Profile
from afterglow.journeys.engine.state import (
    InstanceState,
    StepResult,
    Transition,
    exit_instance,
    first_order_of,
)
from afterglow.journeys.engine.timers import stage_due

MAX_STEPS = 500  # a definition cannot loop, but a bug must not spin a consumer forever


def start(
    j: Journey,
    version: int,
    instance_id: str,
    trigger: Occurrence,
    profile: Profile,
    now: datetime,
) -> StepResult:
    order_id = trigger.order_id
    anchors = dict(profile.orders.get(order_id, {})) if order_id else {}
    anchors.setdefault(trigger.type, trigger.at)
    st = InstanceState(
        id=instance_id,
        journey=j.name,
        version=version,
        order_id=order_id,
        started_at=now,
        waiting_since=now,
        anchors=anchors,
        first_order=first_order_of(trigger, profile),
    )
    res = StepResult(st)
    # Out of order: the refund or cancellation of this order came before its placed.
    for ex in j.exits:
        if ex in anchors and ex != trigger.type:
            exit_instance(res, trigger.id, f"{ex.split('.')[2]} before start", now)
            return res
    if j.pause_on_open_ticket and profile.open_tickets:
        st.status = "paused"
        res.transitions.append(
            Transition("pause", None, None, trigger.id, "ticket open at start", now)
        )
        return res
    _advance(j, res, profile, trigger.id, now)
    return res


def not_started(
    j: Journey, version: int, instance_id: str, trigger: Occurrence, now: datetime
) -> StepResult:
    """The decision record of a trigger that starts nothing (a historical order): an
    instance in ``skipped`` with one ``skip`` transition that says why. It has no
    stage, no timer and no action, and counts in no funnel stage."""
    st = InstanceState(
        id=instance_id,
        journey=j.name,
        version=version,
        order_id=trigger.order_id,
        status="skipped",
        started_at=now,
        exit_reason="historical order",
    )
    why = trigger.data.get("historical_reason") or "historical order"
    reason = f"not started: {why}; a past order gets no journey, survey or message"
    return StepResult(st, [Transition("skip", None, None, trigger.id, reason, now)])


def on_event(
    j: Journey, st: InstanceState, profile: Profile, ev: Occurrence, now: datetime
) -> StepResult:
    """Apply an event to a running or paused instance. ``profile`` already includes it."""
    res = StepResult(st.copied())
    s = res.state
    if s.status in ("exited", "completed", "skipped"):
        return res
    same_order = ev.order_id is None or s.order_id is None or ev.order_id == s.order_id
    if ev.type in j.exits and same_order:
        if ev.type == REFUNDED and ev.data.get("full") is False:
            res.transitions.append(
                Transition(
                    "deferred", s.stage, s.stage, ev.id, "partial refund: journey continues", now
                )
            )
        else:
            exit_instance(res, ev.id, ev.type.split(".")[2], now)
            return res
    if ev.order_id and ev.order_id == s.order_id and ev.type not in s.anchors:
        s.anchors[ev.type] = ev.at
    if (
        j.pause_on_open_ticket
        and ev.type == TICKET_OPENED
        and s.status == "running"
        and profile.open_tickets
    ):
        s.status = "paused"
        res.transitions.append(
            Transition("pause", s.stage, s.stage, ev.id, "support ticket opened", now)
        )
    # The event a blocking action waits for (matched before a resume, so a resolution
    # both resumes the journey and satisfies "wait for ticket.resolved").
    if s.pc is not None:
        action = resolve(current_stage(j, s), s.pc)
        if (
            isinstance(action, SurveyAction)
            and ev.type == SURVEY_RESPONDED
            and ev.data.get("kind", "nps") == action.kind
        ):
            s.band = ev.data.get("band")
            s.score = ev.data.get("score")
            s.comment, s.survey_id = ev.data.get("comment"), ev.data.get("survey_id")
            s.pc = next_pc(current_stage(j, s), s.pc)
            s.waiting_since = now
            s.reminded = False
            s.blocked = None
            _after_pc_moved(j, res, ev.id, now)
        elif isinstance(action, WaitForAction) and ev.type == action.event:
            s.pc = next_pc(current_stage(j, s), s.pc)
            s.waiting_since = now
            s.blocked = None
            _after_pc_moved(j, res, ev.id, now)
    elif ev.type == SURVEY_RESPONDED and ev.data.get("kind", "nps") == "nps":
        # An answer that comes after the survey wait gave up still informs advocacy.
        s.band = ev.data.get("band")
        s.score = ev.data.get("score")
        s.comment, s.survey_id = ev.data.get("comment"), ev.data.get("survey_id")
    if s.status == "paused" and ev.type == TICKET_RESOLVED and not profile.open_tickets:
        s.status = "running"
        res.transitions.append(
            Transition("resume", s.stage, s.stage, ev.id, "support tickets resolved", now)
        )
    _advance(j, res, profile, ev.id, now)
    return res


def on_timer(
    j: Journey, st: InstanceState, profile: Profile, timer: str, now: datetime
) -> StepResult:
    """A timer fired: move on if something is due (a stale timer changes nothing)."""
    res = StepResult(st.copied())
    if res.state.status == "paused":
        res.transitions.append(
            Transition("deferred", res.state.stage, res.state.stage, timer, "due while paused", now)
        )
    _advance(j, res, profile, timer, now)
    return res


def _after_pc_moved(j: Journey, res: StepResult, cause: str, now: datetime) -> None:
    s = res.state
    if s.pc is None:
        _finish_stage(j, res, cause, now)


def _finish_stage(j: Journey, res: StepResult, cause: str, now: datetime) -> None:
    s = res.state
    s.stage_index += 1
    s.pc = None
    s.waiting_since = now
    if s.stage_index >= len(j.stages):
        s.status = "completed"
        res.transitions.append(Transition("complete", s.stage, None, cause, "last stage done", now))


def _advance(j: Journey, res: StepResult, profile: Profile, cause: str, now: datetime) -> None:
    s = res.state
    for _ in range(MAX_STEPS):
        if s.status != "running":
            return
        if s.stage_index >= len(j.stages):
            s.status = "completed"
            res.transitions.append(
                Transition("complete", s.stage, None, cause, "last stage done", now)
            )
            return
        stage = current_stage(j, s)
        if s.pc is None:
            due = stage_due(j, stage, s, profile)
            if due is None or due > now:
                return
            if not holds(stage.when, profile, s, now):
                res.transitions.append(
                    Transition(
                        "skip",
                        s.stage,
                        stage.name,
                        cause,
                        f"conditions unmet: {describe(stage.when)}",
                        now,
                    )
                )
                _finish_stage(j, res, cause, now)
                continue
            res.transitions.append(
                Transition(
                    "stage",
                    s.stage,
                    stage.name,
                    cause,
                    "wait over" if stage.wait else "entered",
                    now,
                )
            )
            s.stage = stage.name
            s.waiting_since = now
            s.pc = [0]
            if resolve(stage, s.pc) is None:
                _finish_stage(j, res, cause, now)
            continue
        action = resolve(stage, s.pc)
        assert action is not None
        if not holds(action.when, profile, s, now):
            res.transitions.append(
                Transition(
                    "skip",
                    s.stage,
                    s.stage,
                    cause,
                    f"{action.type} skipped: {describe(action.when)}",
                    now,
                )
            )
        else:
            step = actions.Step(res, profile, step_key(s, s.pc), cause, now)
            match actions.run(action, step):
                case actions.Next.HALT:
                    return
                case actions.Next.DESCEND:
                    continue
                case actions.Next.ADVANCE:
                    pass
        s.pc = next_pc(stage, s.pc)
        s.waiting_since = now
        s.blocked = None
        if s.pc is None:
            _finish_stage(j, res, cause, now)
    raise RuntimeError("journey engine did not settle")  # pragma: no cover
