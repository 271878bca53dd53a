"""``afterglow``: run or migrate any installed service.

afterglow migrate <service>|all       run Alembic migrations (Kubernetes Job)
afterglow serve <service> [--port N]  run the service with uvicorn
afterglow secrets-key [--id ID]       print a new SECRETS_KEYS entry
"""

from __future__ import annotations

import argparse
import os
import sys
import time

import uvicorn

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
    args = parser.parse_args(argv)

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


if __name__ == "__main__":
    sys.exit(main())
