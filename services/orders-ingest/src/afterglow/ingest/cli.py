"""``afterglow-ingest``: the tenant registry from a shell (or a Kubernetes Job).

    afterglow-ingest tenants create acme --name "Acme" --shopify-domain acme.myshopify.com \
        --platform shopify --platform aftership
    afterglow-ingest tenants rotate-secret acme shopify [--secret S]
    afterglow-ingest tenants create-key acme --scope orders:write [--scope ...]
    afterglow-ingest tenants revoke-key acme <key id>

It talks to the database named by DATABASE_URL; events (api_key_issued) go to the
outbox and are published by the running service's relay.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.events import Outbox
from afterglow.ingest import registry
from afterglow.ingest.models import api_keys, tables
from afterglow.ingest.settings import IngestSettings
from afterglow.kit import secretbox
from afterglow.kit.auth import ApiKeyStore
from afterglow.kit.clock import SystemClock
from afterglow.kit.db import create_engine, create_sessionmaker
from afterglow.kit.errors import AppError


def _parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="afterglow-ingest")
    top = p.add_subparsers(dest="group", required=True)
    tenants = top.add_parser("tenants", help="the tenant registry")
    sub = tenants.add_subparsers(dest="command", required=True)
    c = sub.add_parser("create", help="register a tenant")
    c.add_argument("tenant_id")
    c.add_argument("--name", required=True)
    c.add_argument("--shopify-domain")
    c.add_argument("--woocommerce-url")
    c.add_argument("--bigcommerce-hash")
    c.add_argument("--platform", action="append", default=[], choices=registry.PLATFORMS)
    r = sub.add_parser("rotate-secret", help="rotate a platform's webhook secret")
    r.add_argument("tenant_id")
    r.add_argument("platform", choices=registry.PLATFORMS)
    r.add_argument("--secret", help="the platform's own secret (default: generate one)")
    k = sub.add_parser("create-key", help="issue an API key (printed once)")
    k.add_argument("tenant_id")
    k.add_argument("--scope", action="append", required=True)
    v = sub.add_parser("revoke-key", help="revoke an API key")
    v.add_argument("tenant_id")
    v.add_argument("key_id")
    return p


async def _run(args: argparse.Namespace, settings: IngestSettings) -> dict[str, Any]:
    secretbox.configure(settings.secrets_keys)
    engine = create_engine(settings.database_url, application_name="afterglow-ingest-cli")
    sessionmaker = create_sessionmaker(engine)
    now = SystemClock().now()
    store, outbox = ApiKeyStore(api_keys), Outbox(tables)
    actions: dict[str, Callable[[AsyncSession], Awaitable[dict[str, Any]]]] = {}

    async def create(s: AsyncSession) -> dict[str, Any]:
        await registry.create_tenant(
            s,
            tenant_id=args.tenant_id,
            name=args.name,
            shopify_shop_domain=args.shopify_domain,
            woocommerce_store_url=args.woocommerce_url,
            bigcommerce_store_hash=args.bigcommerce_hash,
            now=now,
        )
        secrets = {
            p: await registry.rotate_secret(
                s, tenant_id=args.tenant_id, platform=p, secret=None, now=now, grace_s=0
            )
            for p in args.platform
        }
        return {"tenant_id": args.tenant_id, "secrets": secrets}

    async def rotate(s: AsyncSession) -> dict[str, Any]:
        secret = await registry.rotate_secret(
            s,
            tenant_id=args.tenant_id,
            platform=args.platform,
            secret=args.secret,
            now=now,
            grace_s=settings.ingest_rotation_grace_s,
        )
        return {"platform": args.platform, "secret": secret}

    async def create_key(s: AsyncSession) -> dict[str, Any]:
        return await registry.issue_api_key(
            s, store, outbox, tenant_id=args.tenant_id, scopes=args.scope, now=now
        )

    async def revoke(s: AsyncSession) -> dict[str, Any]:
        eid = await registry.revoke_api_key(
            s, store, outbox, tenant_id=args.tenant_id, key_id=args.key_id, now=now
        )
        return {"key_id": args.key_id, "revoked": True, "event_id": eid}

    actions.update(
        {"create": create, "rotate-secret": rotate, "create-key": create_key, "revoke-key": revoke}
    )
    try:
        async with sessionmaker.begin() as session:
            return await actions[args.command](session)
    finally:
        await engine.dispose()


def main(argv: list[str] | None = None, settings: IngestSettings | None = None) -> int:
    args = _parser().parse_args(argv)
    try:
        result = asyncio.run(_run(args, settings or IngestSettings()))
    except AppError as exc:
        print(json.dumps(exc.body()), file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
