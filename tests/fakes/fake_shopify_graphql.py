"""A local stand-in for Shopify's Admin GraphQL ``orders`` connection (a third party:
the only kind of fake the house allows), served by uvicorn on 127.0.0.1 in a thread.

It checks what Shopify checks: the ``X-Shopify-Access-Token`` header (401 without the
shop's token), a GraphQL document it can parse, fields that exist on their types (an
unknown field is an error, as on Shopify), cursor pagination (opaque cursors, ``first``
at most 250), the ``created_at:>=`` search filter, and the cost-based throttle: every
answer carries ``extensions.cost`` with the bucket, and the fake answers ``THROTTLED``
(HTTP 200, an error with that code) once, at the request ``throttle_at``.
"""

from __future__ import annotations

import base64
import contextlib
import re
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse

from afterglow.devstack.serving import serving

# The part of Shopify's schema the import may ask for: type -> field -> field type
# (None: a scalar). Anything else is an error, so the import cannot rely on a field
# that does not exist.
MONEY_BAG = {"shopMoney": "MoneyV2", "presentmentMoney": "MoneyV2"}
SCHEMA: dict[str, dict[str, str | None]] = {
    "QueryRoot": {"orders": "OrderConnection"},
    "OrderConnection": {"pageInfo": "PageInfo", "nodes": "Order", "edges": "OrderEdge"},
    "OrderEdge": {"cursor": None, "node": "Order"},
    "PageInfo": {"hasNextPage": None, "endCursor": None, "hasPreviousPage": None},
    "Order": {
        **{
            f: None
            for f in [
                "id",
                "legacyResourceId",
                "name",
                "createdAt",
                "processedAt",
                "updatedAt",
                "cancelledAt",
                "cancelReason",
                "email",
                "phone",
                "customerLocale",
                "displayFulfillmentStatus",
                "displayFinancialStatus",
                "discountCodes",
                "currencyCode",
            ]
        },
        "totalPriceSet": "MoneyBag",
        "subtotalPriceSet": "MoneyBag",
        "customer": "Customer",
        "shippingAddress": "MailingAddress",
        "lineItems": "LineItemConnection",
        "fulfillments": "Fulfillment",
        "refunds": "Refund",
    },
    "MoneyBag": MONEY_BAG,
    "MoneyV2": {"amount": None, "currencyCode": None},
    "Customer": {
        **{f: None for f in ["id", "legacyResourceId", "email", "phone", "firstName", "lastName"]},
        "emailMarketingConsent": "EmailMarketingConsent",
    },
    "EmailMarketingConsent": {"marketingState": None},
    "MailingAddress": {
        f: None
        for f in [
            "firstName",
            "address1",
            "address2",
            "city",
            "zip",
            "countryCodeV2",
            "phone",
            "province",
        ]
    },
    "LineItemConnection": {"nodes": "LineItem"},
    "LineItem": {
        **{f: None for f in ["id", "sku", "title", "quantity"]},
        "originalUnitPriceSet": "MoneyBag",
        "product": "Product",
    },
    "Product": {"id": None, "legacyResourceId": None},
    "Fulfillment": {"createdAt": None, "trackingInfo": "FulfillmentTrackingInfo"},
    "FulfillmentTrackingInfo": {"number": None, "company": None},
    "Refund": {
        "id": None,
        "legacyResourceId": None,
        "createdAt": None,
        "totalRefundedSet": "MoneyBag",
    },
}


class GraphQLError(Exception):
    pass


# --- a small GraphQL parser: operations, variables, fields, arguments ---------------

_TOKEN = re.compile(
    r'\s*(?:(\.\.\.)|([A-Za-z_][A-Za-z0-9_]*)|(-?\d+(?:\.\d+)?)|("(?:[^"\\]|\\.)*")|([{}()\[\]:!$=,@]))'
)


@dataclass
class Field:
    name: str
    args: dict[str, Any] = field(default_factory=dict)
    children: list[Field] = field(default_factory=list)


@dataclass
class Operation:
    kind: str
    name: str | None
    variables: dict[str, str]  # name -> type
    selection: list[Field]


def _tokens(text: str) -> list[str]:
    out, pos = [], 0
    text = re.sub(r"#[^\n]*", "", text)
    while pos < len(text):
        if text[pos:].strip() == "":
            break
        m = _TOKEN.match(text, pos)
        if not m or m.end() == pos:
            raise GraphQLError(f"Parse error on {text[pos : pos + 20]!r}")
        out.append(next(g for g in m.groups() if g is not None))
        pos = m.end()
    return out


class _Parser:
    def __init__(self, text: str) -> None:
        self.t = [t for t in _tokens(text) if t != ","]
        self.i = 0

    def peek(self) -> str | None:
        return self.t[self.i] if self.i < len(self.t) else None

    def take(self, expected: str | None = None) -> str:
        tok = self.peek()
        if tok is None or (expected is not None and tok != expected):
            raise GraphQLError(f"Parse error: expected {expected!r}, got {tok!r}")
        self.i += 1
        return tok

    def operation(self) -> Operation:
        kind = self.take()
        if kind not in ("query", "mutation"):
            raise GraphQLError(f"Parse error: {kind!r} is not an operation")
        name = None
        if self.peek() not in ("(", "{"):
            name = self.take()
        variables: dict[str, str] = {}
        if self.peek() == "(":
            self.take("(")
            while self.peek() != ")":
                self.take("$")
                var = self.take()
                self.take(":")
                variables[var] = self.type_ref()
                if self.peek() == "=":
                    self.take("=")
                    self.value()
            self.take(")")
        op = Operation(kind, name, variables, self.selection_set())
        if self.peek() is not None:
            raise GraphQLError(f"Parse error: unexpected {self.peek()!r}")
        return op

    def type_ref(self) -> str:
        if self.peek() == "[":
            self.take("[")
            inner = self.type_ref()
            self.take("]")
            out = f"[{inner}]"
        else:
            out = self.take()
        if self.peek() == "!":
            self.take("!")
            out += "!"
        return out

    def selection_set(self) -> list[Field]:
        self.take("{")
        fields = []
        while self.peek() != "}":
            name = self.take()
            f = Field(name)
            if self.peek() == "(":
                self.take("(")
                while self.peek() != ")":
                    arg = self.take()
                    self.take(":")
                    f.args[arg] = self.value()
                self.take(")")
            if self.peek() == "{":
                f.children = self.selection_set()
            fields.append(f)
        self.take("}")
        return fields

    def value(self) -> Any:
        tok = self.take()
        if tok == "$":
            return ("$", self.take())
        if tok.startswith('"'):
            return tok[1:-1].encode().decode("unicode_escape")
        if re.fullmatch(r"-?\d+", tok):
            return int(tok)
        return {"true": True, "false": False, "null": None}.get(tok, tok)


def parse(text: str) -> Operation:
    return _Parser(text).operation()


def _check(fields: list[Field], type_name: str) -> None:
    known = SCHEMA[type_name]
    for f in fields:
        if f.name not in known:
            raise GraphQLError(f"Field '{f.name}' doesn't exist on type '{type_name}'")
        child = known[f.name]
        if child is None and f.children:
            raise GraphQLError(f"Selections can't be made on scalars (field '{f.name}')")
        if child is not None:
            if not f.children:
                raise GraphQLError(f"Field must have selections ('{f.name}' of '{type_name}')")
            _check(f.children, child)


def _project(value: Any, fields: list[Field]) -> Any:
    if isinstance(value, list):
        return [_project(v, fields) for v in value]
    if value is None:
        return None
    return {
        f.name: _project(value.get(f.name), f.children) if f.children else value.get(f.name)
        for f in fields
    }


# --- the fake shop ------------------------------------------------------------------


@dataclass
class FakeShopifyGraphQL:
    token: str
    orders: list[dict[str, Any]] = field(default_factory=list)
    throttle_at: int = 3  # the request (1-based) answered THROTTLED, once
    restore_rate: float = 500.0
    maximum: float = 1000.0
    requests: int = 0
    throttled: int = 0
    rejected: int = 0
    operations: list[str] = field(default_factory=list)
    cursors: list[str | None] = field(default_factory=list)
    url: str = ""

    def app(self) -> FastAPI:
        app = FastAPI()

        @app.post("/admin/api/{version}/graphql.json")
        async def graphql(request: Request, version: str) -> JSONResponse:
            if request.headers.get("x-shopify-access-token") != self.token:
                self.rejected += 1
                return JSONResponse({"errors": "[API] Invalid API key or access token"}, 401)
            self.requests += 1
            body = await request.json()
            try:
                op = parse(body.get("query") or "")
                if op.kind != "query":
                    raise GraphQLError("only queries are served here")
                _check(op.selection, "QueryRoot")
                variables = body.get("variables") or {}
                missing = [
                    v for v, t in op.variables.items() if t.endswith("!") and v not in variables
                ]
                if missing:
                    raise GraphQLError(f"Variable ${missing[0]} of type was not provided")
            except GraphQLError as exc:
                return JSONResponse({"errors": [{"message": str(exc)}]})
            self.operations.append(op.name or "")
            (orders_field,) = op.selection
            args = {
                k: variables.get(v[1]) if isinstance(v, tuple) else v
                for k, v in orders_field.args.items()
            }
            first = int(args.get("first") or 0)
            if not 1 <= first <= 250:
                return JSONResponse({"errors": [{"message": "first must be between 1 and 250"}]})
            cost = first + 2
            if self.requests == self.throttle_at:
                self.throttled += 1
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
                        "extensions": {"cost": self._cost(cost, 0, available=10.0)},
                    }
                )
            after = args.get("after")
            self.cursors.append(after)
            try:
                start = _decode(after) + 1 if after else 0
                matching = self._matching(args.get("query"))
            except GraphQLError as exc:
                return JSONResponse({"errors": [{"message": str(exc)}]})
            page = matching[start : start + first]
            has_next = start + first < len(matching)
            data = {
                "pageInfo": {
                    "hasNextPage": has_next,
                    "hasPreviousPage": start > 0,
                    "endCursor": _encode(start + len(page) - 1) if page else None,
                },
                "nodes": page,
                "edges": [{"cursor": _encode(start + i), "node": o} for i, o in enumerate(page)],
            }
            return JSONResponse(
                {
                    "data": {"orders": _project(data, orders_field.children)},
                    "extensions": {"cost": self._cost(cost, len(page) + 2)},
                }
            )

        return app

    def _cost(self, requested: int, actual: int, available: float | None = None) -> dict[str, Any]:
        return {
            "requestedQueryCost": requested,
            "actualQueryCost": actual,
            "throttleStatus": {
                "maximumAvailable": self.maximum,
                "currentlyAvailable": self.maximum - actual if available is None else available,
                "restoreRate": self.restore_rate,
            },
        }

    def _matching(self, query: Any) -> list[dict[str, Any]]:
        orders = sorted(self.orders, key=lambda o: o["createdAt"])
        if not query:
            return orders
        m = re.fullmatch(r"created_at:>='?([^']+)'?", str(query).strip())
        if not m:
            raise GraphQLError(f"unsupported search {query!r}")
        since = m.group(1)
        return [o for o in orders if _utc(o["createdAt"]) >= _utc(since)]


def _utc(stamp: str) -> str:
    from datetime import UTC, datetime

    moment = datetime.fromisoformat(stamp.replace("Z", "+00:00"))
    return (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC).isoformat()


def _encode(index: int) -> str:
    return base64.b64encode(f"cursor:{index}".encode()).decode()


def _decode(cursor: str) -> int:
    try:
        return int(base64.b64decode(cursor).decode().removeprefix("cursor:"))
    except (ValueError, UnicodeDecodeError) as exc:
        raise GraphQLError("Invalid cursor") from exc


@contextlib.contextmanager
def running(fake: FakeShopifyGraphQL) -> Iterator[FakeShopifyGraphQL]:
    with serving(fake.app()) as url:
        fake.url = url
        yield fake
