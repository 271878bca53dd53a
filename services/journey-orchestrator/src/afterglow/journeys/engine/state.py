"""An instance's state, and what one step of the engine produces: transitions (the
instance's history), actions to perform and the timers the state needs."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from afterglow.events.catalog import is_first_order
from afterglow.events.envelope import url_uuid5
from afterglow.journeys.engine.event_types import PLACED
from afterglow.journeys.engine.profile import Occurrence, Profile

# skipped: never started (a late order's trigger); kept as the record of that decision.
Status = Literal["running", "paused", "exited", "completed", "skipped"]


class InstanceState(BaseModel):
    id: str
    journey: str
    version: int
    order_id: str | None = None
    status: Status = "running"
    stage_index: int = 0
    stage: str | None = None  # the stage whose actions have begun (None before the first)
    # None: waiting for the stage at stage_index to become due; else the action path.
    pc: list[int] | None = None
    waiting_since: datetime | None = None  # start of the current delay / blocking action
    started_at: datetime
    anchors: dict[str, datetime] = Field(default_factory=dict)
    band: str | None = None
    score: int | None = None
    # The NPS answer's comment and survey, carried into an escalation for the helpdesk.
    comment: str | None = None
    survey_id: str | None = None
    reminded: bool = False
    blocked: str | None = None  # the step key of the survey / wait_for being waited on
    exit_reason: str | None = None
    # Whether the order that started this instance is the customer's first, decided
    # once from its order.placed by the catalog's rule (catalog.is_first_order), the
    # same rule loyalty's first-order bonus applies. None: not started by an order.
    first_order: bool | None = None

    def copied(self) -> InstanceState:
        """A copy a step may change without touching this one: the lists and dicts are
        copied, the rest is immutable. What ``model_copy(deep=True)`` gives, without
        its generic deepcopy of every datetime (a third of a timer round's Python)."""
        return self.model_copy(
            update={"pc": None if self.pc is None else list(self.pc), "anchors": dict(self.anchors)}
        )


def first_order_of(ev: Occurrence, profile: Profile) -> bool | None:
    """The trigger's first-order decision: the one rule on the count ingest set.
    ``profile`` already counts this order (it is projected first)."""
    if ev.type != PLACED:
        return None
    count = ev.data.get("customer_orders_count")
    return is_first_order(
        count if isinstance(count, int) else None,
        earlier_orders_seen=max(profile.orders_count - 1, 0),
    )


# The values a step builds (several per event: a transition per stage entered or action
# skipped, an action out, a timer wanted) are plain slotted dataclasses, not frozen ones:
# a frozen dataclass's __init__ sets each field through object.__setattr__, and they
# were ~10% of handle_event for an order.placed (58 -> 52 us). Nothing changes one
# after it is built.
@dataclass(slots=True)
class Transition:
    kind: str  # stage, skip, pause, resume, exit, complete, timeout, deferred
    from_stage: str | None
    to_stage: str | None
    cause: str
    reason: str
    at: datetime


@dataclass(slots=True)
class ActionOut:
    """An action to perform; ``step`` is stable for the instance and step, so a retry
    produces the same request id and downstream de-duplicates."""

    type: str
    step: str
    params: dict[str, Any]


@dataclass(slots=True)
class TimerSpec:
    key: str
    kind: str  # stage_due, reminder, timeout
    due_at: datetime


@dataclass
class StepResult:
    state: InstanceState
    transitions: list[Transition] = field(default_factory=list)
    actions: list[ActionOut] = field(default_factory=list)


# Ids are UUIDv5 in the URL namespace (url_uuid5: the same text as uuid.uuid5, faster).
def timer_id(instance_id: str, spec: TimerSpec) -> str:
    return url_uuid5(f"afterglow:timer:{instance_id}:{spec.key}:{spec.due_at.isoformat()}")


def instance_id_for(journey: str, trigger_event_id: str) -> str:
    return url_uuid5(f"afterglow:instance:{journey}:{trigger_event_id}")


def exit_instance(res: StepResult, cause: str, reason: str, now: datetime) -> None:
    s = res.state
    s.status = "exited"
    s.exit_reason = reason
    s.pc = None
    res.transitions.append(Transition("exit", s.stage, None, cause, reason, now))


def blocked_here(s: InstanceState, key: str) -> bool:
    """Whether the instance already waits at the step ``key`` (its survey was asked, its
    wait begun), so a re-run of the step only checks the timeout."""
    return s.blocked == key


def block(s: InstanceState, key: str, now: datetime) -> None:
    s.blocked = key
    s.waiting_since = now
    s.reminded = False
