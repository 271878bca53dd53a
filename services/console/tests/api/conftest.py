"""The route tests' shared fixtures. Module scope: each test module seeds tenants of its
own (a module may define its own ``shop`` instead)."""

from __future__ import annotations

from collections.abc import AsyncIterator

import httpx
import pytest

from afterglow.devstack.services import RunningServices

from ..console_support import Tenant, new_tenant, seed


@pytest.fixture(scope="module")
async def http() -> AsyncIterator[httpx.AsyncClient]:
    async with httpx.AsyncClient(timeout=30) as client:
        yield client


@pytest.fixture(scope="module")
async def shop(http: httpx.AsyncClient, services: RunningServices) -> Tenant:
    return await seed(http, await new_tenant(http, services))


@pytest.fixture(scope="module")
async def other_shop(http: httpx.AsyncClient, services: RunningServices) -> Tenant:
    return await seed(http, await new_tenant(http, services))
