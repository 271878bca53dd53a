"""Database plumbing: one MetaData per service schema, the async engine, the session.

The entrypoint owns the transaction: the HTTP dependency :func:`get_session` (and the
consumer runtime) begin and commit; domain and repository code may flush, never commit.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import Depends, Request
from pydantic_core import to_json
from sqlalchemy import MetaData, text
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


def create_engine(
    url: str,
    *,
    application_name: str,
    pool_size: int = 10,
    max_overflow: int = 10,
    pre_ping: bool = True,
) -> AsyncEngine:
    """``pre_ping=False``: no liveness check on checkout (see :func:`writer_engine`)."""
    return create_async_engine(
        url,
        pool_size=pool_size,
        max_overflow=max_overflow,
        pool_pre_ping=pre_ping,
        pool_timeout=10,
        json_serializer=_json_text,
        connect_args={
            "server_settings": {"application_name": application_name},
            "command_timeout": 30,
        },
    )


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
