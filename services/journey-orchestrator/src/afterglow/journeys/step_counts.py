"""Live counts per step of a journey, per version: what the console's flow diagram
draws on each stage (scope ``journeys:read``).

For each version: how many instances are at each stage now, by status (running,
paused; completed, exited and skipped where they ended), how many ever entered each
stage, and the goal conversions. Three grouped statements over the tenant's rows,
whatever the number of instances; none loops per row."""

from __future__ import annotations

from typing import Any

from sqlalchemy import func, select

from afterglow.journeys.api import Read
from afterglow.journeys.models import GoalConversion, JourneyInstance, JourneyTransition
from afterglow.kit import openapi
from afterglow.kit.auth import Principal
from afterglow.kit.db import Session
from afterglow.kit.routing import service_router
from afterglow.kit.types import Id

router = service_router(tags=["journeys"])

_EXAMPLE = {
    "journey": "default",
    "versions": [
        {
            "version": 1,
            "stages": {
                "onboarding": {"now": {"running": 3}, "entered": 40},
                "check_in": {"now": {"running": 12, "paused": 1}, "entered": 31},
            },
            "ended": {"completed": 20, "exited": 4},
            "goal_conversions": 9,
        }
    ],
}


@router.get(
    "/v1/journeys/{name}/step-counts",
    summary="Instances at each step now, entries and goals, per version",
    responses=openapi.example(200, _EXAMPLE),
)
async def step_counts(name: Id, session: Session, principal: Principal = Read) -> dict[str, Any]:
    tenant = principal.tenant_id
    at_stage = await session.execute(
        select(JourneyInstance.version, JourneyInstance.stage, JourneyInstance.status, func.count())
        .where(JourneyInstance.tenant_id == tenant, JourneyInstance.journey == name)
        .group_by(JourneyInstance.version, JourneyInstance.stage, JourneyInstance.status)
    )
    entered = await session.execute(
        select(
            JourneyTransition.version,
            JourneyTransition.to_stage,
            func.count(func.distinct(JourneyTransition.instance_id)),
        )
        .where(
            JourneyTransition.tenant_id == tenant,
            JourneyTransition.journey == name,
            JourneyTransition.kind == "stage",
        )
        .group_by(JourneyTransition.version, JourneyTransition.to_stage)
    )
    goals = await session.execute(
        select(GoalConversion.version, func.count())
        .where(GoalConversion.tenant_id == tenant, GoalConversion.journey == name)
        .group_by(GoalConversion.version)
    )
    versions: dict[int, dict[str, Any]] = {}

    def of(version: int) -> dict[str, Any]:
        return versions.setdefault(
            version, {"version": version, "stages": {}, "ended": {}, "goal_conversions": 0}
        )

    def stage(version: int, name: str) -> dict[str, Any]:
        return of(version)["stages"].setdefault(name, {"now": {}, "entered": 0})

    for version, stage_name, status, n in at_stage:
        if status in ("running", "paused") and stage_name:
            stage(version, stage_name)["now"][status] = n
        else:
            # Ended where it ended: the diagram counts those apart from the stages.
            of(version)["ended"][status] = of(version)["ended"].get(status, 0) + n
    for version, stage_name, n in entered:
        if stage_name:
            stage(version, stage_name)["entered"] = n
    for version, n in goals:
        of(version)["goal_conversions"] = n
    return {"journey": name, "versions": [versions[v] for v in sorted(versions)]}
