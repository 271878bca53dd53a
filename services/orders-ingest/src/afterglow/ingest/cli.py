"""``afterglow-ingest``: the tenant registry from a shell (or a Kubernetes Job).

    afterglow-ingest tenants create acme --name "Acme" --shopify-domain acme.myshopify.com \
        --platform shopify --platform aftership
    afterglow-ingest tenants rotate-secret acme shopify [--secret S]
    afterglow-ingest tenants create-key acme --scope orders:write [--scope ...]
    afterglow-ingest tenants revoke-key acme <key id>
    afterglow-ingest import-history acme shopify --since 2024-01-01 [--earn-points]

It talks to the database named by DATABASE_URL; events (api_key_issued, the imported
orders' events) go to the outbox and are published by the running service's relay.
``import-history`` reads the shop's past orders with the stored platform connection
(history.py): they fill the order book and the metrics, and start no journey and send
no message.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

import httpx
from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.events import Outbox
from afterglow.ingest import registry
from afterglow.ingest.models import api_keys, tables
from afterglow.ingest.settings import IngestSettings
from afterglow.kit import secretbox
from afterglow.kit.app import Runtime
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
    h = top.add_parser(
        "import-history", help="import the shop's past orders (no journey, no message)"
    )
    h.add_argument("tenant_id")
    h.add_argument("platform", choices=("shopify", "woocommerce", "bigcommerce"))
    h.add_argument(
        "--since", required=True, type=_since, help="ISO date or time (UTC when no offset)"
    )
    h.add_argument(
        "--earn-points",
        action="store_true",
        help="let loyalty credit the imported orders (no first-order bonus)",
    )
    return p


def _since(value: str) -> datetime:
    try:
        moment = datetime.fromisoformat(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(f"{value!r} is not an ISO 8601 date") from exc
    return moment if moment.tzinfo else moment.replace(tzinfo=UTC)


async def _import_history(args: argparse.Namespace, settings: IngestSettings) -> dict[str, Any]:
    """The admin route's import, from a shell: the same runtime pieces, built here."""
    from afterglow.ingest.app import SPEC
    from afterglow.ingest.history import import_history

    secretbox.configure(settings.secrets_keys)
    engine = create_engine(settings.database_url, application_name="afterglow-ingest-cli")
    # The service's own client settings (app.py): 10 s a request, 3 s to connect.
    async with httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=3.0)) as http:
        runtime = Runtime(
            spec=SPEC,
            settings=settings,
            engine=engine,
            sessionmaker=create_sessionmaker(engine),
            tables=tables,
            outbox=Outbox(tables),
            api_keys=ApiKeyStore(api_keys),
            clock=SystemClock(),
            http=http,
        )
        try:
            result = await import_history(
                runtime, args.tenant_id, args.platform, args.since, earn_points=args.earn_points
            )
        finally:
            await engine.dispose()
    return result.body()


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
    run = _import_history if args.group == "import-history" else _run
    try:
        result = asyncio.run(run(args, settings or IngestSettings()))
    except AppError as exc:
        print(json.dumps(exc.body()), file=sys.stderr)
        return 1
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
