"""A view read with several queries (a customer's journey: profile, instances, timers,
history) sees one state of the database: a commit that lands between its queries shows
in none of them, so the view never pairs an instance with a profile not yet written."""

from __future__ import annotations

import uuid

import pytest
from sqlalchemy import text
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncSession, create_async_engine

from afterglow.devstack.stack import Stack
from afterglow.kit.db import read_one_snapshot


async def test_a_commit_between_the_views_queries_is_not_seen(stack: Stack) -> None:
    engine = create_async_engine(stack.database_url)
    run = {"run": uuid.uuid4().hex}
    insert = text("INSERT INTO probe_snapshot VALUES (:run)")
    count = text("SELECT count(*) FROM probe_snapshot WHERE run = :run")
    try:
        async with engine.begin() as conn:
            await conn.execute(text("CREATE TABLE IF NOT EXISTS probe_snapshot (run text)"))
            await conn.execute(insert, run)
        async with AsyncSession(engine) as view, view.begin():
            await read_one_snapshot(view)
            first = (await view.execute(count, run)).scalar_one()
            async with engine.begin() as writer:  # another transaction commits meanwhile
                await writer.execute(insert, run)
            second = (await view.execute(count, run)).scalar_one()
            assert (first, second) == (1, 1)
            with pytest.raises(DBAPIError, match="read-only transaction"):
                await view.execute(insert, run)
        async with AsyncSession(engine) as later:  # the next transaction sees the commit
            assert (await later.execute(count, run)).scalar_one() == 2
    finally:
        await engine.dispose()
