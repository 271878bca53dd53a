"""The Shopify webhook, the hottest route, answered without FastAPI's routing layers.

Under wrk, a signed webhook spent more CPU in the framework than in its own work: the
router, the route's request/response wrapper, the exception middleware and the
dependency machinery each add coroutine frames that are resumed on every await of the
request (read the body, wait for the group commit). :class:`ShopifyFastPath` sits
inside the app's own middleware (metrics, nosniff, server errors: unchanged for this
route) and runs the same handler, :func:`afterglow.ingest.api.webhooks.shopify_webhook`, for
``POST /webhooks/shopify`` directly. Its exceptions are rendered by the app's own
exception handlers, looked up as Starlette does (by the exception's class hierarchy),
so every answer (401, 400, 413, 503 with Retry-After...) is the same JSON as through
the router; an exception no handler takes propagates (a 500, with its traceback).
Every other request goes through FastAPI as before. Installed only where the
webhook routes are mounted (not in the ``worker`` role).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from starlette.requests import Request
from starlette.routing import BaseRoute
from starlette.types import ASGIApp, Receive, Scope, Send

from afterglow.ingest.api.webhooks import router as webhooks
from afterglow.ingest.api.webhooks import shopify_webhook

PATH = "/webhooks/shopify"


class ShopifyFastPath:
    def __init__(self, app: ASGIApp, fastapi_app: FastAPI) -> None:
        self.app = app
        self._fastapi = fastapi_app
        # The metrics middleware labels a request by scope["route"]: the same route.
        self._route: BaseRoute = next(r for r in webhooks.routes if getattr(r, "path", "") == PATH)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope["path"] != PATH:
            await self.app(scope, receive, send)
            return
        scope["route"] = self._route
        request = Request(scope, receive)
        try:
            response = await shopify_webhook(request)
        except Exception as exc:
            handler = self._handler_for(exc)
            if handler is None:
                raise
            response = await handler(request, exc)
        await response(scope, receive, send)

    def _handler_for(self, exc: Exception) -> Any:
        handlers = self._fastapi.exception_handlers
        for cls in type(exc).__mro__:
            if cls in handlers:
                return handlers[cls]
        return None
