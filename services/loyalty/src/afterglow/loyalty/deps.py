"""loyalty's dependencies beyond the kit's runtime, one typed object built in the
lifespan (:func:`build_deps`, app.py) for routes (:func:`get_deps`) and the event
handlers (:func:`deps_of`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from afterglow.kit.app import Runtime, deps_as, runtime_of
from afterglow.loyalty.redemptions import Redemptions
from afterglow.loyalty.service import LoyaltyService
from afterglow.loyalty.settings import LoyaltySettings


@dataclass
class LoyaltyDeps:
    # The use cases, with the outbox they write events to and the clock they read.
    loyalty: LoyaltyService
    # Redemptions through their group commit (its writer tasks start in app.py).
    redemptions: Redemptions


def build_deps(runtime: Runtime) -> LoyaltyDeps:
    settings = runtime.settings
    assert isinstance(settings, LoyaltySettings)
    loyalty = LoyaltyService(runtime.outbox, runtime.clock)
    redemptions = Redemptions(
        runtime.sessionmaker, runtime.writer_sessionmaker(), loyalty, runtime.clock, settings
    )
    return LoyaltyDeps(loyalty, redemptions)


def deps_of(runtime: Runtime) -> LoyaltyDeps:
    return deps_as(runtime, LoyaltyDeps)


async def get_deps(request: Request) -> LoyaltyDeps:
    """The FastAPI dependency; routes take :data:`Deps`. ``async``: FastAPI runs a
    plain ``def`` dependency in its thread pool, and that hop (a thread handoff per
    request, the GIL passed back and forth) was ~15% of a redemption's CPU under wrk."""
    return deps_of(runtime_of(request))


Deps = Annotated[LoyaltyDeps, Depends(get_deps)]
