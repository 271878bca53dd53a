"""One function per action type: what running an action does to the instance, and
whether the engine moves on to the next action, descends into a split's branch, or halts
(blocked on a survey or a wait, or exited). :func:`run` dispatches on the action's class."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime
from enum import Enum
from typing import Any

from afterglow.journeys.engine.conditions import describe, holds
from afterglow.journeys.engine.definition import (
    EscalateSupportAction,
    ExitAction,
    InviteReferralAction,
    MessageAction,
    RequestReviewAction,
    SplitAction,
    SurveyAction,
    WaitForAction,
)
from afterglow.journeys.engine.paths import children
from afterglow.journeys.engine.profile import Profile
from afterglow.journeys.engine.state import (
    ActionOut,
    InstanceState,
    StepResult,
    Transition,
    block,
    blocked_here,
    exit_instance,
)


class Next(Enum):
    ADVANCE = "advance"  # the action is done: on to the next one
    DESCEND = "descend"  # a split chose a branch with actions: run its first one
    HALT = "halt"  # blocked on a survey or a wait, or the instance exited: stop stepping


@dataclass(slots=True)  # not frozen, as engine.state's values (one per action run)
class Step:
    """The action's surroundings. ``key`` is stable for the instance and step, so a retry
    produces the same request id and downstream de-duplicates."""

    res: StepResult
    profile: Profile
    key: str
    cause: str
    now: datetime

    @property
    def state(self) -> InstanceState:
        return self.res.state


def run_split(action: SplitAction, step: Step) -> Next:
    s, now = step.state, step.now
    chosen = next(
        (i for i, b in enumerate(action.branches) if holds(b.when, step.profile, s, now)),
        len(action.branches),
    )
    label = (
        "otherwise" if chosen == len(action.branches) else describe(action.branches[chosen].when)
    )
    step.res.transitions.append(
        Transition("split", s.stage, s.stage, step.cause, f"branch {label}", now)
    )
    if children(action, chosen):
        assert s.pc is not None
        s.pc = [*s.pc, chosen, 0]
        return Next.DESCEND
    return Next.ADVANCE


def run_survey(action: SurveyAction, step: Step) -> Next:
    s, key, now = step.state, step.key, step.now
    if not blocked_here(s, key):
        step.res.actions.append(
            ActionOut("survey", key, {"kind": action.kind, "order_id": s.order_id})
        )
        block(s, key, now)
        return Next.HALT
    assert s.waiting_since is not None
    if now >= s.waiting_since + action.stop_after:
        step.res.transitions.append(
            Transition("timeout", s.stage, s.stage, step.cause, "no survey answer", now)
        )
        return Next.ADVANCE
    if (
        action.reminder_after is not None
        and not s.reminded
        and now >= s.waiting_since + action.reminder_after
    ):
        s.reminded = True
        step.res.actions.append(
            ActionOut(
                "survey",
                key + ":reminder",
                {"kind": action.kind, "order_id": s.order_id, "reminder_of": key},
            )
        )
    return Next.HALT


def run_wait_for(action: WaitForAction, step: Step) -> Next:
    s, key, now = step.state, step.key, step.now
    if not blocked_here(s, key):
        block(s, key, now)
        return Next.HALT
    assert s.waiting_since is not None
    if now >= s.waiting_since + action.timeout:
        step.res.transitions.append(
            Transition("timeout", s.stage, s.stage, step.cause, f"no {action.event}", now)
        )
        return Next.ADVANCE
    return Next.HALT


def run_exit(action: ExitAction, step: Step) -> Next:
    exit_instance(step.res, step.cause, action.reason, step.now)
    return Next.HALT


def run_message(action: MessageAction, step: Step) -> Next:
    step.res.actions.append(
        ActionOut(
            "message",
            step.key,
            {
                "kind": action.kind,
                "template": action.template,
                "category": action.category,
                "order_id": step.state.order_id,
            },
        )
    )
    return Next.ADVANCE


def run_request_review(action: RequestReviewAction, step: Step) -> Next:
    step.res.actions.append(
        ActionOut(
            "request_review",
            step.key,
            {"order_id": step.state.order_id, "reminder": action.reminder},
        )
    )
    return Next.ADVANCE


def run_invite_referral(action: InviteReferralAction, step: Step) -> Next:
    step.res.actions.append(ActionOut("invite_referral", step.key, {"score": step.state.score}))
    return Next.ADVANCE


def run_escalate_support(action: EscalateSupportAction, step: Step) -> Next:
    s = step.state
    step.res.actions.append(
        ActionOut(
            "escalate_support",
            step.key,
            {
                "reason": action.reason,
                "priority": action.priority,
                "score": s.score,
                "order_id": s.order_id,
                "comment": s.comment,
                "survey_id": s.survey_id,
            },
        )
    )
    return Next.ADVANCE


# Every member of definition.Action has its runner; a new action type without one fails
# here on its first run (KeyError), not by being silently skipped.
RUNNERS: dict[type[Any], Callable[[Any, Step], Next]] = {
    SplitAction: run_split,
    SurveyAction: run_survey,
    WaitForAction: run_wait_for,
    ExitAction: run_exit,
    MessageAction: run_message,
    RequestReviewAction: run_request_review,
    InviteReferralAction: run_invite_referral,
    EscalateSupportAction: run_escalate_support,
}


def run(action: Any, step: Step) -> Next:
    return RUNNERS[type(action)](action, step)
