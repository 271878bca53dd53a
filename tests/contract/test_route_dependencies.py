"""Every route's dependencies and endpoint are ``async def``: FastAPI runs a plain
``def`` one in its thread pool, a thread handoff on every request. Under load that hop
was ~15% of a loyalty redemption's CPU; one plain ``def`` dependency anywhere in a
route's tree brings it back for that route."""

from __future__ import annotations

import importlib
import inspect
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.dependencies.models import Dependant
from fastapi.routing import APIRoute

from afterglow.kit.registry import discover_services

SPECS = discover_services()


def _routes(routes: list[Any]) -> Iterator[APIRoute]:
    for route in routes:
        if hasattr(route, "original_router"):  # an included router, as FastAPI keeps it
            yield from _routes(route.original_router.routes)
        elif isinstance(route, APIRoute):
            yield route


def _sync_calls(dependant: Dependant) -> Iterator[str]:
    for sub in dependant.dependencies:
        call = sub.call
        if call is not None and not inspect.isclass(call):
            # An instance used as a dependency (require_scope's checker) is its __call__.
            target = call if inspect.isroutine(call) else type(call).__call__
            if not (inspect.iscoroutinefunction(target) or inspect.isasyncgenfunction(target)):
                yield f"{call.__module__}.{getattr(call, '__qualname__', repr(call))}"
        yield from _sync_calls(sub)


@pytest.mark.parametrize("name", sorted(SPECS))
def test_no_route_runs_in_the_thread_pool(name: str) -> None:
    spec = SPECS[name]
    module, _, factory = spec.app_factory.partition(":")
    app = getattr(importlib.import_module(module), factory)()
    found = {
        f"{route.path} {sorted(route.methods)}: {call}"
        for route in _routes(app.routes)
        for call in [
            *_sync_calls(route.dependant),
            *(
                []
                if inspect.iscoroutinefunction(route.endpoint)
                else [f"endpoint {route.endpoint.__qualname__}"]
            ),
        ]
    }
    assert not found, "plain def (run in the thread pool):\n" + "\n".join(sorted(found))
