"""``GET /v1/metrics/journeys``: per journey version, the funnel, goal conversion and
the revenue of goal orders over a period (definitions in :mod:`.metrics`)."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends

from afterglow.journeys.deps import JourneysDeps, get_deps
from afterglow.journeys.metrics import JourneyMetrics
from afterglow.kit.auth import Principal, require_scope
from afterglow.kit.db import Session
from afterglow.kit.period import BAD_PERIOD, Period, period_query
from afterglow.kit.routing import service_router

router = service_router(prefix="/v1/metrics", tags=["metrics"])


@router.get(
    "/journeys",
    summary="Funnel, goal conversion and goal revenue per journey version (journeys:read)",
    response_model=JourneyMetrics,
    responses=BAD_PERIOD,
)
async def get_journey_metrics(
    session: Session,
    period: Annotated[Period, Depends(period_query)],
    deps: Annotated[JourneysDeps, Depends(get_deps)],
    principal: Principal = Depends(require_scope("journeys:read")),
) -> JourneyMetrics:
    """Instances started in [from, to] (UTC days), what stages they reached, how many
    reached the journey's goal and what the converting orders were worth."""
    return await deps.journeys.metrics(session, principal.tenant_id, period)
