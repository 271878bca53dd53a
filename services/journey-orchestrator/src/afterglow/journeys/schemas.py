"""The JSON answers of the journey routes, field by field (the OpenAPI document and a
client generated from it read these), built by :mod:`.service` and rendered by the
routes.

A journey definition and an action's parameters are free-form by design (the
definition is the tenant's document, validated by the engine; an action carries the
parameters its type has): their envelopes are typed, the free part is one described
mapping."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, PlainSerializer, WithJsonSchema

# An instant as these routes have always written it: ``datetime.isoformat()``
# ("2026-03-02T14:30:00+00:00"). Pydantic's own rendering ends a UTC instant in "Z";
# a model must not change the text a client already parses or compares.
Moment = Annotated[
    datetime,
    PlainSerializer(lambda v: v.isoformat(), return_type=str, when_used="json"),
    WithJsonSchema({"type": "string", "format": "date-time"}),
]


# --- a customer's journey ----------------------------------------------------------------


class Amount(BaseModel):
    amount: int = Field(description="Minor units (cents)")
    currency: str | None


class CurrencyAmount(BaseModel):
    currency: str
    amount: int = Field(description="Minor units (cents)")


class ProfileOut(BaseModel):
    """The projection the journeys' conditions read."""

    orders_count: int
    total_spent: Amount = Field(
        description="Spend in the first currency the customer paid in (see spent_by_currency)"
    )
    spent_by_currency: list[CurrencyAmount] = Field(
        description="Spend per currency, each apart: never summed across currencies"
    )
    first_order_at: Moment | None
    last_order_at: Moment | None
    open_tickets: int = Field(description="Support tickets open now")
    consent: bool = Field(description="Whether the customer accepts marketing")
    timezone: str | None = Field(description="IANA name; quiet hours are computed in it")
    tier: str | None = Field(description="Loyalty tier, as loyalty last announced it")
    last_surveyed_at: Moment | None
    last_nps: int | None = Field(description="The last NPS score given (0-10)")
    last_band: str | None = Field(description="promoter, passive or detractor")


class TimerOut(BaseModel):
    id: str = Field(description="Stable per instance, step and due time")
    due_at: Moment
    kind: str = Field(description="stage_due, reminder or timeout")


class TransitionOut(BaseModel):
    kind: str = Field(
        description="stage, skip, pause, resume, exit, complete, timeout, deferred, migrate"
    )
    from_stage: str | None
    to_stage: str | None
    cause: str = Field(description="What caused it: an event type or id, a timer, a migration")
    reason: str | None
    at: Moment


class InstanceOut(BaseModel):
    id: str
    journey: str
    version: int
    stage: str | None = Field(description="The stage whose actions have begun (none yet: null)")
    status: str = Field(description="running, paused, exited, completed or skipped")
    order_id: str | None = Field(description="The order that started it")
    started_at: Moment
    anchors: dict[str, Any] = Field(
        description="Event type -> when it happened (ISO 8601): the instants waits count from"
    )
    band: str | None = Field(description="The NPS band the journey branched on")
    exit_reason: str | None
    next_timer: TimerOut | None = Field(description="The earliest pending timer")
    history: list[TransitionOut] = Field(description="Every transition, oldest first")


class CustomerJourneyOut(BaseModel):
    customer_id: str
    profile: ProfileOut | None = Field(description="None before any event of the customer")
    current: InstanceOut | None = Field(description="The newest running or paused journey")
    instances: list[InstanceOut] = Field(description="Every journey of the customer, newest first")


# --- definitions ---------------------------------------------------------------------------


class VersionOut(BaseModel):
    version: int
    active: bool
    created_at: Moment


class JourneyVersionsOut(BaseModel):
    name: str
    active_version: int | None = Field(description="The version new customers enter; none: off")
    versions: list[VersionOut]


class JourneysOut(BaseModel):
    journeys: list[JourneyVersionsOut] = Field(description="By name, versions in order")


class DefinitionOut(BaseModel):
    name: str
    version: int
    active: bool
    definition: dict[str, Any] = Field(
        description="The journey definition document as stored (trigger, goal, stages...)"
    )


class StoredVersionOut(BaseModel):
    name: str
    version: int = Field(description="The number given to the new version")
    active: bool = Field(description="Always false: a new version is activated apart")


class ActivatedOut(BaseModel):
    name: str
    version: int
    active: bool


class DeactivatedOut(BaseModel):
    name: str
    active: bool


# --- simulate, migrate ------------------------------------------------------------------------


class SimTransitionOut(TransitionOut):
    instance_id: str = Field(description="sim-1, sim-2...: the simulated instances")


class SimActionOut(BaseModel):
    # The action's parameters (kind, category, template, order_id...) ride beside these
    # fields, as the live event would carry them.
    model_config = ConfigDict(extra="allow")

    instance_id: str
    type: str = Field(
        description="message, survey, request_review, invite_referral or escalate_support; "
        "the action's parameters are further keys"
    )
    step: str = Field(description="Stable id of the step within the instance")
    at: Moment = Field(description="When the action would run")


class SimulationOut(BaseModel):
    journey: str
    version: int = Field(description="The stored version run; 0 for an inline definition")
    transitions: list[SimTransitionOut]
    actions: list[SimActionOut]


class KeptOut(BaseModel):
    instance_id: str
    customer_id: str
    from_version: int
    result: Literal["kept"]
    reason: str = Field(description="Why it stays on its version")


class MigratedOut(BaseModel):
    instance_id: str
    customer_id: str
    from_version: int
    result: Literal["migrated"]
    to_version: int
    reason: str = Field(description="Where it lands in the target version")


class MigrationOut(BaseModel):
    journey: str
    to_version: int
    dry_run: bool = Field(description="true: the report only, nothing moved")
    instances: list[Annotated[KeptOut | MigratedOut, Field(discriminator="result")]]


# --- counts ----------------------------------------------------------------------------------


class FunnelStageOut(BaseModel):
    stage: str
    entered: int = Field(description="Journeys (instances) that entered it in the period")
    customers: int = Field(description="Distinct customers among them")
    conversion_from_previous: float | None = Field(
        description="entered / the previous stage's entered; null for the first or after 0"
    )


class FunnelOut(BaseModel):
    model_config = ConfigDict(populate_by_name=True)

    journey: str
    from_: Moment = Field(alias="from")
    to: Moment
    stages: list[FunnelStageOut] = Field(description="In the definition's order")
    goal_conversions: dict[str, int] = Field(description="Version -> goal conversions")
    goal_conversions_total: int
    exits: dict[str, int] = Field(description="Exit reason -> instances that exited")


class StageCountsOut(BaseModel):
    now: dict[str, int] = Field(description="Status (running, paused) -> instances there now")
    entered: int = Field(description="Instances that ever entered the stage")


class VersionCountsOut(BaseModel):
    version: int
    stages: dict[str, StageCountsOut] = Field(description="Stage name -> its counts")
    ended: dict[str, int] = Field(
        description="Status (completed, exited, skipped) -> instances at no stage: those "
        "that ended (and any not yet in a stage)"
    )
    goal_conversions: int


class StepCountsOut(BaseModel):
    journey: str
    versions: list[VersionCountsOut] = Field(description="In version order")
