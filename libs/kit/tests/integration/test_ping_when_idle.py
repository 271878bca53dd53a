"""The main pools check a connection's liveness on checkout only after it sat idle
(kit.db.ping_when_idle): a connection that died in the pool is still replaced before
anyone uses it, and one back in use at once is not pinged."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from afterglow.devstack.stack import Stack
from afterglow.kit import db

APP = "kit-ping-when-idle-test"


async def backend_pid(engine: AsyncEngine) -> int:
    async with engine.connect() as conn:
        return int((await conn.execute(text("SELECT pg_backend_pid()"))).scalar_one())


async def terminate(stack: Stack, pid: int) -> None:
    other = db.create_engine(stack.database_url, application_name=f"{APP}-killer", pool_size=1)
    try:
        async with other.connect() as conn:
            await conn.execute(text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
    finally:
        await other.dispose()


def count_pings(engine: AsyncEngine) -> list[int]:
    pings: list[int] = []
    dialect = engine.sync_engine.dialect
    real = dialect.do_ping

    def counted(dbapi_connection: object) -> bool:
        pings.append(1)
        return bool(real(dbapi_connection))

    dialect.do_ping = counted  # type: ignore[method-assign]
    return pings


@pytest.fixture
async def engine(stack: Stack) -> AsyncIterator[AsyncEngine]:
    """A main pool of one connection, as every service builds it (kit.db)."""
    engine = db.create_engine(stack.database_url, application_name=APP, pool_size=1)
    yield engine
    await engine.dispose()


class TestPingWhenIdle:
    async def test_a_connection_that_died_while_idle_is_replaced_on_checkout(
        self, stack: Stack, engine: AsyncEngine
    ) -> None:
        pid = await backend_pid(engine)
        await terminate(stack, pid)
        await asyncio.sleep(db.PING_AFTER_IDLE_S + 0.2)
        # Idle past the bound: pinged, found dead, replaced; the statement runs.
        assert await backend_pid(engine) != pid

    async def test_a_connection_back_in_use_at_once_is_not_pinged(
        self, engine: AsyncEngine
    ) -> None:
        pings = count_pings(engine)
        first = await backend_pid(engine)
        for _ in range(5):
            assert await backend_pid(engine) == first
        assert pings == []

    async def test_an_idle_connection_is_pinged_once_then_reused(self, engine: AsyncEngine) -> None:
        pings = count_pings(engine)
        first = await backend_pid(engine)
        await asyncio.sleep(db.PING_AFTER_IDLE_S + 0.2)
        assert await backend_pid(engine) == first
        assert await backend_pid(engine) == first
        assert len(pings) == 1
