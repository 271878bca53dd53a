"""The journey engine: definitions as data, and one pure step function.

Nothing here does I/O. The live service (handlers.py, workers.py) and the dry run
(:func:`simulate`) call the same functions, so a simulation and the real engine agree by
construction.

Model
-----
A journey is a list of stages. A stage may *wait* (a delay anchored on an event, with a
fallback anchor, optionally rounded to a time of day in the customer's zone), may have
*conditions* (re-checked when the wait is over; unmet -> the stage is skipped and the
skip is recorded), and runs *actions* in order. ``survey`` and ``wait_for`` block until
an event arrives or their timeout passes; ``split`` picks the first branch whose
conditions hold. Every action may carry its own conditions, re-checked right before it
runs (Klaviyo/Customer.io semantics, not only at entry).

Timers are a function of the state (:func:`timers_for`): after every step the caller
diffs the wanted timers against the pending ones, so a pause, a resume, a new anchor or
a migration can never leave a stale timer behind. A timer that fires late or stale
simply re-runs the step, which only moves when something is due.

Modules
-------
``timing`` durations and time zones; ``event_types`` the events a journey may name;
``definition`` the schema and its parsing; ``gating`` the review-gating rule;
``default`` the default journey (``default_journey.yaml``); ``profile`` the customer's
projection; ``state`` an instance and a step's result; ``conditions``; ``paths`` where an
instance is inside a stage; ``timers``; ``actions`` one function per action type;
``step`` start / event / timer; ``customer`` one event for one customer (triggers,
goals, re-entry); ``dry_run``; ``migration``. Callers import this package, not the
modules: ``from afterglow.journeys import engine``.
"""

from afterglow.journeys.engine.conditions import describe, holds
from afterglow.journeys.engine.customer import (
    GoalValue,
    Outcome,
    goal_reached,
    goal_value,
    handle_event,
    note_actions,
    triggers,
)
from afterglow.journeys.engine.default import DEFAULT_JOURNEY, DEFAULT_JOURNEY_BODY
from afterglow.journeys.engine.definition import (
    ACTION_TAGS,
    Action,
    Anchor,
    Band,
    Branch,
    Condition,
    DefinitionError,
    EscalateSupportAction,
    ExitAction,
    Goal,
    InviteReferralAction,
    Journey,
    MessageAction,
    MoneyThreshold,
    RequestReviewAction,
    SplitAction,
    Stage,
    SurveyAction,
    Trigger,
    Wait,
    WaitForAction,
    parse_journey,
)
from afterglow.journeys.engine.dry_run import SimEvent, SimRecord, simulate
from afterglow.journeys.engine.event_types import (
    CANCELLED,
    DELIVERED,
    ENGINE_EVENTS,
    FULFILLED,
    KNOWN_EVENTS,
    PLACED,
    REFUNDED,
    SURVEY_RESPONDED,
    SURVEY_SENT,
    TICKET_OPENED,
    TICKET_RESOLVED,
    EventType,
    event_type,
)
from afterglow.journeys.engine.gating import (
    ALL_BANDS,
    REVIEW_MESSAGE_KINDS,
    check_review_gating,
)
from afterglow.journeys.engine.migration import migrate
from afterglow.journeys.engine.profile import (
    MAX_REMEMBERED_ORDERS,
    MAX_REMEMBERED_TICKETS,
    Occurrence,
    Profile,
    erase,
    project,
)
from afterglow.journeys.engine.state import (
    ActionOut,
    InstanceState,
    Status,
    StepResult,
    TimerSpec,
    Transition,
    exit_instance,
    first_order_of,
    instance_id_for,
    timer_id,
)
from afterglow.journeys.engine.step import MAX_STEPS, not_started, on_event, on_timer, start
from afterglow.journeys.engine.timers import stage_due, timers_for
from afterglow.journeys.engine.timing import (
    MAX_DURATION,
    Duration,
    format_duration,
    parse_duration,
)

__all__ = [
    "ACTION_TAGS",
    "ALL_BANDS",
    "CANCELLED",
    "DEFAULT_JOURNEY",
    "DEFAULT_JOURNEY_BODY",
    "DELIVERED",
    "ENGINE_EVENTS",
    "FULFILLED",
    "KNOWN_EVENTS",
    "MAX_DURATION",
    "MAX_REMEMBERED_ORDERS",
    "MAX_REMEMBERED_TICKETS",
    "MAX_STEPS",
    "PLACED",
    "REFUNDED",
    "REVIEW_MESSAGE_KINDS",
    "SURVEY_RESPONDED",
    "SURVEY_SENT",
    "TICKET_OPENED",
    "TICKET_RESOLVED",
    "Action",
    "ActionOut",
    "Anchor",
    "Band",
    "Branch",
    "Condition",
    "DefinitionError",
    "Duration",
    "EscalateSupportAction",
    "EventType",
    "ExitAction",
    "Goal",
    "GoalValue",
    "InstanceState",
    "InviteReferralAction",
    "Journey",
    "MessageAction",
    "MoneyThreshold",
    "Occurrence",
    "Outcome",
    "Profile",
    "RequestReviewAction",
    "SimEvent",
    "SimRecord",
    "SplitAction",
    "Stage",
    "Status",
    "StepResult",
    "SurveyAction",
    "TimerSpec",
    "Transition",
    "Trigger",
    "Wait",
    "WaitForAction",
    "check_review_gating",
    "describe",
    "erase",
    "event_type",
    "exit_instance",
    "first_order_of",
    "format_duration",
    "goal_reached",
    "goal_value",
    "handle_event",
    "holds",
    "instance_id_for",
    "migrate",
    "not_started",
    "note_actions",
    "on_event",
    "on_timer",
    "parse_duration",
    "parse_journey",
    "project",
    "simulate",
    "stage_due",
    "start",
    "timer_id",
    "timers_for",
    "triggers",
]
