"""referrals' dependencies beyond the kit's runtime, one typed object built in the
lifespan (:func:`build_deps`, app.py) for routes (:func:`get_deps`), the consumer and
the confirmation worker (:func:`deps_of`)."""

from __future__ import annotations

from dataclasses import dataclass

from fastapi import Request

from afterglow.kit.app import Runtime, deps_as, runtime_of
from afterglow.referrals.service import ReferralService
from afterglow.referrals.settings import ReferralsSettings


@dataclass
class ReferralsDeps:
    # The use cases; their settings are the service's (referrals.settings).
    referrals: ReferralService


def build_deps(runtime: Runtime) -> ReferralsDeps:
    settings = runtime.settings
    assert isinstance(settings, ReferralsSettings)
    return ReferralsDeps(ReferralService(settings, runtime.outbox, runtime.clock))


def deps_of(runtime: Runtime) -> ReferralsDeps:
    return deps_as(runtime, ReferralsDeps)


async def get_deps(request: Request) -> ReferralsDeps:
    """The FastAPI dependency: ``deps: Annotated[ReferralsDeps, Depends(get_deps)]``. ``async``:
    FastAPI runs a plain ``def`` dependency in its thread pool, a thread handoff per
    request (~15% of a loyalty redemption's CPU under load)."""
    return deps_of(runtime_of(request))
