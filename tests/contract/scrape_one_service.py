"""Start one service's app (its lifespan: consumers, relays, workers) on the stack the
environment names, and print what its /metrics serves.

Run in a process of its own by test_metrics_exported.py: in one process every service's
modules register their metrics in the same prometheus_client registry, so each service
would seem to serve every other's metrics, and a dashboard panel of one service naming
another's metric would pass unseen.

    python tests/contract/scrape_one_service.py <service>
"""

from __future__ import annotations

import asyncio
import importlib
import sys

from afterglow.devstack.pytest_plugin import serve_app
from afterglow.kit.registry import discover_services


async def scrape(name: str) -> str:
    spec = discover_services(only={name})[name]  # no other service's module imported
    module, _, function = spec.app_factory.partition(":")
    app = getattr(importlib.import_module(module), function)()
    async with serve_app(app) as client:
        await client.get("/readyz")  # its verdict is a metric (afterglow_ready)
        response = await client.get("/metrics")
        response.raise_for_status()
        return response.text


if __name__ == "__main__":
    sys.stdout.write(asyncio.run(scrape(sys.argv[1])))
