"""What create_service_app gives every route of every service: JSON bodies parsed within
size and depth bounds, nosniff on every response, a refusal to start without secrets or
with a router that would parse unbounded. Small apps, built by the real factory; their
routes touch no database, so the lifespan is not needed."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from fastapi import APIRouter, FastAPI
from pydantic import BaseModel
from sqlalchemy import MetaData

from afterglow.events import event_tables
from afterglow.kit.app import ServiceSpec, create_service_app
from afterglow.kit.auth import api_keys_table
from afterglow.kit.routing import MAX_JSON_BODY_BYTES, service_router
from afterglow.kit.settings import MissingSecrets, ServiceSettings
from afterglow.kit.types import BigInt, Id

SPEC = ServiceSpec("kit-test", "kit_test", "x:y", "x:y", 0)
_metadata = MetaData(schema="kit_test")
TABLES = event_tables(_metadata)
API_KEYS = api_keys_table(_metadata)
SECRETS_KEYS = "k:" + "A" * 43 + "="


class Item(BaseModel):
    name: Id
    count: BigInt = 0
    extra: dict[str, Any] = {}


def _router() -> APIRouter:
    router = service_router(prefix="/v1")

    @router.put("/items/{item_id}")
    async def put_item(item_id: Id, body: Item) -> dict[str, Any]:
        return {"id": item_id, "name": body.name}

    @router.get("/items")
    async def list_items(q: Id | None = None) -> dict[str, Any]:
        return {"q": q}

    return router


def _app(
    settings: ServiceSettings | None = None, routers: list[APIRouter] | None = None
) -> FastAPI:
    return create_service_app(
        SPEC,
        settings or ServiceSettings(secrets_keys=SECRETS_KEYS, log_json=False),
        tables=TABLES,
        api_keys_table=API_KEYS,
        title="kit test",
        description="",
        routers=routers if routers is not None else [_router()],
    )


@pytest.fixture
async def client() -> AsyncIterator[httpx.AsyncClient]:
    transport = httpx.ASGITransport(app=_app())
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


JSON = {"content-type": "application/json"}


class TestJsonBounds:
    async def test_deeply_nested_body_is_400(self, client):
        for body in ("[" * 10_000 + "]" * 10_000, '{"a":' * 10_000 + "1" + "}" * 10_000):
            r = await client.put("/v1/items/x", content=body, headers=JSON)
            assert r.status_code == 400, r.text
            assert r.json()["error"]["code"] == "too_deep"
        nested_field = {"name": "n", "extra": {"a": [[[[[[[[[[[]]]]]]]]]]]}}
        r = await client.put("/v1/items/x", json=nested_field)
        assert r.status_code == 200  # a few levels are fine

    async def test_body_over_the_limit_is_413(self, client):
        body = b'{"name": "' + b"x" * MAX_JSON_BODY_BYTES + b'"}'
        r = await client.put("/v1/items/x", content=body, headers=JSON)
        assert r.status_code == 413
        assert r.json()["error"]["code"] == "payload_too_large"

    async def test_malformed_json_is_400_saying_so(self, client):
        for body in (b"{not json", b"\xff\xfe", b'{"name": ' + b"9" * 5000 + b"}"):
            r = await client.put("/v1/items/x", content=body, headers=JSON)
            assert r.status_code == 400, r.text
            assert r.json()["error"]["code"] == "malformed_json"

    async def test_valid_body_and_odd_values(self, client):
        r = await client.put("/v1/items/a-1", json={"name": "n"})
        assert r.status_code == 200 and r.json() == {"id": "a-1", "name": "n"}
        for path, body, field in (
            ("/v1/items/a%00b", {"name": "n"}, "item_id"),
            ("/v1/items/x", {"name": "n\x00"}, "name"),
            ("/v1/items/x", {"name": "n", "count": 2**63}, "count"),
        ):
            r = await client.put(path, json=body)
            assert r.status_code == 422, r.text
            assert r.json()["error"]["field"] == field
        r = await client.get("/v1/items", params={"q": "a\x07"})
        assert r.status_code == 422 and r.json()["error"]["field"] == "q"


class TestHeaders:
    async def test_nosniff_on_every_response(self, client):
        responses = [
            await client.get("/healthz"),
            await client.put("/v1/items/x", json={"name": "n"}),
            await client.put("/v1/items/x", json={}),  # 422
            await client.put("/v1/items/x", content=b"[" * 100, headers=JSON),  # 400
            await client.get("/nowhere"),  # 404
            await client.delete("/v1/items"),  # 405
            await client.get("/openapi.json"),
        ]
        assert [r.status_code for r in responses] == [200, 200, 422, 400, 404, 405, 200]
        for r in responses:
            assert r.headers["x-content-type-options"] == "nosniff"


class TestStartUp:
    async def test_service_refuses_to_start_without_secrets_keys(self, monkeypatch):
        monkeypatch.delenv("SECRETS_KEYS", raising=False)
        app = _app(ServiceSettings())
        assert isinstance(app.state.missing_secrets, MissingSecrets)
        with pytest.raises(MissingSecrets, match=r"kit-test refuses to start: SECRETS_KEYS is not"):
            async with app.router.lifespan_context(app):
                pass

    def test_a_router_that_would_parse_unbounded_is_refused(self):
        plain = APIRouter()

        @plain.post("/raw")
        async def raw(body: Item) -> None:
            return None

        with pytest.raises(TypeError, match=r"service_router.*POST /raw"):
            _app(routers=[plain])
