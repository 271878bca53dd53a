"""loyalty's dependencies beyond the kit's runtime, one typed object built in the
lifespan (:func:`build_deps`, app.py) for routes (:func:`get_deps`) and the event
handlers (:func:`deps_of`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request

from afterglow.kit.app import Runtime, deps_as, runtime_of
from afterglow.loyalty.service import LoyaltyService


@dataclass
class LoyaltyDeps:
    # The use cases, with the outbox they write events to and the clock they read.
    loyalty: LoyaltyService


def build_deps(runtime: Runtime) -> LoyaltyDeps:
    return LoyaltyDeps(LoyaltyService(runtime.outbox, runtime.clock))


def deps_of(runtime: Runtime) -> LoyaltyDeps:
    return deps_as(runtime, LoyaltyDeps)


def get_deps(request: Request) -> LoyaltyDeps:
    """The FastAPI dependency; routes take :data:`Deps`."""
    return deps_of(runtime_of(request))


Deps = Annotated[LoyaltyDeps, Depends(get_deps)]
