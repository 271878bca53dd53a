"""``afterglow``: run or migrate any installed service.

afterglow migrate <service>|all       run Alembic migrations (Kubernetes Job)
afterglow serve <service> [--port N]  run the service with uvicorn
afterglow secrets-key [--id ID]       print a new SECRETS_KEYS entry
afterglow customer-export CUSTOMER    one customer's data from every service, as JSON
          [--url NAME=URL ...] [--out FILE]   (key in AFTERGLOW_API_KEY)
afterglow dlq list [TOPIC ...] [--all]   dead letters not redriven yet (or all retained)
afterglow dlq show TOPIC OFFSET           one dead letter: headers, error and body
afterglow dlq redrive TOPIC [--offset N ...] [--tenant T] [--dry-run]
                                      put dead letters back on their topic (inbox dedupes)
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import json
import os
import sys
import time
from pathlib import Path

import httpx
import uvicorn

from afterglow.kit.app import ServiceSpec
from afterglow.kit.dlq_cli import add_dlq_commands, run_dlq_command
from afterglow.kit.export import ExportIncomplete, gather_exports
from afterglow.kit.migrations import upgrade
from afterglow.kit.registry import discover_services
from afterglow.kit.secretbox import new_key
from afterglow.kit.settings import ServiceSettings


def main(argv: list[str] | None = None) -> int:
    services = discover_services()
    parser = argparse.ArgumentParser(prog="afterglow")
    sub = parser.add_subparsers(dest="command", required=True)
    mig = sub.add_parser("migrate", help="apply a service's migrations")
    mig.add_argument("service", choices=[*services, "all"])
    serve = sub.add_parser("serve", help="run a service")
    serve.add_argument("service", choices=list(services))
    serve.add_argument("--host", default=os.environ.get("HOST", "0.0.0.0"))  # noqa: S104
    serve.add_argument("--port", type=int)
    serve.add_argument("--workers", type=int, default=1)
    keygen = sub.add_parser("secrets-key", help="print a new SECRETS_KEYS entry")
    keygen.add_argument("--id", default=time.strftime("k%Y%m%d"), help="the key's id")
    export = sub.add_parser(
        "customer-export",
        help="a customer's data from every service (data access request), as JSON",
    )
    export.add_argument("customer", help="the customer id, as the platform gives it")
    export.add_argument(
        "--url",
        action="append",
        default=[],
        metavar="NAME=URL",
        help="a service's base URL (default http://127.0.0.1:<its port>, as make dev runs it)",
    )
    export.add_argument("--out", type=Path, help="write here instead of stdout")
    add_dlq_commands(sub)
    args = parser.parse_args(argv)

    if args.command == "dlq":
        return run_dlq_command(args, ServiceSettings().kafka(client_id="afterglow-cli"))

    if args.command == "customer-export":
        return _customer_export(args, services)
    if args.command == "secrets-key":
        print(new_key(args.id))
        return 0

    if args.command == "migrate":
        url = ServiceSettings().database_url
        names = list(services) if args.service == "all" else [args.service]
        for name in names:
            upgrade(services[name].migrations, url)
            print(f"migrated {name}")
        return 0

    spec = services[args.service]
    # Build the app once here: a missing secret is then one clear line and exit status
    # 2, not a traceback from uvicorn's start-up.
    module, _, factory = spec.app_factory.partition(":")
    missing = getattr(importlib.import_module(module), factory)().state.missing_secrets
    if missing is not None:
        print(str(missing), file=sys.stderr)
        return 2
    uvicorn.run(
        spec.app_factory,
        factory=True,
        host=args.host,
        port=args.port or spec.default_port,
        workers=args.workers,
        proxy_headers=True,
        forwarded_allow_ips=os.environ.get("FORWARDED_ALLOW_IPS", "127.0.0.1"),
        log_config=None,
        timeout_graceful_shutdown=20,
    )
    return 0


def _customer_export(args: argparse.Namespace, services: dict[str, ServiceSpec]) -> int:
    # The key comes from the environment, not argv: argv lands in shell history and ps.
    key = os.environ.get("AFTERGLOW_API_KEY", "")
    if not key:
        print("set AFTERGLOW_API_KEY to a key with the customers:export scope", file=sys.stderr)
        return 2
    urls = {name: f"http://127.0.0.1:{spec.default_port}" for name, spec in services.items()}
    for item in args.url:
        name, sep, url = item.partition("=")
        if not sep or name not in urls:
            print(f"--url {item!r}: expected NAME=URL, NAME one of {sorted(urls)}", file=sys.stderr)
            return 2
        urls[name] = url

    async def gather() -> dict[str, object]:
        async with httpx.AsyncClient(timeout=30.0) as http:
            return await gather_exports(http, urls, key, args.customer)

    try:
        merged = asyncio.run(gather())
    except ExportIncomplete as exc:
        # Nothing is written: a partial export must not be sent as the whole answer.
        print(f"export incomplete: {exc}", file=sys.stderr)
        return 1
    text = json.dumps(merged, indent=2, ensure_ascii=False)
    if args.out is None:
        print(text)
    else:
        args.out.write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
