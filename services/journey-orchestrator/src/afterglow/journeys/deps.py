"""The journey orchestrator's dependencies beyond the kit's runtime, one typed object
built in the lifespan (:func:`build_deps`, app.py) for routes (:func:`get_deps`),
consumers, the timers and the dispatcher (:func:`deps_of`)."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from afterglow.journeys.messaging.settings import MessagingSettings
from afterglow.journeys.service import JourneyService
from afterglow.kit.app import Runtime, deps_as, runtime_of


@dataclass
class JourneysDeps:
    # Messaging's settings (env MESSAGING_*). The dispatcher reads them at every use,
    # not once, so a test may swap them on a running app.
    messaging: MessagingSettings
    # The journey routes' use cases, on the runtime's outbox and clock.
    journeys: JourneyService


def build_deps(runtime: Runtime) -> JourneysDeps:
    return JourneysDeps(
        messaging=MessagingSettings(), journeys=JourneyService(runtime.outbox, runtime.clock)
    )


def deps_of(runtime: Runtime) -> JourneysDeps:
    return deps_as(runtime, JourneysDeps)


async def get_deps(request: Request) -> JourneysDeps:
    """The FastAPI dependency: ``deps: Annotated[JourneysDeps, Depends(get_deps)]``. ``async``:
    FastAPI runs a plain ``def`` dependency in its thread pool, a thread handoff per
    request (~15% of a loyalty redemption's CPU under load)."""
    return deps_of(runtime_of(request))


def messaging_settings(runtime: Runtime) -> MessagingSettings:
    return deps_of(runtime).messaging
