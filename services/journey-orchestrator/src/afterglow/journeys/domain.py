"""The journey engine: definitions as data, and one pure step function.

Nothing here does I/O. The live service (handlers.py, workers.py) and the dry run
(``simulate``) call the same functions, so a simulation and the real engine agree by
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
simply re-runs :func:`advance`, which only moves when something is due.
"""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from typing import Annotated, Any, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import (
    BaseModel,
    BeforeValidator,
    ConfigDict,
    Field,
    PlainSerializer,
    ValidationError,
    field_validator,
    model_validator,
)

from afterglow.events import catalog as c
from afterglow.events.catalog import is_first_order

# --- durations and event names ---------------------------------------------------------

_DURATION = re.compile(
    r"^P(?:(?P<w>\d+)W)?(?:(?P<d>\d+)D)?(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)


# A delay, window or timeout beyond ten years is a typo; unbounded, a few more digits
# overflowed timedelta (or the datetime a timer adds it to) with a 500.
MAX_DURATION = timedelta(days=3650)


def parse_duration(value: Any) -> timedelta:
    """ISO-8601 duration limited to weeks, days, hours, minutes and seconds: months and
    years have no fixed length, and a delay must mean the same thing in every month."""
    if isinstance(value, timedelta):
        return value
    if not isinstance(value, str):
        raise ValueError("a duration is an ISO-8601 string such as P3D or PT1S")
    m = _DURATION.match(value.strip().upper())
    if not m or value.strip().upper() in ("P", "PT"):
        raise ValueError(f"{value!r} is not an ISO-8601 duration (W, D, H, M, S units only)")
    g = {k: float(v) if v else 0.0 for k, v in m.groupdict().items()}
    try:
        td = timedelta(weeks=g["w"], days=g["d"], hours=g["h"], minutes=g["m"], seconds=g["s"])
    except OverflowError:
        td = MAX_DURATION * 2  # beyond what timedelta holds: refused just below
    if td > MAX_DURATION:
        raise ValueError(f"{value!r} is longer than {MAX_DURATION.days} days")
    return td


def format_duration(td: timedelta) -> str:
    total = td.total_seconds()
    days, rest = divmod(int(total), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    frac = total - int(total)
    out = "P" + (f"{days}D" if days else "")
    t = (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes else "")
    if seconds or frac:
        s = seconds + frac
        t += f"{s:g}S"
    if t:
        out += "T" + t
    return out if out != "P" else "PT0S"


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
]

# The events the engine consumes: what a journey may be triggered by, anchor a wait on,
# wait for, exit on or count as its goal, and what the dry run accepts. The one list:
# the engine's consumer group subscribes to exactly these (handlers.py), so a journey
# can never wait for an event that no handler delivers.
ENGINE_EVENTS: tuple[type[c.EventData], ...] = (
    c.OrderPlaced,
    c.OrderFulfilled,
    c.OrderDelivered,
    c.OrderRefunded,
    c.OrderCancelled,
    c.TicketOpened,
    c.TicketUpdated,
    c.TicketResolved,
    c.SurveySent,
    c.SurveyResponded,
    c.ReviewSubmitted,
    c.ReviewPublished,
    c.PointsEarned,
    c.PointsRedeemed,
    c.TierChanged,
    c.ReferralCodeIssued,
    c.ReferralConverted,
    c.CustomerUnsubscribed,
)

# Short names ("order.delivered") are accepted and normalised to the catalog type.
KNOWN_EVENTS = {
    re.sub(r"\.v\d+$", "", cls.model_fields["type"].default.removeprefix("afterglow."))
    for cls in ENGINE_EVENTS
}


def event_type(name: str) -> str:
    n = name.strip()
    short = n.removeprefix("afterglow.")
    short = re.sub(r"\.v\d+$", "", short)
    if short not in KNOWN_EVENTS:
        raise ValueError(f"unknown event type {name!r}")
    return f"afterglow.{short}.v1"


def _event_type(value: Any) -> Any:
    return event_type(value) if isinstance(value, str) else value


EventType = Annotated[str, BeforeValidator(_event_type)]

PLACED = "afterglow.order.placed.v1"
FULFILLED = "afterglow.order.fulfilled.v1"
DELIVERED = "afterglow.order.delivered.v1"
REFUNDED = "afterglow.order.refunded.v1"
CANCELLED = "afterglow.order.cancelled.v1"
TICKET_OPENED = "afterglow.ticket.opened.v1"
TICKET_RESOLVED = "afterglow.ticket.resolved.v1"
SURVEY_SENT = "afterglow.survey.sent.v1"
SURVEY_RESPONDED = "afterglow.survey.responded.v1"

# --- definition ------------------------------------------------------------------------


class _Strict(BaseModel):
    # extra="forbid": a misspelt key is an error at its path, not a silently ignored rule.
    model_config = ConfigDict(extra="forbid", frozen=True)


class MoneyThreshold(_Strict):
    amount: int = Field(ge=0, description="minor units")
    currency: str = Field(pattern=r"^[A-Z]{3}$")


Band = Literal["promoter", "passive", "detractor"]


class Condition(_Strict):
    """Every field set must hold (AND). Evaluated against the profile and the instance."""

    first_order: bool | None = None
    repeat_order: bool | None = None
    open_ticket: bool | None = None
    nps_band: list[Band | Literal["none"]] | None = None
    spend_above: MoneyThreshold | None = None
    tier: list[str] | None = None
    surveyed_within: Duration | None = None
    not_surveyed_within: Duration | None = None
    consent: bool | None = None


class Anchor(_Strict):
    delay: Duration
    after: EventType


_WAIT_TEXT = re.compile(r"^\s*(\S+)\s+after\s+(\S+)\s*$", re.I)


class Wait(_Strict):
    """``delay`` after ``after`` (an event of this instance's order, or the moment the
    stage became current when ``after`` is omitted); ``fallback`` when that event never
    comes (e.g. fulfilled + P5D when no delivery is reported); ``at`` rounds the due time
    up to a time of day in the customer's time zone."""

    delay: Duration
    after: EventType | None = None
    fallback: Anchor | None = None
    at: time | None = None

    @model_validator(mode="before")
    @classmethod
    def _from_text(cls, value: Any) -> Any:
        # "P3D after order.delivered or P5D after order.fulfilled"
        if isinstance(value, str):
            parts = re.split(r"\s+or\s+", value.strip())
            out: dict[str, Any] = {}
            for i, part in enumerate(parts[:2]):
                m = _WAIT_TEXT.match(part)
                if not m:
                    if i == 0 and len(parts) == 1:
                        return {"delay": part.strip()}
                    raise ValueError(f"{part!r}: expected '<duration> after <event type>'")
                if i == 0:
                    out.update(delay=m.group(1), after=m.group(2))
                else:
                    out["fallback"] = {"delay": m.group(1), "after": m.group(2)}
            return out
        return value


class _Action(_Strict):
    when: Condition | None = None


class MessageAction(_Action):
    type: Literal["message"] = "message"
    kind: str = Field(pattern=r"^[a-z_]+$")
    template: str | None = None
    category: Literal["transactional", "marketing"] = "marketing"


class SurveyAction(_Action):
    type: Literal["survey"] = "survey"
    kind: Literal["nps", "csat", "ces"] = "nps"
    reminder_after: Duration | None = None
    stop_after: Duration = Field(description="stop waiting for an answer after this")


class RequestReviewAction(_Action):
    """Ask for a review of the order. Feedback owns the review link and sends the message
    (``review.requested``), so the ask reaches every customer through one path."""

    type: Literal["request_review"] = "request_review"
    reminder: bool = False


class InviteReferralAction(_Action):
    type: Literal["invite_referral"] = "invite_referral"


class EscalateSupportAction(_Action):
    type: Literal["escalate_support"] = "escalate_support"
    reason: str = "detractor"
    priority: Literal["normal", "high", "urgent"] = "high"


class WaitForAction(_Action):
    type: Literal["wait_for"] = "wait_for"
    event: EventType
    timeout: Duration


class ExitAction(_Action):
    type: Literal["exit"] = "exit"
    reason: str = "exit"


class Branch(_Strict):
    when: Condition
    actions: list[Action] = Field(default_factory=list)


class SplitAction(_Action):
    type: Literal["split"] = "split"
    branches: list[Branch] = Field(min_length=1)
    otherwise: list[Action] = Field(default_factory=list)


Action = Annotated[
    MessageAction
    | SurveyAction
    | RequestReviewAction
    | InviteReferralAction
    | EscalateSupportAction
    | WaitForAction
    | ExitAction
    | SplitAction,
    Field(discriminator="type"),
]
ACTION_TAGS = {
    "message",
    "survey",
    "request_review",
    "invite_referral",
    "escalate_support",
    "wait_for",
    "exit",
    "split",
}


class Stage(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_]{0,62}$")
    wait: Wait | None = None
    when: Condition | None = None
    actions: list[Action] = Field(default_factory=list)


class Trigger(_Strict):
    events: list[EventType] = Field(default_factory=lambda: [PLACED], min_length=1)
    filter: Condition | None = None


class Goal(_Strict):
    event: EventType = PLACED
    within: Duration


class Journey(_Strict):
    name: str = Field(pattern=r"^[a-z][a-z0-9_-]{0,62}$")
    description: str | None = None
    trigger: Trigger = Field(default_factory=Trigger)
    exits: list[EventType] = Field(default_factory=lambda: [REFUNDED, CANCELLED])
    pause_on_open_ticket: bool = True
    # restart: a new trigger exits the running instance and starts one for the new order
    # ignore: a new trigger is dropped while one runs; parallel: one instance per order.
    reentry: Literal["restart", "ignore", "parallel"] = "restart"
    goal: Goal | None = None
    timezone: str = "UTC"
    stages: list[Stage] = Field(min_length=1)

    @field_validator("timezone")
    @classmethod
    def _tz(cls, v: str) -> str:
        _zone(v, strict=True)
        return v

    @model_validator(mode="after")
    def _unique_stages(self) -> Journey:
        seen: set[str] = set()
        for s in self.stages:
            if s.name in seen:
                raise ValueError(f"stage name {s.name!r} is used twice")
            seen.add(s.name)
        return self


Branch.model_rebuild()
SplitAction.model_rebuild()


class DefinitionError(ValueError):
    """A journey definition that does not validate; ``path`` points at the culprit."""

    def __init__(self, path: str, message: str, errors: list[dict[str, str]]) -> None:
        super().__init__(f"{path}: {message}" if path else message)
        self.path = path
        self.message = message
        self.errors = errors


def _path(loc: tuple[Any, ...]) -> str:
    out = ""
    prev_int = False
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
            prev_int = True
            continue
        # Discriminated unions put the tag in the location; a reader wants
        # stages[2].actions[0].delay, not stages[2].actions[0].message.delay.
        if prev_int and part in ACTION_TAGS:
            prev_int = False
            continue
        if part.startswith("function-") or part in ("time", "timedelta"):
            continue
        out += f".{part}" if out else str(part)
        prev_int = False
    return out


def parse_journey(body: Any) -> Journey:
    """Validate a definition (a dict, or JSON/YAML text); raises :class:`DefinitionError`."""
    if isinstance(body, str | bytes):
        import yaml  # YAML is a superset of JSON: one parser for both

        try:
            body = yaml.safe_load(body)
        except yaml.YAMLError as exc:
            raise DefinitionError("", f"not valid YAML/JSON: {exc}", []) from exc
    try:
        return Journey.model_validate(body)
    except ValidationError as exc:
        errs = [{"field": _path(tuple(e["loc"])), "message": e["msg"]} for e in exc.errors()]
        first = errs[0]
        raise DefinitionError(first["field"], first["message"], errs) from exc


# --- review gating (DOMAIN.md, "Law") ----------------------------------------------------

REVIEW_MESSAGE_KINDS = frozenset({"review_request", "review_reminder"})
ALL_BANDS = frozenset({"promoter", "passive", "detractor", "none"})


def _on_sentiment(cond: Condition | None) -> bool:
    return cond is not None and cond.nps_band is not None and set(cond.nps_band) < ALL_BANDS


def _asks_for_review(action: Any) -> bool:
    return isinstance(action, RequestReviewAction) or (
        isinstance(action, MessageAction) and action.kind in REVIEW_MESSAGE_KINDS
    )


def check_review_gating(journey: Journey) -> None:
    """Refuse a definition that asks for reviews depending on how the customer feels.

    Asking only happy customers ("review gating") breaks the FTC's reviews rule and
    Google's and the review platforms' policies. Caught: a review ask under an NPS-band
    condition (its own, its stage's, a split branch's, or the ``otherwise`` of a split on
    bands), and an exit on an NPS band placed before a review ask, which drops unhappy
    customers before they are asked. Waiting on a band (service recovery first) is fine.
    Raises :class:`DefinitionError` pointing at the culprit."""
    gated_exits: list[str] = []

    def walk(actions: list[Any], path: str, gated: bool) -> None:
        for i, action in enumerate(actions):
            here = f"{path}[{i}]"
            on_band = gated or _on_sentiment(action.when)
            if _asks_for_review(action):
                if on_band:
                    _gating(f"{here}", "asks for a review only for some NPS bands")
                if gated_exits:
                    _gating(
                        gated_exits[0],
                        f"exits customers by NPS band before the review ask at {here}",
                    )
            elif isinstance(action, ExitAction) and on_band:
                gated_exits.append(here)
            elif isinstance(action, SplitAction):
                banded = any(_on_sentiment(b.when) for b in action.branches)
                for j, branch in enumerate(action.branches):
                    walk(
                        branch.actions,
                        f"{here}.branches[{j}].actions",
                        on_band or _on_sentiment(branch.when),
                    )
                walk(action.otherwise, f"{here}.otherwise", on_band or banded)

    for n, stage in enumerate(journey.stages):
        walk(stage.actions, f"stages[{n}].actions", _on_sentiment(stage.when))


def _gating(path: str, what: str) -> None:
    message = (
        f"{what}: that is review gating, which the FTC reviews rule and the review "
        "platforms forbid; ask every customer (a band may still delay the ask)"
    )
    raise DefinitionError(path, message, [{"field": path, "message": message}])


# --- the default journey (DESIGN.md, "The journey") ------------------------------------

DEFAULT_JOURNEY_BODY: dict[str, Any] = {
    "name": "default",
    "description": "Onboarding, check-in, survey and advocacy (DESIGN.md).",
    "trigger": {"events": ["order.placed"]},
    "exits": ["order.refunded", "order.cancelled"],
    "reentry": "restart",
    "goal": {"event": "order.placed", "within": "P30D"},
    "stages": [
        {
            "name": "onboarding",
            "actions": [
                {
                    "type": "split",
                    "branches": [
                        {
                            "when": {"first_order": True},
                            "actions": [
                                {"type": "message", "kind": "welcome", "category": "transactional"}
                            ],
                        }
                    ],
                    "otherwise": [
                        {"type": "message", "kind": "thank_you", "category": "transactional"}
                    ],
                }
            ],
        },
        {
            "name": "check_in",
            "wait": "P3D after order.delivered or P5D after order.fulfilled",
            "actions": [{"type": "message", "kind": "check_in"}],
        },
        {
            "name": "survey",
            "wait": "P7D after order.delivered or P9D after order.fulfilled",
            "when": {"open_ticket": False, "not_surveyed_within": "P30D"},
            "actions": [
                {"type": "survey", "kind": "nps", "reminder_after": "P3D", "stop_after": "P7D"},
                {
                    # Service recovery first: the review ask (next stage) waits until the
                    # escalated ticket is resolved.
                    "type": "split",
                    "branches": [
                        {
                            "when": {"nps_band": ["detractor"]},
                            "actions": [
                                {"type": "escalate_support", "reason": "detractor"},
                                {"type": "wait_for", "event": "ticket.resolved", "timeout": "P14D"},
                            ],
                        }
                    ],
                },
            ],
        },
        {
            "name": "advocacy",
            "wait": "P14D after order.delivered or P16D after order.fulfilled",
            "actions": [
                # Every customer is asked, whatever they answered: no review gating.
                {"type": "request_review"},
                {
                    "type": "split",
                    "branches": [
                        {
                            "when": {"nps_band": ["promoter"]},
                            "actions": [{"type": "invite_referral"}],
                        },
                        {
                            "when": {"nps_band": ["passive"]},
                            "actions": [{"type": "message", "kind": "loyalty_nudge"}],
                        },
                    ],
                },
                # One reminder a week later, as Yotpo, Stamped and Loox do; feedback does
                # not send it to someone who has reviewed the order meanwhile.
                {"type": "wait_for", "event": "review.submitted", "timeout": "P7D"},
                {"type": "request_review", "reminder": True},
            ],
        },
    ],
}
DEFAULT_JOURNEY = parse_journey(DEFAULT_JOURNEY_BODY)
check_review_gating(DEFAULT_JOURNEY)


# --- profile ---------------------------------------------------------------------------


class Profile(BaseModel):
    """The projection of a customer the conditions read."""

    orders_count: int = 0
    # The first currency the customer spent in and the spend in it (kept for the
    # profile's columns and older readers); ``spent`` has every currency, each apart.
    total_spent: int = 0
    currency: str | None = None
    spent: dict[str, int] = Field(default_factory=dict)
    first_order_at: datetime | None = None
    last_order_at: datetime | None = None
    open_tickets: list[str] = Field(default_factory=list)
    resolved_tickets: list[str] = Field(default_factory=list)
    consent: bool = True
    timezone: str | None = None
    tier: str | None = None
    last_surveyed_at: datetime | None = None
    last_nps: int | None = None
    last_band: str | None = None
    # order id -> {event type: when}; kept so an event that arrives before its order's
    # placed (out of order) still anchors the instance that placed starts later.
    orders: dict[str, dict[str, datetime]] = Field(default_factory=dict)

    def spent_in(self, currency: str) -> int:
        """Spend in one currency (minor units); amounts in others never count."""
        if currency in self.spent:
            return self.spent[currency]
        # A profile projected before ``spent`` existed knows its first currency only.
        return self.total_spent if self.currency == currency else 0


MAX_REMEMBERED_TICKETS = 50
MAX_REMEMBERED_ORDERS = 30


@dataclass(frozen=True)
class Occurrence:
    """An event as the engine sees it: ``at`` is when it happened in the world."""

    id: str
    type: str
    at: datetime
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def order_id(self) -> str | None:
        v = self.data.get("order_id")
        return str(v) if v is not None else None


def project(profile: Profile, ev: Occurrence) -> Profile:
    """Apply one event to the profile (pure; the inbox guarantees once per event id)."""
    p = profile.model_copy(deep=True)
    d = ev.data
    oid = ev.order_id
    if oid and ev.type.startswith("afterglow.order."):
        seen = p.orders.setdefault(oid, {})
        seen.setdefault(ev.type, ev.at)
        if len(p.orders) > MAX_REMEMBERED_ORDERS:
            oldest = min(p.orders, key=lambda k: min(p.orders[k].values()))
            del p.orders[oldest]
    if ev.type == PLACED:
        p.orders_count += 1
        if isinstance(d.get("customer_orders_count"), int):
            p.orders_count = max(p.orders_count, d["customer_orders_count"])
        # Shop money when the order states it (the shop's own currency), each currency
        # summed apart: 100 EUR and 100 USD are not 200 of anything.
        total = d.get("shop_total") or d.get("total") or {}
        cur, amount = total.get("currency"), int(total.get("amount", 0))
        if cur:
            if not p.spent and p.currency is not None:
                p.spent = {p.currency: p.total_spent}  # a profile from before ``spent``
            p.spent[cur] = p.spent.get(cur, 0) + amount
            if p.currency in (None, cur):
                p.currency = cur
                p.total_spent += amount
        p.first_order_at = min(filter(None, [p.first_order_at, ev.at]))
        p.last_order_at = max(filter(None, [p.last_order_at, ev.at]))
        cust = d.get("customer") or {}
        if cust.get("timezone"):
            p.timezone = cust["timezone"]
        if cust.get("accepts_marketing") is not None:
            p.consent = bool(cust["accepts_marketing"])
    elif ev.type == TICKET_OPENED:
        tid = str(d.get("ticket_id"))
        # A resolution that overtook its opening closes it at once.
        if tid not in p.open_tickets and tid not in p.resolved_tickets:
            p.open_tickets.append(tid)
    elif ev.type == TICKET_RESOLVED:
        tid = str(d.get("ticket_id"))
        if tid in p.open_tickets:
            p.open_tickets.remove(tid)
        if tid not in p.resolved_tickets:
            p.resolved_tickets = [*p.resolved_tickets, tid][-MAX_REMEMBERED_TICKETS:]
    elif ev.type == SURVEY_SENT:
        p.last_surveyed_at = max(filter(None, [p.last_surveyed_at, ev.at]))
    elif ev.type == SURVEY_RESPONDED:
        if d.get("kind", "nps") == "nps":
            p.last_nps = d.get("score")
            p.last_band = d.get("band")
    elif ev.type == "afterglow.tier.changed.v1":
        p.tier = d.get("to_tier")
    elif ev.type == "afterglow.customer.unsubscribed.v1":
        p.consent = False
    return p


def erase(profile: Profile) -> Profile:
    """GDPR erasure: drop what identifies or describes the person; counts stay (aggregates)."""
    return Profile(orders_count=profile.orders_count, consent=False)


def _zone(name: str | None, strict: bool = False) -> ZoneInfo:
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError) as exc:
        if strict:
            raise ValueError(f"unknown time zone {name!r}") from exc
        return ZoneInfo("UTC")


# --- instance state --------------------------------------------------------------------

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


@dataclass(frozen=True)
class Transition:
    kind: str  # stage, skip, pause, resume, exit, complete, timeout, deferred
    from_stage: str | None
    to_stage: str | None
    cause: str
    reason: str
    at: datetime


@dataclass(frozen=True)
class ActionOut:
    """An action to perform; ``step`` is stable for the instance and step, so a retry
    produces the same request id and downstream de-duplicates."""

    type: str
    step: str
    params: dict[str, Any]


@dataclass(frozen=True)
class TimerSpec:
    key: str
    kind: str  # stage_due, reminder, timeout
    due_at: datetime


@dataclass
class StepResult:
    state: InstanceState
    transitions: list[Transition] = field(default_factory=list)
    actions: list[ActionOut] = field(default_factory=list)


def timer_id(instance_id: str, spec: TimerSpec) -> str:
    return str(
        uuid.uuid5(
            uuid.NAMESPACE_URL,
            f"afterglow:timer:{instance_id}:{spec.key}:{spec.due_at.isoformat()}",
        )
    )


def instance_id_for(journey: str, trigger_event_id: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"afterglow:instance:{journey}:{trigger_event_id}"))


# --- conditions ------------------------------------------------------------------------


def holds(cond: Condition | None, profile: Profile, st: InstanceState, now: datetime) -> bool:
    if cond is None:
        return True
    # An order's instance carries its trigger's decision; loyalty decides with the same
    # rule on the same field, so the welcome and the first-order bonus agree. Without
    # one (a journey started by a ticket), the profile's count decides.
    first = st.first_order if st.first_order is not None else profile.orders_count <= 1
    if cond.first_order is not None and cond.first_order != first:
        return False
    if cond.repeat_order is not None and cond.repeat_order == first:
        return False
    if cond.open_ticket is not None and cond.open_ticket != bool(profile.open_tickets):
        return False
    if cond.nps_band is not None:
        band = st.band or "none"
        if band not in cond.nps_band:
            return False
    if (
        cond.spend_above is not None
        and profile.spent_in(cond.spend_above.currency) <= cond.spend_above.amount
    ):
        return False
    if cond.tier is not None and profile.tier not in cond.tier:
        return False
    recent = profile.last_surveyed_at is not None and (
        cond.surveyed_within is not None and profile.last_surveyed_at >= now - cond.surveyed_within
    )
    if cond.surveyed_within is not None and not recent:
        return False
    if cond.not_surveyed_within is not None and (
        profile.last_surveyed_at is not None
        and profile.last_surveyed_at >= now - cond.not_surveyed_within
    ):
        return False
    return not (cond.consent is not None and cond.consent != profile.consent)


def describe(cond: Condition | None) -> str:
    if cond is None:
        return "always"
    return ", ".join(f"{k}={v}" for k, v in cond.model_dump(exclude_none=True, mode="json").items())


# --- time ------------------------------------------------------------------------------


def _at_local(due: datetime, at: time | None, tz: str | None) -> datetime:
    """Round ``due`` up to the next ``at`` o'clock in the customer's zone."""
    if at is None:
        return due
    zone = _zone(tz)
    local = due.astimezone(zone)
    candidate = datetime.combine(local.date(), at, tzinfo=zone)
    if candidate < local:
        candidate = datetime.combine(local.date() + timedelta(days=1), at, tzinfo=zone)
    return candidate.astimezone(UTC)


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
    return _at_local(due, w.at, profile.timezone or j.timezone)


# --- action paths ----------------------------------------------------------------------


def _children(action: Any, branch: int) -> list[Any]:
    if isinstance(action, SplitAction):
        return (
            action.branches[branch].actions if branch < len(action.branches) else action.otherwise
        )
    return []


def _resolve(stage: Stage, pc: list[int]) -> Any | None:
    """pc = [i] or [i, branch, j, branch, k, ...]."""
    actions: list[Any] = stage.actions
    action = None
    for depth in range(0, len(pc), 2):
        i = pc[depth]
        if i >= len(actions):
            return None
        action = actions[i]
        if depth + 1 < len(pc):
            actions = _children(action, pc[depth + 1])
    return action


def _next_pc(stage: Stage, pc: list[int]) -> list[int] | None:
    p = list(pc)
    p[-1] += 1
    while True:
        if _resolve(stage, p) is not None:
            return p
        if len(p) == 1:
            return None
        p = p[:-2]
        p[-1] += 1


def _step_key(st: InstanceState, pc: list[int]) -> str:
    return f"{st.stage_index}:{'.'.join(map(str, pc))}"


# --- the engine ------------------------------------------------------------------------

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
            _exit(res, trigger.id, f"{ex.split('.')[2]} before start", now)
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
    res = StepResult(st.model_copy(deep=True))
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
            _exit(res, ev.id, ev.type.split(".")[2], now)
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
        action = _resolve(_stage(j, s), s.pc)
        if (
            isinstance(action, SurveyAction)
            and ev.type == SURVEY_RESPONDED
            and ev.data.get("kind", "nps") == action.kind
        ):
            s.band = ev.data.get("band")
            s.score = ev.data.get("score")
            s.comment, s.survey_id = ev.data.get("comment"), ev.data.get("survey_id")
            s.pc = _next_pc(_stage(j, s), s.pc)
            s.waiting_since = now
            s.reminded = False
            s.blocked = None
            _after_pc_moved(j, res, ev.id, now)
        elif isinstance(action, WaitForAction) and ev.type == action.event:
            s.pc = _next_pc(_stage(j, s), s.pc)
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
    res = StepResult(st.model_copy(deep=True))
    if res.state.status == "paused":
        res.transitions.append(
            Transition("deferred", res.state.stage, res.state.stage, timer, "due while paused", now)
        )
    _advance(j, res, profile, timer, now)
    return res


def _stage(j: Journey, s: InstanceState) -> Stage:
    return j.stages[s.stage_index]


def _exit(res: StepResult, cause: str, reason: str, now: datetime) -> None:
    s = res.state
    s.status = "exited"
    s.exit_reason = reason
    s.pc = None
    res.transitions.append(Transition("exit", s.stage, None, cause, reason, now))


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
        stage = _stage(j, s)
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
            if _resolve(stage, s.pc) is None:
                _finish_stage(j, res, cause, now)
            continue
        action = _resolve(stage, s.pc)
        assert action is not None
        key = _step_key(s, s.pc)
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
        elif isinstance(action, SplitAction):
            chosen = next(
                (i for i, b in enumerate(action.branches) if holds(b.when, profile, s, now)),
                len(action.branches),
            )
            children = _children(action, chosen)
            label = (
                "otherwise"
                if chosen == len(action.branches)
                else describe(action.branches[chosen].when)
            )
            res.transitions.append(
                Transition("split", s.stage, s.stage, cause, f"branch {label}", now)
            )
            if children:
                s.pc = [*s.pc, chosen, 0]
                continue
        elif isinstance(action, SurveyAction):
            if not _blocked_here(s, key):
                res.actions.append(
                    ActionOut("survey", key, {"kind": action.kind, "order_id": s.order_id})
                )
                _block(s, key, now)
                return
            assert s.waiting_since is not None
            if now >= s.waiting_since + action.stop_after:
                res.transitions.append(
                    Transition("timeout", s.stage, s.stage, cause, "no survey answer", now)
                )
            else:
                if (
                    action.reminder_after is not None
                    and not s.reminded
                    and now >= s.waiting_since + action.reminder_after
                ):
                    s.reminded = True
                    res.actions.append(
                        ActionOut(
                            "survey",
                            key + ":reminder",
                            {"kind": action.kind, "order_id": s.order_id, "reminder_of": key},
                        )
                    )
                return
        elif isinstance(action, WaitForAction):
            if not _blocked_here(s, key):
                _block(s, key, now)
                return
            assert s.waiting_since is not None
            if now >= s.waiting_since + action.timeout:
                res.transitions.append(
                    Transition("timeout", s.stage, s.stage, cause, f"no {action.event}", now)
                )
            else:
                return
        elif isinstance(action, ExitAction):
            _exit(res, cause, action.reason, now)
            return
        elif isinstance(action, MessageAction):
            res.actions.append(
                ActionOut(
                    "message",
                    key,
                    {
                        "kind": action.kind,
                        "template": action.template,
                        "category": action.category,
                        "order_id": s.order_id,
                    },
                )
            )
        elif isinstance(action, RequestReviewAction):
            res.actions.append(
                ActionOut(
                    "request_review", key, {"order_id": s.order_id, "reminder": action.reminder}
                )
            )
        elif isinstance(action, InviteReferralAction):
            res.actions.append(ActionOut("invite_referral", key, {"score": s.score}))
        elif isinstance(action, EscalateSupportAction):
            res.actions.append(
                ActionOut(
                    "escalate_support",
                    key,
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
        s.pc = _next_pc(stage, s.pc)
        s.waiting_since = now
        s.blocked = None
        if s.pc is None:
            _finish_stage(j, res, cause, now)
    raise RuntimeError("journey engine did not settle")  # pragma: no cover


def _blocked_here(s: InstanceState, key: str) -> bool:
    return s.blocked == key


def _block(s: InstanceState, key: str, now: datetime) -> None:
    s.blocked = key
    s.waiting_since = now
    s.reminded = False


def timers_for(j: Journey, st: InstanceState, profile: Profile) -> list[TimerSpec]:
    """The timers this state needs (none while paused or finished)."""
    if st.status != "running" or st.stage_index >= len(j.stages):
        return []
    stage = _stage(j, st)
    if st.pc is None:
        due = stage_due(j, stage, st, profile)
        return [] if due is None else [TimerSpec(f"{st.stage_index}:due", "stage_due", due)]
    action = _resolve(stage, st.pc)
    key = _step_key(st, st.pc)
    if st.waiting_since is None or not _blocked_here(st, key):
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


# --- triggering, goals, the whole customer --------------------------------------------


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
                _exit(r, ev.id, "superseded by a new order", now)
        iid = instance_id_for(name, ev.id)
        if any(i.id == iid for i in instances):
            continue
        res = start(j, version, iid, ev, prof, now)
        out.results.append(res)
        out.started.append(iid)
    out.profile = note_actions(prof, out.results, now)
    return out


# --- dry run ---------------------------------------------------------------------------


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


# --- migration between versions --------------------------------------------------------


def migrate(
    old: Journey, new: Journey, new_version: int, st: InstanceState
) -> tuple[InstanceState | None, str]:
    """Where ``st`` lands in ``new``, or None and why it cannot move."""
    if st.stage_index >= len(old.stages):
        return None, "already past the last stage"
    names = [s.name for s in new.stages]
    here = old.stages[st.stage_index].name
    if here not in names:
        return None, f"stage {here!r} does not exist in v{new_version}"
    idx = names.index(here)
    moved = st.model_copy(deep=True, update={"version": new_version, "stage_index": idx})
    if st.pc is None:
        return moved, f"waiting for {here!r}; delay recomputed from the same anchors"
    a_old = _resolve(old.stages[st.stage_index], st.pc)
    a_new = _resolve(new.stages[idx], st.pc)
    if a_old is None or a_new is None or a_old.type != a_new.type:
        return None, f"in the middle of {here!r} and its actions differ in v{new_version}"
    return moved, f"in {here!r} at the same {a_new.type} step"
