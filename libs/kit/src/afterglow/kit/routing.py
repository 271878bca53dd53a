"""Routes whose JSON bodies are parsed within bounds of size and depth.

FastAPI parses a JSON body with ``json.loads`` and no bound: a body of 10,000 nested
arrays raised ``RecursionError`` (500 where the model had a free-form field, a bare 400
elsewhere) and a body of any size was read into memory. Every router of every service
is built with :func:`service_router` (``create_service_app`` refuses one that is not),
so each route that takes a JSON body parses it once, with
:func:`afterglow.kit.jsonbody.loads_bounded`, before FastAPI validates it:

- larger than ``MAX_JSON_BODY_BYTES``: 413 ``payload_too_large``;
- not JSON, or nested deeper than ``jsonbody.MAX_DEPTH``: 400 ``malformed_json`` or
  ``too_deep``;

always with the JSON error body of :mod:`afterglow.kit.errors`. A route that reads the
body itself (a webhook receiver, a YAML upload) uses :func:`read_body` for the same
size bound.
"""

from __future__ import annotations

import email.message
from collections.abc import Callable, Coroutine
from typing import Any

from fastapi import APIRouter, Request, Response
from fastapi import params as fastapi_params
from fastapi.routing import APIRoute

from afterglow.kit.errors import BadRequest, PayloadTooLarge
from afterglow.kit.jsonbody import JsonBodyError, loads_bounded

# A journey definition or a batch of simulated events is the largest JSON body a route
# takes; it stays far below this.
MAX_JSON_BODY_BYTES = 1024 * 1024


async def read_body(request: Request, max_bytes: int = MAX_JSON_BODY_BYTES) -> bytes:
    """The request body, refused with 413 as soon as it is known to exceed
    ``max_bytes`` (from Content-Length, or while reading), so that a huge body is never
    held in memory whole."""
    declared = request.headers.get("content-length")
    if declared and declared.isascii() and declared.isdigit() and int(declared) > max_bytes:
        raise _too_large(max_bytes)
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise _too_large(max_bytes)
        chunks.append(chunk)
    return b"".join(chunks)


def _too_large(max_bytes: int) -> PayloadTooLarge:
    return PayloadTooLarge(f"the body is larger than {max_bytes} bytes")


def parse_json(body: bytes) -> Any:
    """``loads_bounded`` with its refusals as 400s that say what is wrong."""
    try:
        return loads_bounded(body)
    except JsonBodyError as exc:
        raise BadRequest(str(exc), code=exc.code) from exc


def is_json(content_type: str | None) -> bool:
    """What FastAPI parses as JSON: application/json and application/*+json."""
    if not content_type:
        return False
    message = email.message.Message()
    message["content-type"] = content_type
    subtype = message.get_content_subtype()
    return message.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


class _BoundedJsonRequest(Request):
    """A request whose ``json()`` is the bounded parse (FastAPI's documented way to
    change how a route reads its body: a Request subclass that fills ``_body`` and
    ``_json``, which Starlette's own ``body()`` and ``json()`` return when present)."""

    async def parse_within_bounds(self) -> None:
        self._body = await read_body(self)
        self._json = parse_json(self._body) if self._body else None


class BoundedJsonRoute(APIRoute):
    """An APIRoute that parses its JSON body within bounds before FastAPI sees it, and
    documents the two answers that gives (a route's own documentation of them wins)."""

    def __init__(self, path: str, endpoint: Callable[..., Any], **kwargs: Any) -> None:
        super().__init__(path, endpoint, **kwargs)
        if self._parses_json():
            self.responses.setdefault(
                400,
                {
                    "description": "The body is not JSON (`malformed_json`) or nests too deep "
                    "(`too_deep`)"
                },
            )
            self.responses.setdefault(
                413, {"description": f"The body is larger than {MAX_JSON_BODY_BYTES} bytes"}
            )

    def _parses_json(self) -> bool:
        body_field = self.body_field
        return body_field is not None and not isinstance(body_field.field_info, fastapi_params.Form)

    def get_route_handler(self) -> Callable[[Request], Coroutine[Any, Any, Response]]:
        handler = super().get_route_handler()
        if not self._parses_json():
            return handler

        async def bounded(request: Request) -> Response:
            if not is_json(request.headers.get("content-type")):
                return await handler(request)  # FastAPI answers 422 for the wrong type
            bounded_request = _BoundedJsonRequest(request.scope, request.receive)
            await bounded_request.parse_within_bounds()
            return await handler(bounded_request)

        return bounded


def service_router(**kwargs: Any) -> APIRouter:
    """An APIRouter whose routes parse JSON bodies within bounds; every service builds
    its routers with it."""
    return APIRouter(route_class=BoundedJsonRoute, **kwargs)


def unbounded_routes(routers: list[APIRouter]) -> list[str]:
    """Routes that would parse a body without the bounds (built with a plain
    APIRouter), as ``METHOD path`` for the start-up error."""
    return [
        f"{','.join(sorted(route.methods or ()))} {route.path}"
        for router in routers
        for route in router.routes
        if isinstance(route, APIRoute) and not isinstance(route, BoundedJsonRoute)
    ]
