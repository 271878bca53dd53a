"""A service whose database cannot be reached answers 503 with Retry-After (documented
on every route that reads it), not a 500 that says "bug"."""

from __future__ import annotations

from typing import Annotated

import asyncpg
import pytest
from fastapi import Depends
from sqlalchemy import exc as sa_exc
from sqlalchemy import select

from afterglow.devstack.pytest_plugin import serve_app
from afterglow.devstack.stack import Stack
from afterglow.events import event_tables
from afterglow.kit.app import ServiceSpec, create_service_app
from afterglow.kit.auth import Principal, api_keys_table, require_scope
from afterglow.kit.db import Session, service_metadata
from afterglow.kit.errors import database_unreachable
from afterglow.kit.routing import service_router
from afterglow.kit.settings import ServiceSettings

# Nothing listens on port 1: every connection is refused at once.
UNREACHABLE = "postgresql+asyncpg://postgres@127.0.0.1:1/afterglow"
# A server on a Unix socket that is gone (stopped): connect raises FileNotFoundError,
# which is an OSError but no ConnectionError (it answered 500 in the fault suite).
SOCKET_GONE = "postgresql+asyncpg://postgres@/afterglow?host=/nonexistent/afterglow-socket"

router = service_router()


@router.get("/v1/probe")
async def probe(
    principal: Annotated[Principal, Depends(require_scope("probe:read"))],
) -> dict[str, str]:
    return {"tenant": principal.tenant_id}


@router.get("/v1/public")
async def public(session: Session) -> dict[str, int]:
    return {"one": int(await session.scalar(select(1)) or 0)}


def app(database_url: str = UNREACHABLE) -> object:
    metadata = service_metadata("probe")  # a fresh one: each app defines its tables
    return create_service_app(
        ServiceSpec("probe", "probe", "tests:app", "tests:migrations", 8999),
        ServiceSettings(database_url=database_url, service_role="api", log_json=False),
        tables=event_tables(metadata),
        api_keys_table=api_keys_table(metadata),
        title="probe",
        description="a service whose database is down",
        routers=[router],
    )


class TestDatabaseUnreachable:
    @pytest.mark.parametrize("url", [UNREACHABLE, SOCKET_GONE], ids=["refused", "socket-gone"])
    async def test_routes_answer_503_with_retry_after(self, stack: Stack, url: str) -> None:
        async with serve_app(app(url)) as client:  # type: ignore[arg-type]
            authenticated = await client.get(
                "/v1/probe", headers={"Authorization": "Bearer agk_abc_secret"}
            )
            session_only = await client.get("/v1/public")
            openapi = (await client.get("/openapi.json")).json()
        for r in (authenticated, session_only):
            assert r.status_code == 503, r.text
            assert r.headers["retry-after"] == "5"
            assert r.json()["error"]["code"] == "unavailable"
        for path in ("/v1/probe", "/v1/public"):
            assert "503" in openapi["paths"][path]["get"]["responses"]


def _checkout_failure() -> BaseException:
    """What a pool checkout raised while PostgreSQL was shutting down (the fault suite):
    the adapter's own error class, its cause the driver's."""
    from sqlalchemy.dialects.postgresql.asyncpg import AsyncAdapt_asyncpg_dbapi

    cause = asyncpg.exceptions.CannotConnectNowError("the database system is shutting down")
    try:
        raise AsyncAdapt_asyncpg_dbapi.Error(str(cause)) from cause
    except AsyncAdapt_asyncpg_dbapi.Error as exc:
        return exc


class TestWhatCountsAsUnreachable:
    @pytest.mark.parametrize(
        "exc",
        [
            FileNotFoundError(2, "No such file or directory"),
            ConnectionRefusedError(),
            asyncpg.exceptions.TooManyConnectionsError("sorry, too many clients already"),
            asyncpg.exceptions.CannotConnectNowError("the database system is starting up"),
            sa_exc.OperationalError(
                "connect", {}, asyncpg.exceptions.TooManyConnectionsError("too many")
            ),
            _checkout_failure(),
            sa_exc.OperationalError("connect", {}, _checkout_failure()),
        ],
        ids=[
            "socket-gone",
            "refused",
            "no-slots",
            "starting-up",
            "no-slots-wrapped",
            "shutting-down-at-checkout",
            "shutting-down-at-checkout-wrapped",
        ],
    )
    def test_an_environment_that_is_away_is_a_503(self, exc: BaseException) -> None:
        assert database_unreachable(exc)

    def test_a_bug_stays_a_500(self) -> None:
        violation = sa_exc.IntegrityError("insert", {}, asyncpg.exceptions.UniqueViolationError())
        assert not database_unreachable(violation)
        assert not database_unreachable(ValueError("bad"))
