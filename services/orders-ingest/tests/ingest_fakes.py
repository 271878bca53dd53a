"""A local stand-in for the Shopify Admin REST, WooCommerce REST and BigCommerce V2
order APIs (third parties: the only fakes the house allows), served by uvicorn on
127.0.0.1 in a thread."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import threading
from collections.abc import Iterator
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response

from afterglow.devstack.serving import serving


class FakePlatforms:
    def __init__(self) -> None:
        # Orders by access token (one token per test tenant).
        self.shopify: dict[str, list[dict[str, Any]]] = {}
        self.woo: dict[str, list[dict[str, Any]]] = {}
        self.bigcommerce: dict[str, dict[str, Any]] = {}
        # BigCommerce store behaviour by access token: a status every request gets (the
        # store API down), and a gate requests wait on (a slow store) until it is set.
        self.bc_status: dict[str, int] = {}
        self.bc_gates: dict[str, threading.Event] = {}
        # "<token> <path>" of every BigCommerce request, answered or not.
        self.bc_requests: list[str] = []
        self.requests: list[str] = []
        self.url = ""
        self.app = self._build()

    def _build(self) -> FastAPI:
        app = FastAPI()

        @app.get("/admin/api/{version}/orders.json")
        async def shopify_orders(request: Request, version: str) -> JSONResponse:
            self.requests.append(str(request.url))
            token = request.headers.get("x-shopify-access-token", "")
            if token not in self.shopify:
                return JSONResponse({"errors": "[API] Invalid API key or access token"}, 401)
            q = request.query_params
            offset = int(q.get("page_info", "0"))
            limit = int(q.get("limit", "50"))
            since = datetime.fromisoformat(q.get("updated_at_min", "1970-01-01T00:00:00+00:00"))
            matching = sorted(
                (
                    o
                    for o in self.shopify[token]
                    if datetime.fromisoformat(o["updated_at"]) >= since
                ),
                key=lambda o: o["updated_at"],
            )
            page = matching[offset : offset + limit]
            headers = {}
            if offset + limit < len(matching):
                path = f"/admin/api/{version}/orders.json"
                nxt = f"{self.url}{path}?limit={limit}&page_info={offset + limit}"
                headers["Link"] = f'<{nxt}>; rel="next"'
            return JSONResponse({"orders": page}, headers=headers)

        @app.get("/wp-json/wc/v3/orders")
        async def woo_orders(request: Request) -> JSONResponse:
            auth = request.headers.get("authorization", "")
            user = (
                base64.b64decode(auth.removeprefix("Basic ")).decode().split(":")[0] if auth else ""
            )
            if user not in self.woo:
                return JSONResponse({"code": "woocommerce_rest_cannot_view"}, 401)
            q = request.query_params
            since = q.get("modified_after", "1970-01-01T00:00:00")
            # after: created after (the history import); modified_after: reconciliation.
            created_after = q.get("after", "1970-01-01T00:00:00")
            per_page, page = int(q.get("per_page", "10")), int(q.get("page", "1"))
            matching = sorted(
                (
                    o
                    for o in self.woo[user]
                    if o["date_modified_gmt"] >= since
                    and o.get("date_created_gmt", "9999") >= created_after
                ),
                key=lambda o: (
                    o["date_modified_gmt"] if "modified_after" in q else o["date_created_gmt"]
                ),
            )
            pages = max(1, -(-len(matching) // per_page))
            chunk = matching[(page - 1) * per_page : page * per_page]
            return JSONResponse(
                chunk, headers={"X-WP-TotalPages": str(pages), "X-WP-Total": str(len(matching))}
            )

        @app.get("/stores/{store_hash}/v2/orders")
        async def bc_orders(request: Request, store_hash: str) -> Response:
            token = await self._bc_arrive(request)
            q = request.query_params
            since = datetime.fromisoformat(q.get("min_date_created", "1970-01-01T00:00:00+00:00"))
            page, limit = int(q.get("page", "1")), int(q.get("limit", "50"))
            mine = sorted(
                (
                    o
                    for key, o in self.bigcommerce.items()
                    if key.startswith(f"{token}:")
                    and parsedate_to_datetime(o["date_created"]) >= since
                ),
                key=lambda o: parsedate_to_datetime(o["date_created"]),
            )
            chunk = mine[(page - 1) * limit : page * limit]
            if not chunk:
                return Response(status_code=204)  # as V2 answers a page past the end
            return JSONResponse(
                [{k: v for k, v in o.items() if not k.startswith("_")} for o in chunk]
            )

        @app.get("/stores/{store_hash}/v3/orders/{order_id}/payment_actions/refunds")
        async def bc_refunds(request: Request, store_hash: str, order_id: int) -> JSONResponse:
            token = await self._bc_arrive(request)
            order = self.bigcommerce.get(f"{token}:{order_id}") or {}
            return JSONResponse({"data": order.get("_refunds", []), "meta": {}})

        @app.get("/stores/{store_hash}/v2/orders/{order_id}")
        async def bc_order(request: Request, store_hash: str, order_id: int) -> JSONResponse:
            token = await self._bc_arrive(request)
            if token in self.bc_status:
                return JSONResponse({"status": self.bc_status[token]}, self.bc_status[token])
            order = self.bigcommerce.get(f"{token}:{order_id}")
            if order is None:
                return JSONResponse({"status": 404, "title": "order not found"}, 404)
            return JSONResponse({k: v for k, v in order.items() if not k.startswith("_")})

        @app.get("/stores/{store_hash}/v2/orders/{order_id}/products")
        async def bc_products(request: Request, store_hash: str, order_id: int) -> JSONResponse:
            token = await self._bc_arrive(request)
            if token in self.bc_status:
                return JSONResponse({"status": self.bc_status[token]}, self.bc_status[token])
            order = self.bigcommerce.get(f"{token}:{order_id}")
            return JSONResponse((order or {}).get("_products", []))

        return app

    async def _bc_arrive(self, request: Request) -> str:
        token = request.headers.get("x-auth-token", "")
        self.bc_requests.append(f"{token} {request.url.path}")
        gate = self.bc_gates.get(token)
        if gate is not None:
            # The test sets it from its own thread; bounded so a forgotten gate ends.
            await asyncio.to_thread(gate.wait, 30)
        return token

    def bc_request_count(self, token: str) -> int:
        return sum(r.startswith(f"{token} ") for r in self.bc_requests)


@contextlib.contextmanager
def running_fake() -> Iterator[FakePlatforms]:
    fake = FakePlatforms()
    with serving(fake.app) as url:
        fake.url = url
        yield fake
