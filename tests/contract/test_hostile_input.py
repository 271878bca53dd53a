"""Every service, every route it documents: hostile and odd input gets a 4xx with the
JSON error body, never a 5xx. Each service's app runs its real lifespan on the real
stack (API role: no consumers to join), with a key holding every scope.

Ingest's webhook receivers are left out: they read their raw bodies themselves and have
their own tests (signature first, then the payload)."""

from __future__ import annotations

import importlib
import re
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from afterglow.devstack.stack import Stack
from afterglow.kit.registry import discover_services

ADMIN_TOKEN = "admin-" + uuid.uuid4().hex
NESTED = "[" * 10_000 + "]" * 10_000
# PUT /v1/journeys/{name} takes JSON or YAML and reads its body itself.
UNDOCUMENTED_JSON_BODIES = {("journeys", "PUT", "/v1/journeys/{name}")}


@dataclass
class Running:
    name: str
    client: httpx.AsyncClient
    openapi: dict[str, Any]
    api_key: str

    def headers(self, path: str) -> dict[str, str]:
        token = ADMIN_TOKEN if path.startswith("/admin") else self.api_key
        return {"Authorization": f"Bearer {token}"}

    def operations(self) -> list[tuple[str, str, dict[str, Any]]]:
        return [
            (method.upper(), path, op)
            for path, ops in self.openapi["paths"].items()
            if not path.startswith("/webhooks")
            for method, op in ops.items()
        ]


@pytest.fixture(scope="module")
async def services(stack: Stack) -> AsyncIterator[list[Running]]:
    mp = pytest.MonkeyPatch()
    mp.setenv("SERVICE_ROLE", "api")
    mp.setenv("INGEST_ADMIN_TOKEN", ADMIN_TOKEN)
    tenant = f"t-{uuid.uuid4().hex[:12]}"
    running: list[Running] = []
    stops = []
    try:
        for name, spec in discover_services().items():
            module, _, factory = spec.app_factory.partition(":")
            app = getattr(importlib.import_module(module), factory)()
            lifespan = app.router.lifespan_context(app)
            await lifespan.__aenter__()
            stops.append(lifespan)
            runtime = app.state.runtime
            async with runtime.sessionmaker.begin() as s:
                key = await runtime.api_keys.create(s, tenant, ["*"])
            # A 5xx must come back as a response here, not as a raised exception.
            transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
            client = httpx.AsyncClient(transport=transport, base_url="http://testserver")
            running.append(Running(name, client, app.openapi(), key))
        yield running
    finally:
        for r in running:
            await r.client.aclose()
        for lifespan in reversed(stops):
            await lifespan.__aexit__(None, None, None)
        mp.undo()


def fill(path: str, value: str = "x-1") -> str:
    return re.sub(r"\{[^}]+\}", value, path)


def _json_body(op: dict[str, Any]) -> bool:
    return "application/json" in op.get("requestBody", {}).get("content", {})


async def test_deeply_nested_body_is_400_on_every_service(services):
    seen = []
    for svc in services:
        for method, path, op in svc.operations():
            if not _json_body(op) and (svc.name, method, path) not in UNDOCUMENTED_JSON_BODIES:
                continue
            r = await svc.client.request(
                method,
                fill(path),
                content=NESTED,
                headers={**svc.headers(path), "content-type": "application/json"},
            )
            assert r.status_code == 400, (svc.name, method, path, r.text)
            assert r.json()["error"]["code"] == "too_deep"
            seen.append(svc.name)
    # Every service with an API has routes that take JSON (the console serves pages).
    assert set(seen) == {s.name for s in services if s.name != "console"}


async def test_nul_in_path_id_is_422_on_every_service(services):
    checked = 0
    for svc in services:
        for method, path, op in svc.operations():
            for param in op.get("parameters", []):
                if param["in"] != "path" or param["schema"].get("type") != "string":
                    continue
                values = {p["name"]: "x-1" for p in op["parameters"] if p["in"] == "path"}
                values[param["name"]] = "a%00b"
                url = re.sub(r"\{([^}]+)\}", lambda m, v=values: v[m.group(1)], path)
                r = await svc.client.request(method, url, headers=svc.headers(path))
                if param["name"] == "token":
                    # A signed link's token that does not verify: 404, saying nothing more.
                    assert r.status_code == 404, (svc.name, method, path, r.text)
                    continue
                assert r.status_code == 422, (svc.name, method, path, r.text)
                assert r.json()["error"]["field"] == param["name"], (svc.name, path, r.text)
                checked += 1
    assert checked > 20


async def test_nul_in_query_value_is_422_on_every_service(services):
    checked = 0
    for svc in services:
        for method, path, op in svc.operations():
            for param in op.get("parameters", []):
                if param["in"] != "query":
                    continue
                r = await svc.client.request(
                    method,
                    fill(path),
                    params={param["name"]: "a\x00b"},
                    headers=svc.headers(path),
                )
                assert r.status_code == 422, (svc.name, method, path, param["name"], r.text)
                checked += 1
    assert checked > 10


async def test_odd_path_ids_never_answer_5xx(services):
    for svc in services:
        for method, path, _ in svc.operations():
            if "{" not in path:
                continue
            for odd in ("x" * 5000, "%ED%A0%80", "%FF", "..%2F..", "%E2%80%AE"):
                r = await svc.client.request(method, fill(path, odd), headers=svc.headers(path))
                assert r.status_code < 500, (svc.name, method, path, odd, r.text)


async def test_nosniff_on_every_response(services):
    for svc in services:
        for r in (
            await svc.client.get("/healthz"),
            await svc.client.get("/readyz"),
            await svc.client.get("/no/such/route"),
            await svc.client.get("/v1/customers/a%00b/export", headers=svc.headers("/v1")),
        ):
            assert r.status_code in (200, 404, 422), (svc.name, r.status_code)
            assert r.headers["x-content-type-options"] == "nosniff", (svc.name, r.url)
