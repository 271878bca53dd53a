"""The definition schema: a journey as data (stages, waits, conditions, actions), and
its parsing into a validated :class:`Journey` with errors that point at their path."""

from __future__ import annotations

import re
from datetime import time
from typing import Annotated, Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)

from afterglow.journeys.engine.event_types import CANCELLED, PLACED, REFUNDED, EventType
from afterglow.journeys.engine.timing import Duration, zone_of


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
        zone_of(v, strict=True)
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
