"""The OpenAPI document describes every route with examples; the admin CLI works on
the real database and announces keys through the outbox."""

from __future__ import annotations

import asyncio
import json

from sqlalchemy import select

from afterglow.ingest import cli
from afterglow.ingest.models import Tenant, WebhookSecret


class TestOpenApi:
    async def test_every_route_has_an_example(self, client):
        doc = (await client.get("/openapi.json")).json()
        text_of = json.dumps
        missing = []
        for path, methods in doc["paths"].items():
            for method, op in methods.items():
                if path in ("/healthz", "/readyz"):
                    continue
                blob = text_of(op)
                schemas = [
                    doc["components"]["schemas"].get(ref.split("/")[-1], {}) for ref in _refs(op)
                ]
                if (
                    "example" not in blob
                    and not any("examples" in text_of(s) for s in schemas)
                    and "examples" not in blob
                ):
                    missing.append(f"{method.upper()} {path}")
        assert missing == []
        assert (
            "/webhooks/shopify" in doc["paths"]
            and "/v1/deliveries/{delivery_id}/replay" in doc["paths"]
        )


def _refs(node):  # type: ignore[no-untyped-def]
    if isinstance(node, dict):
        for k, v in node.items():
            if k == "$ref":
                yield v
            else:
                yield from _refs(v)
    elif isinstance(node, list):
        for v in node:
            yield from _refs(v)


class TestCli:
    async def test_create_rotate_and_create_key(self, runtime, tenant_id, capsys, monkeypatch):
        def run(*argv: str) -> dict:
            assert cli.main(list(argv)) == 0
            return json.loads(capsys.readouterr().out)

        created = await asyncio.to_thread(
            run,
            "tenants",
            "create",
            tenant_id,
            "--name",
            "CLI shop",
            "--shopify-domain",
            f"{tenant_id}.myshopify.com",
            "--platform",
            "shopify",
        )
        assert set(created["secrets"]) == {"shopify"}
        rotated = await asyncio.to_thread(
            run, "tenants", "rotate-secret", tenant_id, "shopify", "--secret", "rotated-secret-1"
        )
        assert rotated["secret"] == "rotated-secret-1"
        key = await asyncio.to_thread(
            run, "tenants", "create-key", tenant_id, "--scope", "orders:write"
        )
        assert key["key"].startswith("agk_")
        async with runtime.sessionmaker() as s:
            assert (
                await s.get(Tenant, tenant_id)
            ).shopify_shop_domain == f"{tenant_id}.myshopify.com"
            secrets = (
                (await s.execute(select(WebhookSecret).where(WebhookSecret.tenant_id == tenant_id)))
                .scalars()
                .all()
            )
            assert len(secrets) == 2  # the old one in its grace period, the new one
            t = runtime.tables.outbox
            row = (
                await s.execute(
                    select(t.c.event_type, t.c.key).where(t.c.event_id == key["event_id"])
                )
            ).one()
            assert row.event_type == "afterglow.tenant.api_key_issued.v1"
            assert row.key == f"{tenant_id}:{key['key_id']}"
        again = await asyncio.to_thread(cli.main, ["tenants", "create", tenant_id, "--name", "x"])
        assert again == 1
