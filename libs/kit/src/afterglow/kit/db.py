"""Database plumbing: one MetaData per service schema, the async engine, the session.

The entrypoint owns the transaction: the HTTP dependency :func:`get_session` (and the
consumer runtime) begin and commit; domain and repository code may flush, never commit.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, Request
from pydantic_core import to_json
from sqlalchemy import MetaData, event, text
from sqlalchemy import exc as sa_exc
from sqlalchemy.ext.asyncio import (
    AsyncEngine,
    AsyncSession,
    async_sessionmaker,
    create_async_engine,
)
from sqlalchemy.orm import DeclarativeBase

from afterglow.kit import openapi

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def service_metadata(schema: str) -> MetaData:
    return MetaData(schema=schema, naming_convention=NAMING_CONVENTION)


def declarative_base(schema: str) -> type[DeclarativeBase]:
    """A declarative base whose tables live in ``schema``."""

    class Base(DeclarativeBase):
        metadata = service_metadata(schema)

    return Base


def _json_text(value: Any) -> str:
    """JSONB parameters are encoded by pydantic-core (Rust), not the stdlib ``json``:
    the set-based writes send a whole batch's rows as one JSON document
    (``jsonb_to_recordset``), and ``json.dumps`` of it was the largest single entry of a
    journey timer round's profile (6% of the process; 2.5 ms for 200 profile rows,
    0.6 ms here). PostgreSQL parses both the same; the only difference is that values
    the stdlib refuses (a datetime, a set) are encoded instead of raising."""
    return to_json(value).decode()


# A pooled connection back in use within this long of its return is not pinged on
# checkout (see ping_when_idle).
PING_AFTER_IDLE_S = 1.0


def ping_when_idle(engine: AsyncEngine, after_s: float = PING_AFTER_IDLE_S) -> None:
    """Check a pooled connection's liveness on checkout only when it sat idle in the
    pool for ``after_s`` or more. SQLAlchemy's ``pool_pre_ping`` pings at every
    checkout: with asyncpg that is BEGIN, a query and ROLLBACK, three round trips, and
    the consumers, relays and dispatcher check a connection out for every batch, claim
    and settle (~3% of the journeys process and as many statements in PostgreSQL at
    200 orders/s). What the ping guards against is a connection that died while idle
    (a server restart, an idle timeout on the way); one handed back a moment ago was
    alive then, and if it died in between, the statement fails as it would have had
    the server died just after a ping: the consumers and workers retry it as
    transient, a request answers 503 and is retried. A failed ping invalidates the
    whole pool, as ``pool_pre_ping`` does (the server went away for all of them)."""
    sync_engine = engine.sync_engine
    dialect = sync_engine.dialect

    @event.listens_for(sync_engine, "checkin")
    def _returned(dbapi_connection: Any, record: Any) -> None:
        record.info["afterglow_idle_since"] = time.monotonic()

    @event.listens_for(sync_engine, "checkout")
    def _ping_if_idle(dbapi_connection: Any, record: Any, proxy: Any) -> None:
        since = record.info.get("afterglow_idle_since")
        if since is None or time.monotonic() - since < after_s:
            return  # new (just connected), or in use a moment ago
        try:
            dialect.do_ping(dbapi_connection)
        except dialect.loaded_dbapi.Error as exc:  # what pool_pre_ping judges
            if dialect.is_disconnect(exc, dbapi_connection, None):
                raise sa_exc.InvalidatePoolError() from exc
            raise


def create_engine(
    url: str,
    *,
    application_name: str,
    pool_size: int = 10,
    max_overflow: int = 10,
    pre_ping: bool = True,
) -> AsyncEngine:
    """``pre_ping``: check a connection that sat idle before handing it out
    (:func:`ping_when_idle`); ``False``: never (see :func:`writer_engine`).

    Last in, first out: the connection returned last is handed out first, so a steady
    load keeps reusing a few warm connections (never idle long enough to be pinged)
    while the rest of the pool waits; first in, first out cycled through every
    connection, each idle for the pool's size times the gap between checkouts."""
    engine = create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_use_lifo=True,
        pool_timeout=10,
        json_serializer=_json_text,
        connect_args={
            "server_settings": {"application_name": application_name},
            "command_timeout": 30,
        },
    )
    if pre_ping:
        ping_when_idle(engine)
    return engine


def writer_engine(url: str, *, application_name: str, pool_size: int) -> AsyncEngine:
    """The small pool of the group commits' writer tasks (afterglow.kit.group_commit):
    their batches run back to back, so the ping on checkout that guards the main pool
    against connections that died while idle cost three round trips (BEGIN, a query,
    ROLLBACK) per batch, ~7% of a redemption's CPU under wrk. Without it, a connection
    that did die fails its batch with ``connection_invalidated`` (the pool then drops
    it) and :class:`~afterglow.kit.group_commit.GroupCommit` applies the batch once
    more on a new connection."""
    return create_engine(
        url,
        application_name=application_name,
        pool_size=pool_size,
        max_overflow=pool_size,
        pre_ping=False,
    )


def create_sessionmaker(engine: AsyncEngine) -> async_sessionmaker[AsyncSession]:
    return async_sessionmaker(engine, expire_on_commit=False)


async def read_one_snapshot(session: AsyncSession) -> None:
    """The rest of this transaction reads one snapshot, and writes nothing: a view made
    of several queries then never mixes the states before and after a concurrent
    commit. Must be the transaction's first statement (PostgreSQL refuses it later)."""
    await session.execute(text("SET TRANSACTION ISOLATION LEVEL REPEATABLE READ READ ONLY"))


@openapi.answers(openapi.UNAVAILABLE)
async def _session(request: Request) -> AsyncIterator[AsyncSession]:
    sessionmaker: async_sessionmaker[AsyncSession] = request.app.state.runtime.sessionmaker
    async with sessionmaker.begin() as session:
        yield session


# scope="function": the transaction commits when the route returns, before the
# response is sent, so a 2xx always means "committed" (webhooks rely on it).
get_session = Depends(_session, scope="function")
Session = Annotated[AsyncSession, get_session]
