"""Live counts per step of a journey, per version: what the console's flow diagram
draws on each stage (scope ``journeys:read``).

For each version: how many instances are at each stage now, by status (running,
paused; completed, exited and skipped where they ended), how many ever entered each
stage, and the goal conversions (:meth:`.service.JourneyService.step_counts`: three
grouped statements over the tenant's rows, whatever the number of instances)."""

from __future__ import annotations

from afterglow.journeys.api import Deps, Read
from afterglow.journeys.schemas import StepCountsOut
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
async def step_counts(
    name: Id, session: Session, deps: Deps, principal: Principal = Read
) -> StepCountsOut:
    return await deps.journeys.step_counts(session, principal.tenant_id, name)
