"""Journey routes: a customer's journey, definitions (versioned), dry runs, migration of
running instances, and the funnel. Each parses, checks the scope, calls a use case of
:mod:`.service` and renders its model (:mod:`.schemas`)."""

from __future__ import annotations

from typing import Annotated, Any

import yaml
from fastapi import Depends, Query, Request
from pydantic import BaseModel, ConfigDict, Field

from afterglow.journeys import engine as d
from afterglow.journeys.deps import JourneysDeps, get_deps
from afterglow.journeys.schemas import (
    ActivatedOut,
    CustomerJourneyOut,
    DeactivatedOut,
    DefinitionOut,
    FunnelOut,
    JourneysOut,
    MigrationOut,
    SimulationOut,
    StoredVersionOut,
)
from afterglow.kit import openapi
from afterglow.kit.auth import Principal, require_scope
from afterglow.kit.db import Session
from afterglow.kit.errors import AppError
from afterglow.kit.jsonbody import MAX_DEPTH, depth_exceeds
from afterglow.kit.routing import parse_json, read_body, service_router
from afterglow.kit.types import BigInt, Id, Instant, Int32, PositiveInt32

router = service_router(tags=["journeys"])
Read = Depends(require_scope("journeys:read"))
Write = Depends(require_scope("journeys:write"))
Deps = Annotated[JourneysDeps, Depends(get_deps)]


# --- customers -------------------------------------------------------------------------

_INSTANCE_EXAMPLE = {
    "id": "5d1e0c9a-8b7f-4e21-9c3d-2a6b0f4e8d11",
    "journey": "default",
    "version": 1,
    "stage": "check_in",
    "status": "running",
    "order_id": "pos:1001",
    "started_at": "2026-03-02T14:30:00+00:00",
    "anchors": {"order.delivered": "2026-03-05T10:00:00+00:00"},
    "band": None,
    "exit_reason": None,
    "next_timer": {
        "id": "0b7e6a52-3c1d-5f08-9a4e-6d2c1b0f9e37",
        "due_at": "2026-03-08T10:00:00+00:00",
        "kind": "stage_due",
    },
    "history": [
        {
            "kind": "stage",
            "from_stage": None,
            "to_stage": "onboarding",
            "cause": "afterglow.order.placed.v1",
            "reason": None,
            "at": "2026-03-02T14:30:00+00:00",
        }
    ],
}


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
                    "spent_by_currency": [{"currency": "USD", "amount": 12999}],
                    "first_order_at": "2026-03-02T14:30:00+00:00",
                    "last_order_at": "2026-03-02T14:30:00+00:00",
                    "open_tickets": 0,
                    "consent": True,
                    "timezone": "America/New_York",
                    "tier": None,
                    "last_surveyed_at": None,
                    "last_nps": None,
                    "last_band": None,
                },
                "current": _INSTANCE_EXAMPLE,
                "instances": [_INSTANCE_EXAMPLE],
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
    customer_id: Id, session: Session, deps: Deps, principal: Principal = Read
) -> CustomerJourneyOut:
    return await deps.journeys.customer_journey(session, principal.tenant_id, customer_id)


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
                        {"version": 1, "active": False, "created_at": "2026-03-01T09:00:00+00:00"},
                        {"version": 2, "active": True, "created_at": "2026-03-04T16:20:00+00:00"},
                    ],
                }
            ]
        },
    ),
)
async def list_journeys(session: Session, deps: Deps, principal: Principal = Read) -> JourneysOut:
    return await deps.journeys.journeys(session, principal.tenant_id)


@router.get(
    "/v1/journeys/{name}",
    summary="A journey definition (active or given version)",
    responses=openapi.example(
        200, {"name": "default", "version": 1, "active": True, "definition": d.DEFAULT_JOURNEY_BODY}
    ),
)
async def get_journey(
    name: Id,
    session: Session,
    deps: Deps,
    version: PositiveInt32 | None = None,
    principal: Principal = Read,
) -> DefinitionOut:
    return await deps.journeys.definition(session, principal.tenant_id, name, version)


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
        openapi.example(
            201,
            {"name": "default", "version": 4, "active": False},
            "Stored as the next version, inactive",
            model=StoredVersionOut,
        ),
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
    name: Id, request: Request, session: Session, deps: Deps, principal: Principal = Write
) -> StoredVersionOut:
    body = await _body(request)
    return await deps.journeys.publish(session, principal.tenant_id, name, body)


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
    session: Session,
    deps: Deps,
    body: ActivateIn | None = None,
    principal: Principal = Write,
) -> ActivatedOut:
    version = body.version if body else None
    return await deps.journeys.activate(session, principal.tenant_id, name, version)


@router.post(
    "/v1/journeys/{name}/deactivate",
    summary="Stop new entries (running instances go on)",
    responses=openapi.example(200, {"name": "default", "active": False}),
)
async def deactivate(
    name: Id, session: Session, deps: Deps, principal: Principal = Write
) -> DeactivatedOut:
    return await deps.journeys.deactivate(session, principal.tenant_id, name)


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
                    "at": "2026-03-02T14:30:00+00:00",
                }
            ],
            "actions": [
                {
                    "instance_id": "sim-1",
                    "type": "message",
                    "step": "onboarding",
                    "at": "2026-03-02T14:30:00+00:00",
                    "kind": "welcome",
                }
            ],
        },
    ),
)
async def simulate(
    name: Id, body: SimulateIn, session: Session, deps: Deps, principal: Principal = Read
) -> SimulationOut:
    return await deps.journeys.simulate(
        session,
        principal.tenant_id,
        name,
        definition=body.definition,
        version=body.version,
        events=body.events,
        profile=body.profile,
    )


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
    session: Session,
    deps: Deps,
    body: MigrateIn | None = None,
    principal: Principal = Write,
) -> MigrationOut:
    """Instances move only where their position means the same thing in the target:
    an instance waiting for stage S moves to S of the target (its delay recomputed
    from the same anchors); one in the middle of S's actions moves only if S exists
    with the same action at the same place. Otherwise it stays on its version and the
    report says why."""
    body = body or MigrateIn()
    return await deps.journeys.migrate(
        session, principal.tenant_id, name, body.to_version, body.dry_run
    )


# --- metrics ---------------------------------------------------------------------------


@router.get(
    "/v1/metrics/funnel",
    summary="Stage entries, conversion between stages, goals",
    responses=openapi.example(
        200,
        {
            "journey": "default",
            "from": "2026-03-01T00:00:00+00:00",
            "to": "2026-04-01T00:00:00+00:00",
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
    deps: Deps,
    from_: Annotated[Instant, Query(alias="from")],
    to: Annotated[Instant, Query()],
    journey: Id = "default",
    principal: Principal = Read,
) -> FunnelOut:
    return await deps.journeys.funnel(session, principal.tenant_id, journey, from_, to)
