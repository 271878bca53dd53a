"""feedback's dependencies, one typed object built in the lifespan (:func:`build_deps`,
app.py) for routes (:data:`Deps`), handlers and workers (:func:`deps_of`).

Routes read the typed settings from here instead of ``runtime_of(request).settings``
with an ``assert isinstance`` at each use: a route that forgot the assert got an
untyped settings object and a typo in a setting's name failed only at run time."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Request
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from afterglow.events import Outbox
from afterglow.feedback.settings import FeedbackSettings
from afterglow.kit.app import Runtime, deps_as, runtime_of
from afterglow.kit.clock import Clock


@dataclass(frozen=True)
class FeedbackDeps:
    settings: FeedbackSettings
    sessionmaker: async_sessionmaker[AsyncSession]
    outbox: Outbox
    clock: Clock


def build_deps(runtime: Runtime) -> FeedbackDeps:
    settings = runtime.settings
    assert isinstance(settings, FeedbackSettings)
    return FeedbackDeps(settings, runtime.sessionmaker, runtime.outbox, runtime.clock)


def deps_of(runtime: Runtime) -> FeedbackDeps:
    return deps_as(runtime, FeedbackDeps)


def request_deps(request: Request) -> FeedbackDeps:
    """The deps of the app serving ``request``, for code that is not a dependency."""
    return deps_of(runtime_of(request))


async def get_deps(request: Request) -> FeedbackDeps:
    """The FastAPI dependency. ``async``: FastAPI runs a plain ``def`` dependency in its
    thread pool, a thread handoff per request (~15% of a loyalty redemption's CPU
    under load)."""
    return request_deps(request)


# A route's parameter: ``deps: Deps``.
Deps = Annotated[FeedbackDeps, Depends(get_deps)]
