"""Errors that carry their meaning, rendered as ``{"error": {code, message, field?}}``.

Services raise :class:`AppError` subclasses from routes and domain code; consumers map
the same classes to retry or dead-letter (a 4xx-class error is permanent).
"""

from __future__ import annotations

import logging
from typing import Any

import asyncpg
from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from sqlalchemy import exc as sa_exc
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)
# What a client should wait before retrying when the database cannot be reached.
RETRY_AFTER_S = 5


class AppError(Exception):
    status_code = 400
    code = "bad_request"

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        code: str | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        if code:
            self.code = code
        self.headers = headers

    def body(self) -> dict[str, Any]:
        err: dict[str, Any] = {"code": self.code, "message": self.message}
        if self.field:
            err["field"] = self.field
        return {"error": err}


class BadRequest(AppError):
    status_code, code = 400, "bad_request"


class Unauthorized(AppError):
    status_code, code = 401, "unauthorized"


class Forbidden(AppError):
    status_code, code = 403, "forbidden"


class NotFound(AppError):
    status_code, code = 404, "not_found"


class Conflict(AppError):
    status_code, code = 409, "conflict"


class Gone(AppError):
    status_code, code = 410, "gone"


class PayloadTooLarge(AppError):
    status_code, code = 413, "payload_too_large"


class Unprocessable(AppError):
    status_code, code = 422, "validation_error"


def error_response(
    status: int,
    code: str,
    message: str,
    field: str | None = None,
    headers: dict[str, str] | None = None,
    **extra: Any,
) -> JSONResponse:
    err: dict[str, Any] = {"code": code, "message": message}
    if field:
        err["field"] = field
    err.update(extra)
    return JSONResponse({"error": err}, status_code=status, headers=headers)


def _loc(loc: tuple[Any, ...]) -> str:
    parts = [str(p) for p in loc if p not in ("body", "query", "path", "header")]
    return ".".join(parts) or ".".join(str(p) for p in loc)


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(AppError)
    async def _app_error(_: Request, exc: AppError) -> JSONResponse:
        return JSONResponse(exc.body(), status_code=exc.status_code, headers=exc.headers)

    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        errors = exc.errors()
        first = errors[0] if errors else {"loc": (), "msg": "invalid request"}
        details = [{"field": _loc(tuple(e["loc"])), "message": e["msg"]} for e in errors[:20]]
        field = _loc(tuple(first["loc"]))
        return error_response(
            422, "validation_error", f"{field}: {first['msg']}", field=field, details=details
        )

    async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
        if not database_unreachable(exc):
            raise exc  # a bug stays a 500 with its traceback, not a retry hint
        log.warning("database unreachable: %s", type(exc).__name__)
        return error_response(
            503,
            "unavailable",
            "the service cannot reach its database; retry shortly",
            headers={"Retry-After": str(RETRY_AFTER_S)},
        )

    for cls in (
        sa_exc.TimeoutError,
        sa_exc.DBAPIError,
        # a failed pool checkout surfaces as the driver adapter's own error class
        # (an EmulatedDBAPIException), not wrapped in DBAPIError
        sa_exc.EmulatedDBAPIException,
        OSError,
        *_DRIVER_UNAVAILABLE,
    ):
        app.add_exception_handler(cls, _unavailable)

    @app.exception_handler(StarletteHTTPException)
    async def _http(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        code = {
            400: "bad_request",
            404: "not_found",
            405: "method_not_allowed",
            413: "payload_too_large",
        }.get(exc.status_code, "http_error")
        return error_response(
            exc.status_code, code, str(exc.detail), headers=getattr(exc, "headers", None)
        )


# asyncpg's own "not now": the server is starting or shutting down, or every connection
# slot is taken. SQLAlchemy hands them on as they are at connect, or wrapped (``orig``).
_DRIVER_UNAVAILABLE: tuple[type[BaseException], ...] = (
    asyncpg.PostgresConnectionError,
    asyncpg.exceptions.CannotConnectNowError,
    asyncpg.exceptions.TooManyConnectionsError,
)


def _chain(exc: BaseException, depth: int = 5) -> list[BaseException]:
    """The error, what it wraps (``orig``) and what caused it, a few levels down:
    SQLAlchemy wraps the adapter's error, whose cause is the driver's."""
    seen: list[BaseException] = []
    todo: list[BaseException | None] = [exc]
    while todo and len(seen) < depth * 2:
        current = todo.pop(0)
        if current is None or current in seen:
            continue
        seen.append(current)
        todo += [getattr(current, "orig", None), current.__cause__]
    return seen


def database_unreachable(exc: BaseException) -> bool:
    """True for the failures that say "no database right now", which a retry may cure:
    the pool waited in vain (sqlalchemy TimeoutError), a connection was refused or
    dropped, the server's socket is gone (an OSError such as FileNotFoundError on a Unix
    socket: a 15 s outage answered webhooks 500 for it), the server is starting up or
    out of connection slots. A constraint violation or a bad statement is a bug and
    stays a 500. The driver's error may come as it is, wrapped (``orig``) or as the
    cause of the adapter's own error (a failed pool checkout)."""
    for candidate in _chain(exc):
        if isinstance(candidate, (sa_exc.TimeoutError, OSError, *_DRIVER_UNAVAILABLE)):
            return True
    return isinstance(exc, sa_exc.DBAPIError) and bool(exc.connection_invalidated)
