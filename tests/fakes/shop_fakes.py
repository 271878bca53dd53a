"""Local stand-ins for the shops' discount APIs (third parties: the only fakes the house
allows), served by uvicorn on 127.0.0.1 in a thread.

Shopify Admin GraphQL: the document is parsed and validated against the part of
Shopify's schema it may use (graphql-core: an unknown field, a wrong argument or
variable type is an error, as on Shopify) and executed; the ``X-Shopify-Access-Token``
header is required (401 without the shop's token); ``discountCodeBasicCreate`` answers
``userErrors`` for a missing code, title, startsAt or customerGets and ``TAKEN`` for a
code that exists; every answer carries ``extensions.cost`` with the bucket, and a
request that does not fit in it is answered ``THROTTLED``.

WooCommerce REST coupons (basic auth with the consumer key; ``code`` required and
unique, ``woocommerce_rest_coupon_code_already_exists``) and BigCommerce V2 coupons
(``X-Auth-Token``; name, code, type, amount, applies_to required; 409 on a duplicate).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import itertools
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse, Response
from graphql import build_schema, graphql

from afterglow.devstack.serving import serving

# The part of Shopify's Admin schema (2025-01) the discount calls use.
SHOPIFY_SDL = """
scalar DateTime
scalar Decimal

type QueryRoot {
  codeDiscountNodeByCode(code: String!): DiscountCodeNode
}

type Mutation {
  discountCodeBasicCreate(
    basicCodeDiscount: DiscountCodeBasicInput!
  ): DiscountCodeBasicCreatePayload
  discountCodeFreeShippingCreate(
    freeShippingCodeDiscount: DiscountCodeFreeShippingInput!
  ): DiscountCodeFreeShippingCreatePayload
  discountCodeDeactivate(id: ID!): DiscountCodeDeactivatePayload
}

schema { query: QueryRoot mutation: Mutation }

type DiscountCodeNode { id: ID! }

enum DiscountErrorCode { BLANK INVALID TAKEN TOO_LONG INTERNAL_ERROR }

type DiscountUserError { code: DiscountErrorCode field: [String!] message: String! }

type DiscountCodeBasicCreatePayload {
  codeDiscountNode: DiscountCodeNode
  userErrors: [DiscountUserError!]!
}
type DiscountCodeFreeShippingCreatePayload {
  codeDiscountNode: DiscountCodeNode
  userErrors: [DiscountUserError!]!
}
type DiscountCodeDeactivatePayload {
  codeDiscountNode: DiscountCodeNode
  userErrors: [DiscountUserError!]!
}

input DiscountCustomersInput { add: [ID!] remove: [ID!] }
input DiscountContextInput { customers: DiscountCustomersInput all: Boolean }
input DiscountAmountInput { amount: Decimal appliesOnEachItem: Boolean }
input DiscountCustomerGetsValueInput { percentage: Float discountAmount: DiscountAmountInput }
input DiscountItemsInput { all: Boolean }
input DiscountCustomerGetsInput {
  value: DiscountCustomerGetsValueInput
  items: DiscountItemsInput
}
input DiscountShippingDestinationSelectionInput { all: Boolean }

input DiscountCodeBasicInput {
  title: String
  code: String
  startsAt: DateTime
  endsAt: DateTime
  context: DiscountContextInput
  customerGets: DiscountCustomerGetsInput
  appliesOncePerCustomer: Boolean
  usageLimit: Int
}
input DiscountCodeFreeShippingInput {
  title: String
  code: String
  startsAt: DateTime
  endsAt: DateTime
  context: DiscountContextInput
  destination: DiscountShippingDestinationSelectionInput
  appliesOncePerCustomer: Boolean
  usageLimit: Int
}
"""
SCHEMA = build_schema(SHOPIFY_SDL)
QUERY_COST, MUTATION_COST = 1, 10


@dataclass
class ShopifyDiscounts:
    """One shop: its token, its discounts (by upper-case code) and its bucket."""

    token: str
    discounts: dict[str, dict[str, Any]] = field(default_factory=dict)
    # Each answer's requests: "<operation name>" in arrival order.
    calls: list[str] = field(default_factory=list)
    # The next N create answers are held this long after the discount is stored (the
    # answer is lost to a client with a shorter timeout).
    slow_creates: int = 0
    slow_s: float = 0.0
    # Requests wait on this gate (set: open) before they are served.
    gate: threading.Event = field(default_factory=lambda: _open())
    # The bucket: drained to ``available`` by a test to provoke THROTTLED.
    maximum: float = 1000.0
    restore_rate: float = 50.0
    available: float = 1000.0
    at: float = field(default_factory=time.monotonic)
    throttled: int = 0

    def _bucket(self) -> float:
        now = time.monotonic()
        self.available = min(self.maximum, self.available + (now - self.at) * self.restore_rate)
        self.at = now
        return self.available

    def cost(self, requested: int, actual: int) -> dict[str, Any]:
        return {
            "requestedQueryCost": requested,
            "actualQueryCost": actual,
            "throttleStatus": {
                "maximumAvailable": self.maximum,
                "currentlyAvailable": round(self.available, 1),
                "restoreRate": self.restore_rate,
            },
        }


def _open() -> threading.Event:
    e = threading.Event()
    e.set()
    return e


class FakeShops:
    def __init__(self) -> None:
        self.shopify: dict[str, ShopifyDiscounts] = {}  # by token
        self.woo: dict[str, dict[str, Any]] = {}  # consumer key -> {"customers", "coupons"}
        self.bigcommerce: dict[str, dict[str, dict[str, Any]]] = {}  # token -> code -> coupon
        self._ids = itertools.count(1057371)
        self.url = ""
        self.app = self._build()

    def shop(self, token: str) -> ShopifyDiscounts:
        return self.shopify.setdefault(token, ShopifyDiscounts(token))

    def _build(self) -> FastAPI:
        app = FastAPI()

        @app.post("/admin/api/{version}/graphql.json")
        async def shopify_graphql(request: Request, version: str) -> JSONResponse:
            shop = self.shopify.get(request.headers.get("x-shopify-access-token", ""))
            if shop is None:
                return JSONResponse({"errors": "[API] Invalid API key or access token"}, 401)
            body = await request.json()
            await asyncio.to_thread(shop.gate.wait, 30)
            document = body.get("query") or ""
            is_mutation = document.lstrip().startswith("mutation")
            requested = MUTATION_COST if is_mutation else QUERY_COST
            if shop._bucket() < requested:
                shop.throttled += 1
                return JSONResponse(
                    {
                        "errors": [
                            {
                                "message": "Throttled",
                                "extensions": {
                                    "code": "THROTTLED",
                                    "documentation": "https://shopify.dev/api/usage/rate-limits",
                                },
                            }
                        ],
                        "extensions": {"cost": shop.cost(requested, 0)},
                    }
                )
            shop.available -= requested
            slow = [False]
            root = _ShopifyRoot(self, shop, slow)
            result = await graphql(
                SCHEMA,
                document,
                root_value=root,
                variable_values=body.get("variables"),
                operation_name=body.get("operationName"),
            )
            out: dict[str, Any] = {"extensions": {"cost": shop.cost(requested, requested)}}
            if result.errors:
                out["errors"] = [{"message": e.message} for e in result.errors]
            if result.data is not None:
                out["data"] = result.data
            if slow[0]:
                await asyncio.sleep(shop.slow_s)
            return JSONResponse(out)

        @app.get("/wp-json/wc/v3/customers/{customer_id}")
        async def woo_customer(request: Request, customer_id: str) -> JSONResponse:
            store = self._woo(request)
            if store is None:
                return JSONResponse({"code": "woocommerce_rest_cannot_view"}, 401)
            customer = store["customers"].get(customer_id)
            if customer is None:
                return JSONResponse({"code": "woocommerce_rest_invalid_id"}, 404)
            return JSONResponse({"id": int(customer_id), **customer})

        @app.get("/wp-json/wc/v3/coupons")
        async def woo_find(request: Request) -> JSONResponse:
            store = self._woo(request)
            if store is None:
                return JSONResponse({"code": "woocommerce_rest_cannot_view"}, 401)
            code = request.query_params.get("code", "").lower()
            return JSONResponse([c for c in store["coupons"].values() if c["code"] == code])

        @app.post("/wp-json/wc/v3/coupons")
        async def woo_create(request: Request) -> JSONResponse:
            store = self._woo(request)
            if store is None:
                return JSONResponse({"code": "woocommerce_rest_cannot_create"}, 401)
            body = await request.json()
            if not body.get("code"):
                return JSONResponse({"code": "rest_missing_callback_param"}, 400)
            code = str(body["code"]).lower()  # as wc_format_coupon_code does
            if code in store["coupons"]:
                return JSONResponse(
                    {"code": "woocommerce_rest_coupon_code_already_exists", "message": "exists"},
                    400,
                )
            coupon = {**body, "code": code, "id": next(self._ids)}
            store["coupons"][code] = coupon
            return JSONResponse(coupon, 201)

        @app.delete("/wp-json/wc/v3/coupons/{coupon_id}")
        async def woo_delete(request: Request, coupon_id: int) -> JSONResponse:
            store = self._woo(request)
            if store is None:
                return JSONResponse({"code": "woocommerce_rest_cannot_delete"}, 401)
            for code, c in list(store["coupons"].items()):
                if c["id"] == coupon_id:
                    del store["coupons"][code]
                    return JSONResponse(c)
            return JSONResponse({"code": "woocommerce_rest_shop_coupon_invalid_id"}, 404)

        @app.get("/stores/{store_hash}/v2/coupons")
        async def bc_find(request: Request, store_hash: str) -> Response:
            coupons = self.bigcommerce.get(request.headers.get("x-auth-token", ""))
            if coupons is None:
                return JSONResponse([{"status": 401, "message": "unauthorized"}], 401)
            code = request.query_params.get("code", "").upper()
            found = [c for c in coupons.values() if c["code"].upper() == code]
            return JSONResponse(found) if found else Response(status_code=204)

        @app.post("/stores/{store_hash}/v2/coupons")
        async def bc_create(request: Request, store_hash: str) -> JSONResponse:
            coupons = self.bigcommerce.get(request.headers.get("x-auth-token", ""))
            if coupons is None:
                return JSONResponse([{"status": 401, "message": "unauthorized"}], 401)
            body = await request.json()
            missing = [k for k in ("name", "code", "type", "amount", "applies_to") if k not in body]
            if missing:
                return JSONResponse([{"status": 400, "message": f"missing {missing}"}], 400)
            if body["code"].upper() in coupons:
                return JSONResponse([{"status": 409, "message": "duplicate code"}], 409)
            coupon = {**body, "id": next(self._ids)}
            coupons[body["code"].upper()] = coupon
            return JSONResponse(coupon, 201)

        @app.put("/stores/{store_hash}/v2/coupons/{coupon_id}")
        async def bc_update(request: Request, store_hash: str, coupon_id: int) -> JSONResponse:
            coupons = self.bigcommerce.get(request.headers.get("x-auth-token", ""))
            if coupons is None:
                return JSONResponse([{"status": 401, "message": "unauthorized"}], 401)
            for c in coupons.values():
                if c["id"] == coupon_id:
                    c.update(await request.json())
                    return JSONResponse(c)
            return JSONResponse([{"status": 404, "message": "not found"}], 404)

        return app

    def _woo(self, request: Request) -> dict[str, Any] | None:
        auth = request.headers.get("authorization", "")
        if not auth.startswith("Basic "):
            return None
        key, _, secret = base64.b64decode(auth.removeprefix("Basic ")).decode().partition(":")
        store = self.woo.get(key)
        return store if store is not None and store.get("secret") == secret else None


class _ShopifyRoot:
    """Resolvers of the fake shop (graphql-core's default resolver reads attributes)."""

    def __init__(self, fakes: FakeShops, shop: ShopifyDiscounts, slow: list[bool]) -> None:
        self.fakes, self.shop, self.slow = fakes, shop, slow

    def codeDiscountNodeByCode(self, info: Any, code: str) -> dict[str, Any] | None:
        self.shop.calls.append("codeDiscountNodeByCode")
        found = self.shop.discounts.get(code.upper())
        return {"id": found["id"]} if found else None

    def discountCodeBasicCreate(self, info: Any, basicCodeDiscount: dict[str, Any]) -> Any:
        return self._create("discountCodeBasicCreate", basicCodeDiscount, "customerGets")

    def discountCodeFreeShippingCreate(
        self,
        info: Any,
        freeShippingCodeDiscount: dict[str, Any],
    ) -> Any:
        return self._create(
            "discountCodeFreeShippingCreate", freeShippingCodeDiscount, "destination"
        )

    def discountCodeDeactivate(self, info: Any, id: str) -> Any:
        self.shop.calls.append("discountCodeDeactivate")
        for d in self.shop.discounts.values():
            if d["id"] == id:
                d["status"] = "EXPIRED"
                return {"codeDiscountNode": {"id": id}, "userErrors": []}
        return {
            "codeDiscountNode": None,
            "userErrors": [
                {"code": "INVALID", "field": ["id"], "message": "Discount does not exist"}
            ],
        }

    def _create(self, name: str, data: dict[str, Any], value_field: str) -> Any:
        self.shop.calls.append(name)
        errors = [
            {"code": "BLANK", "field": ["basicCodeDiscount", f], "message": f"{f} can't be blank"}
            for f in ("code", "title", "startsAt", value_field)
            if not data.get(f)
        ]
        code = str(data.get("code") or "").upper()
        if code and code in self.shop.discounts:
            errors.append(
                {
                    "code": "TAKEN",
                    "field": ["basicCodeDiscount", "code"],
                    "message": "Code must be unique. Please try a different code.",
                }
            )
        if errors:
            return {"codeDiscountNode": None, "userErrors": errors}
        gid = f"gid://shopify/DiscountCodeNode/{next(self.fakes._ids)}"
        self.shop.discounts[code] = {"id": gid, "status": "ACTIVE", "input": data}
        if self.shop.slow_creates > 0:
            self.shop.slow_creates -= 1
            self.slow[0] = True
        return {"codeDiscountNode": {"id": gid}, "userErrors": []}


@contextlib.contextmanager
def running_shops() -> Iterator[FakeShops]:
    fake = FakeShops()
    with serving(fake.app) as url:
        fake.url = url
        yield fake
