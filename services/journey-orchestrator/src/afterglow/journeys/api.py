"""Journey routes: a customer's journey, definitions (versioned), dry runs, migration of
running instances, and the funnel."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any

import yaml
from fastapi import Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import func, select, update

from afterglow.journeys import engine as d
from afterglow.journeys import store
from afterglow.journeys.models import (
    CustomerProfile,
    GoalConversion,
    JourneyDefinition,
    JourneyInstance,
    JourneyTimer,
    JourneyTransition,
)
from afterglow.kit import openapi
from afterglow.kit.app import runtime_of
from afterglow.kit.auth import Principal, require_scope
from afterglow.kit.db import Session
from afterglow.kit.errors import AppError, NotFound, Unprocessable
from afterglow.kit.jsonbody import MAX_DEPTH, depth_exceeds
from afterglow.kit.routing import parse_json, read_body, service_router
from afterglow.kit.types import BigInt, Id, Instant, Int32, PositiveInt32

router = service_router(tags=["journeys"])
Read = Depends(require_scope("journeys:read"))
Write = Depends(require_scope("journeys:write"))


def _now(request: Request) -> datetime:
    now: datetime = runtime_of(request).clock.now()
    return now


def _invalid(exc: d.DefinitionError, prefix: str = "") -> Unprocessable:
    field = f"{prefix}{exc.path}" if exc.path else prefix.rstrip(".") or None
    err = Unprocessable(f"{field}: {exc.message}" if field else exc.message, field=field)
    return err


# --- customers -------------------------------------------------------------------------


@router.get(
    "/v1/customers/{customer_id}/journey",
    summary="Stage, next timer and full history",
    responses=openapi.errors(
        openapi.example(
            200,
            {
                "customer_id": "cus_42",
                "profile": {
                    "orders_count": 1,
                    "total_spent": {"amount": 12999, "currency": "USD"},
                    "first_order_at": "2026-03-02T14:30:00Z",
                    "last_order_at": "2026-03-02T14:30:00Z",
                    "open_tickets": 0,
                    "consent": {"email": "granted"},
                    "timezone": "America/New_York",
                    "tier": None,
                    "last_surveyed_at": None,
                    "last_nps": None,
                    "last_band": None,
                },
                "current": {
                    "id": "5d1e0c9a-8b7f-4e21-9c3d-2a6b0f4e8d11",
                    "journey": "default",
                    "version": 1,
                    "stage": "check_in",
                    "status": "running",
                    "order_id": "pos:1001",
                    "started_at": "2026-03-02T14:30:00Z",
                    "anchors": {"order.delivered": "2026-03-05T10:00:00Z"},
                    "band": None,
                    "exit_reason": None,
                    "next_timer": {
                        "id": 812,
                        "due_at": "2026-03-08T10:00:00Z",
                        "kind": "stage",
                    },
                    "history": [
                        {
                            "kind": "stage",
                            "from_stage": None,
                            "to_stage": "onboarding",
                            "cause": "afterglow.order.placed.v1",
                            "reason": None,
                            "at": "2026-03-02T14:30:00Z",
                        }
                    ],
                },
                "instances": ["... every journey of the customer, newest first (as current)"],
            },
        ),
        openapi.error(
            404,
            "No profile and no journey for this customer",
            "not_found",
            "customer 'cus_42' has no journey",
            field="customer_id",
        ),
    ),
)
async def customer_journey(
    customer_id: Id, session: Session, principal: Principal = Read
) -> dict[str, Any]:
    tenant = principal.tenant_id
    prof = await session.get(CustomerProfile, (tenant, customer_id))
    rows = (
        await session.scalars(
            select(JourneyInstance)
            .where(JourneyInstance.tenant_id == tenant, JourneyInstance.customer_id == customer_id)
            .order_by(JourneyInstance.started_at.desc(), JourneyInstance.id)
        )
    ).all()
    if prof is None and not rows:
        raise NotFound(f"customer {customer_id!r} has no journey", field="customer_id")
    instances = []
    for inst in rows:
        timer = (
            await session.execute(
                select(JourneyTimer.due_at, JourneyTimer.kind, JourneyTimer.id)
                .where(
                    JourneyTimer.tenant_id == tenant,
                    JourneyTimer.instance_id == inst.id,
                    JourneyTimer.state == "pending",
                )
                .order_by(JourneyTimer.due_at)
                .limit(1)
            )
        ).first()
        history = (
            await session.scalars(
                select(JourneyTransition)
                .where(
                    JourneyTransition.tenant_id == tenant, JourneyTransition.instance_id == inst.id
                )
                .order_by(JourneyTransition.id)
            )
        ).all()
        instances.append(
            {
                "id": inst.id,
                "journey": inst.journey,
                "version": inst.version,
                "stage": inst.stage,
                "status": inst.status,
                "order_id": inst.order_id,
                "started_at": inst.started_at,
                "anchors": inst.anchors,
                "band": inst.state.get("band"),
                "exit_reason": inst.state.get("exit_reason"),
                "next_timer": None
                if timer is None
                else {"id": timer.id, "due_at": timer.due_at, "kind": timer.kind},
                "history": [
                    {
                        "kind": h.kind,
                        "from_stage": h.from_stage,
                        "to_stage": h.to_stage,
                        "cause": h.cause,
                        "reason": h.reason,
                        "at": h.at,
                    }
                    for h in history
                ],
            }
        )
    current = next((i for i in instances if i["status"] in ("running", "paused")), None)
    profile = None
    if prof is not None:
        projected = d.Profile.model_validate(prof.state or {})
        spent = projected.spent or (
            {projected.currency: projected.total_spent} if projected.currency else {}
        )
        profile = {
            "orders_count": prof.orders_count,
            "total_spent": {"amount": prof.total_spent, "currency": prof.currency},
            # Every currency apart, never summed across currencies.
            "spent_by_currency": [
                {"currency": cur, "amount": amount} for cur, amount in sorted(spent.items())
            ],
            "first_order_at": prof.first_order_at,
            "last_order_at": prof.last_order_at,
            "open_tickets": prof.open_tickets,
            "consent": prof.consent,
            "timezone": prof.timezone,
            "tier": prof.tier,
            "last_surveyed_at": prof.last_surveyed_at,
            "last_nps": prof.last_nps,
            "last_band": prof.last_band,
        }
    return {
        "customer_id": customer_id,
        "profile": profile,
        "current": current,
        "instances": instances,
    }


# --- definitions -----------------------------------------------------------------------


@router.get(
    "/v1/journeys",
    summary="Journeys of this tenant and their versions",
    responses=openapi.example(
        200,
        {
            "journeys": [
                {
                    "name": "default",
                    "active_version": 2,
                    "versions": [
                        {"version": 1, "active": False, "created_at": "2026-03-01T09:00:00Z"},
                        {"version": 2, "active": True, "created_at": "2026-03-04T16:20:00Z"},
                    ],
                }
            ]
        },
    ),
)
async def list_journeys(
    request: Request, session: Session, principal: Principal = Read
) -> dict[str, Any]:
    await store.ensure_default(session, principal.tenant_id, _now(request))
    rows = (
        await session.scalars(
            select(JourneyDefinition)
            .where(JourneyDefinition.tenant_id == principal.tenant_id)
            .order_by(JourneyDefinition.name, JourneyDefinition.version)
        )
    ).all()
    out: dict[str, dict[str, Any]] = {}
    for r in rows:
        j = out.setdefault(r.name, {"name": r.name, "active_version": None, "versions": []})
        j["versions"].append({"version": r.version, "active": r.active, "created_at": r.created_at})
        if r.active:
            j["active_version"] = r.version
    return {"journeys": list(out.values())}


@router.get(
    "/v1/journeys/{name}",
    summary="A journey definition (active or given version)",
    responses=openapi.example(
        200, {"name": "default", "version": 1, "active": True, "definition": d.DEFAULT_JOURNEY_BODY}
    ),
)
async def get_journey(
    name: Id,
    request: Request,
    session: Session,
    version: PositiveInt32 | None = None,
    principal: Principal = Read,
) -> dict[str, Any]:
    await store.ensure_default(session, principal.tenant_id, _now(request))
    row = await _definition(session, principal.tenant_id, name, version)
    return {"name": row.name, "version": row.version, "active": row.active, "definition": row.body}


async def _definition(
    session: Any, tenant: str, name: str, version: int | None
) -> JourneyDefinition:
    q = select(JourneyDefinition).where(
        JourneyDefinition.tenant_id == tenant, JourneyDefinition.name == name
    )
    if version is not None:
        q = q.where(JourneyDefinition.version == version)
    else:
        # The active version, else the latest.
        q = q.order_by(JourneyDefinition.active.desc(), JourneyDefinition.version.desc())
    row = (await session.scalars(q.limit(1))).first()
    if row is None:
        raise NotFound(
            f"journey {name!r}" + (f" v{version}" if version else "") + " not found", field="name"
        )
    return row


class _NoAliasLoader(yaml.SafeLoader):
    """YAML without aliases: a few lines of nested aliases ("billion laughs") expand
    to a structure too large to walk or store."""

    def compose_node(self, parent: Any, index: Any) -> Any:
        if self.check_event(yaml.AliasEvent):
            raise yaml.YAMLError("aliases (*name) are not allowed in a journey definition")
        return super().compose_node(parent, index)


async def _body(request: Request) -> Any:
    """The definition as JSON or YAML, within the kit's size and depth bounds (a body of
    10,000 nested lists made both parsers recurse out of stack: a 500)."""
    raw = await read_body(request)
    ctype = request.headers.get("content-type", "")
    if "yaml" not in ctype:
        return parse_json(raw or b"null")
    try:
        body = yaml.load(raw, Loader=_NoAliasLoader)  # noqa: S506 - a SafeLoader
    except RecursionError as exc:
        raise AppError("body nests too deep", code="too_deep") from exc
    except yaml.YAMLError as exc:
        raise AppError(f"body is not YAML: {exc}", code="bad_request") from exc
    if depth_exceeds(body, MAX_DEPTH):
        raise AppError(f"body nests deeper than {MAX_DEPTH} levels", code="too_deep")
    return body


# The default journey: a definition the route accepts as it is.
_DEFINITION_EXAMPLE = d.DEFAULT_JOURNEY_BODY


@router.put(
    "/v1/journeys/{name}",
    status_code=201,
    summary="Store a new version (JSON or YAML)",
    responses=openapi.errors(
        {
            201: {
                "content": {
                    "application/json": {
                        "example": {"name": "default", "version": 4, "active": False}
                    }
                }
            }
        },
        openapi.error(
            400, "The body is neither JSON nor YAML", "bad_request", "body is not JSON: ..."
        ),
    ),
    openapi_extra={
        "requestBody": {
            "required": True,
            "description": "A journey definition, as JSON or as YAML (Content-Type: "
            "application/yaml); `name` defaults to the path's",
            "content": {
                "application/json": {"schema": {"type": "object"}, "example": _DEFINITION_EXAMPLE},
                "application/yaml": {"schema": {"type": "object"}},
            },
        }
    },
)
async def put_journey(
    name: Id, request: Request, session: Session, principal: Principal = Write
) -> dict[str, Any]:
    body = await _body(request)
    if isinstance(body, dict):
        body.setdefault("name", name)
    try:
        j = d.parse_journey(body)
        d.check_review_gating(j)
    except d.DefinitionError as exc:
        raise _invalid(exc) from exc
    if j.name != name:
        raise Unprocessable(f"name: {j.name!r} does not match the path {name!r}", field="name")
    tenant = principal.tenant_id
    now = _now(request)
    await store.ensure_default(session, tenant, now)
    # Serialise version numbering per journey name.
    await session.execute(select(func.pg_advisory_xact_lock(func.hashtext(f"{tenant}:{name}"))))
    latest = await session.scalar(
        select(func.max(JourneyDefinition.version)).where(
            JourneyDefinition.tenant_id == tenant, JourneyDefinition.name == name
        )
    )
    version = (latest or 0) + 1
    session.add(
        JourneyDefinition(
            tenant_id=tenant,
            name=name,
            version=version,
            body=j.model_dump(mode="json"),
            active=False,
            created_at=now,
        )
    )
    return {"name": name, "version": version, "active": False}


class ActivateIn(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"version": 2}]})
    version: PositiveInt32 | None = Field(default=None, description="default: the latest version")


@router.post(
    "/v1/journeys/{name}/activate",
    summary="Make a version the one new customers enter",
    responses=openapi.example(200, {"name": "default", "version": 2, "active": True}),
)
async def activate(
    name: Id,
    request: Request,
    session: Session,
    body: ActivateIn | None = None,
    principal: Principal = Write,
) -> dict[str, Any]:
    tenant = principal.tenant_id
    await store.ensure_default(session, tenant, _now(request))
    version = body.version if body else None
    if version is None:
        version = await session.scalar(
            select(func.max(JourneyDefinition.version)).where(
                JourneyDefinition.tenant_id == tenant, JourneyDefinition.name == name
            )
        )
    row = await _definition(session, tenant, name, version)
    await session.execute(
        update(JourneyDefinition)
        .where(
            JourneyDefinition.tenant_id == tenant,
            JourneyDefinition.name == name,
            JourneyDefinition.active,
        )
        .values(active=False)
    )
    await session.flush()
    row.active = True
    row.activated_at = _now(request)
    return {"name": name, "version": row.version, "active": True}


@router.post(
    "/v1/journeys/{name}/deactivate",
    summary="Stop new entries (running instances go on)",
    responses=openapi.example(200, {"name": "default", "active": False}),
)
async def deactivate(name: Id, session: Session, principal: Principal = Write) -> dict[str, Any]:
    await _definition(session, principal.tenant_id, name, None)
    await session.execute(
        update(JourneyDefinition)
        .where(JourneyDefinition.tenant_id == principal.tenant_id, JourneyDefinition.name == name)
        .values(active=False)
    )
    return {"name": name, "active": False}


class SimEventIn(d.SimEvent):
    # Within the range a timer computed from it can reach (a delay after 9999-12-31
    # overflows datetime).
    at: Instant


class ProfileIn(d.Profile):
    first_order_at: Instant | None = None
    last_order_at: Instant | None = None
    last_surveyed_at: Instant | None = None
    orders_count: Int32 = 0
    total_spent: BigInt = 0
    last_nps: Int32 | None = None


class SimulateIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "events": [
                        {
                            "type": "order.placed",
                            "at": "2026-03-02T14:30:00Z",
                            "data": {"order_id": "pos:1001"},
                        },
                        {"type": "order.delivered", "at": "2026-03-05T10:00:00Z"},
                    ]
                }
            ]
        },
    )
    definition: dict[str, Any] | None = Field(default=None, description="inline; default: stored")
    version: Int32 | None = None
    events: list[SimEventIn] = Field(min_length=1, max_length=1000)
    profile: ProfileIn | None = None


@router.post(
    "/v1/journeys/{name}/simulate",
    summary="Dry run: transitions and actions, no state touched",
    responses=openapi.example(
        200,
        {
            "journey": "default",
            "version": 1,
            "transitions": [
                {
                    "instance_id": "sim-1",
                    "kind": "stage",
                    "from_stage": None,
                    "to_stage": "onboarding",
                    "cause": "afterglow.order.placed.v1",
                    "reason": None,
                    "at": "2026-03-02T14:30:00Z",
                }
            ],
            "actions": [
                {
                    "instance_id": "sim-1",
                    "type": "message",
                    "step": "onboarding",
                    "at": "2026-03-02T14:30:00Z",
                    "kind": "welcome",
                }
            ],
        },
    ),
)
async def simulate(
    name: Id, body: SimulateIn, session: Session, principal: Principal = Read
) -> dict[str, Any]:
    if body.definition is not None:
        try:
            j = d.parse_journey({"name": name, **body.definition})
            d.check_review_gating(j)
        except d.DefinitionError as exc:
            raise _invalid(exc, "definition.") from exc
        version = body.version or 0
    else:
        row = await _definition(session, principal.tenant_id, name, body.version)
        j, version = d.parse_journey(row.body), row.version
    try:
        records = d.simulate(j, body.events, version=version, profile=body.profile)
    except OverflowError as exc:
        # A delay that leaves datetime's range (an event late in 2199 and a long wait).
        raise Unprocessable(
            f"events: a step falls beyond year 9999 ({exc})", field="events"
        ) from exc
    transitions = []
    actions = []
    for r in records:
        for t in r.transitions:
            transitions.append(
                {
                    "instance_id": r.instance_id,
                    "kind": t.kind,
                    "from_stage": t.from_stage,
                    "to_stage": t.to_stage,
                    "cause": t.cause,
                    "reason": t.reason,
                    "at": t.at,
                }
            )
        for a in r.actions:
            actions.append(
                {
                    "instance_id": r.instance_id,
                    "type": a.type,
                    "step": a.step,
                    "at": r.at,
                    **a.params,
                }
            )
    return {"journey": name, "version": version, "transitions": transitions, "actions": actions}


class MigrateIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"to_version": 2, "dry_run": True}]}
    )
    to_version: PositiveInt32 | None = Field(
        default=None, description="default: the active version"
    )
    dry_run: bool = False


@router.post(
    "/v1/journeys/{name}/migrate",
    summary="Move waiting instances to a version",
    responses=openapi.example(
        200,
        {
            "journey": "default",
            "to_version": 2,
            "dry_run": True,
            "instances": [
                {
                    "instance_id": "5d1e0c9a-8b7f-4e21-9c3d-2a6b0f4e8d11",
                    "customer_id": "cus_42",
                    "from_version": 1,
                    "result": "migrated",
                    "to_version": 2,
                    "reason": "waiting for check_in, which v2 has",
                }
            ],
        },
    ),
)
async def migrate(
    name: Id,
    request: Request,
    session: Session,
    body: MigrateIn | None = None,
    principal: Principal = Write,
) -> dict[str, Any]:
    """Instances move only where their position means the same thing in the target:
    an instance waiting for stage S moves to S of the target (its delay recomputed
    from the same anchors); one in the middle of S's actions moves only if S exists
    with the same action at the same place. Otherwise it stays on its version and the
    report says why."""
    body = body or MigrateIn()
    tenant = principal.tenant_id
    now = _now(request)
    row = await _definition(session, tenant, name, body.to_version)
    if body.to_version is None and not row.active:
        raise Unprocessable(
            f"journey {name!r} has no active version; give to_version", field="to_version"
        )
    target = d.parse_journey(row.body)
    rows = (
        await session.scalars(
            select(JourneyInstance)
            .where(
                JourneyInstance.tenant_id == tenant,
                JourneyInstance.journey == name,
                JourneyInstance.status.in_(["running", "paused"]),
                JourneyInstance.version != row.version,
            )
            .order_by(JourneyInstance.customer_id)
            .with_for_update()
        )
    ).all()
    report = []
    for inst in rows:
        state = d.InstanceState.model_validate(inst.state)
        old = await store.journey_version(session, tenant, name, state.version)
        moved, outcome = d.migrate(old, target, row.version, state)
        entry = {
            "instance_id": inst.id,
            "customer_id": inst.customer_id,
            "from_version": state.version,
        }
        if moved is None:
            report.append({**entry, "result": "kept", "reason": outcome})
            continue
        report.append({**entry, "result": "migrated", "to_version": row.version, "reason": outcome})
        if body.dry_run:
            continue
        profile = d.Profile.model_validate(
            (await session.get(CustomerProfile, (tenant, inst.customer_id))).state  # type: ignore[union-attr]
        )
        res = d.StepResult(
            moved,
            [
                d.Transition(
                    "migrate", state.stage, moved.stage, f"migrate:v{row.version}", outcome, now
                )
            ],
        )
        writer = store.Writer(session, runtime_of(request).outbox, tenant, inst.customer_id, now)
        await writer.apply(target, res, profile)
    return {
        "journey": name,
        "to_version": row.version,
        "dry_run": body.dry_run,
        "instances": report,
    }


# --- metrics ---------------------------------------------------------------------------


@router.get(
    "/v1/metrics/funnel",
    summary="Stage entries, conversion between stages, goals",
    responses=openapi.example(
        200,
        {
            "journey": "default",
            "from": "2026-03-01T00:00:00Z",
            "to": "2026-04-01T00:00:00Z",
            "stages": [
                {
                    "stage": "onboarding",
                    "entered": 120,
                    "customers": 114,
                    "conversion_from_previous": None,
                },
                {
                    "stage": "check_in",
                    "entered": 96,
                    "customers": 92,
                    "conversion_from_previous": 0.8,
                },
            ],
            "goal_conversions": {"1": 17},
            "goal_conversions_total": 17,
            "exits": {"order.refunded": 4},
        },
    ),
)
async def funnel(
    session: Session,
    from_: Annotated[Instant, Query(alias="from")],
    to: Annotated[Instant, Query()],
    journey: Id = "default",
    principal: Principal = Read,
) -> dict[str, Any]:
    tenant = principal.tenant_id
    # Journeys (instances) and customers entering each stage: a repeat buyer's second
    # journey is a second pass through the funnel, but the same customer.
    counts = (
        await session.execute(
            select(
                JourneyTransition.to_stage,
                func.count(func.distinct(JourneyTransition.instance_id)),
                func.count(func.distinct(JourneyTransition.customer_id)),
            )
            .where(
                JourneyTransition.tenant_id == tenant,
                JourneyTransition.journey == journey,
                JourneyTransition.kind == "stage",
                JourneyTransition.at >= from_,
                JourneyTransition.at < to,
            )
            .group_by(JourneyTransition.to_stage)
        )
    ).all()
    entered: dict[str | None, int] = {stage: n for stage, n, _ in counts}
    customers: dict[str | None, int] = {stage: n for stage, _, n in counts}
    row = (
        await session.scalars(
            select(JourneyDefinition)
            .where(JourneyDefinition.tenant_id == tenant, JourneyDefinition.name == journey)
            .order_by(JourneyDefinition.active.desc(), JourneyDefinition.version.desc())
            .limit(1)
        )
    ).first()
    order = [s["name"] for s in row.body["stages"]] if row else sorted(k for k in entered if k)
    order += [k for k in entered if k and k not in order]
    stages = []
    prev: int | None = None
    for name in order:
        n = int(entered.get(name, 0))
        stages.append(
            {
                "stage": name,
                "entered": n,
                "customers": int(customers.get(name, 0)),
                "conversion_from_previous": None if not prev else round(n / prev, 4),
            }
        )
        prev = n
    goals = (
        await session.execute(
            select(GoalConversion.version, func.count())
            .where(
                GoalConversion.tenant_id == tenant,
                GoalConversion.journey == journey,
                GoalConversion.converted_at >= from_,
                GoalConversion.converted_at < to,
            )
            .group_by(GoalConversion.version)
        )
    ).all()
    exits = (
        await session.execute(
            select(JourneyTransition.reason, func.count())
            .where(
                JourneyTransition.tenant_id == tenant,
                JourneyTransition.journey == journey,
                JourneyTransition.kind == "exit",
                JourneyTransition.at >= from_,
                JourneyTransition.at < to,
            )
            .group_by(JourneyTransition.reason)
        )
    ).all()
    return {
        "journey": journey,
        "from": from_,
        "to": to,
        "stages": stages,
        "goal_conversions": {str(v): n for v, n in goals},
        "goal_conversions_total": sum(n for _, n in goals),
        "exits": {r: n for r, n in exits},
    }
