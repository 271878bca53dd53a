from __future__ import annotations

import sys
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest

sys.path.insert(0, str(Path(__file__).parent))  # ingest_support: signing helpers

from ingest_fakes import FakePlatforms, running_fake

from afterglow.devstack.pytest_plugin import serve_app
from afterglow.devstack.stack import Stack
from afterglow.events.testing import TopicTap
from afterglow.ingest.app import create_app
from afterglow.ingest.settings import IngestSettings

ADMIN_TOKEN = "admin-token-for-tests"


@pytest.fixture(scope="session")
def settings(stack: Stack) -> IngestSettings:
    return IngestSettings(
        database_url=stack.database_url,
        kafka_bootstrap_servers=stack.kafka_bootstrap_servers,
        kafka_enable_idempotence=stack.kafka_enable_idempotence,
        ingest_admin_token=ADMIN_TOKEN,
        relay_poll_interval_s=0.2,
        # The worker stays quiet in tests; they trigger passes through the admin route.
        ingest_reconcile_interval_s=3600,
        ingest_reconcile_page_size=2,
        # Reward codes: a quick worker, and a short call deadline so that a lost answer
        # (the fake shop holding it) is retried within the test.
        ingest_discount_poll_s=0.2,
        ingest_discount_timeout_s=2.0,
        ingest_discount_retry_base_s=0.2,
        ingest_discount_retry_max_s=1.0,
        log_json=False,
        log_level="WARNING",
    )


# Module scope: an app left running would keep consuming in its service's consumer
# groups while later tests (other services, the e2e processes) use the same groups.
@pytest.fixture(scope="module")
async def app_and_client(
    settings: IngestSettings,
) -> AsyncIterator[tuple[object, httpx.AsyncClient]]:
    app = create_app(settings)
    async with serve_app(app) as client:
        yield app, client


@pytest.fixture(scope="module")
def client(app_and_client: tuple[object, httpx.AsyncClient]) -> httpx.AsyncClient:
    return app_and_client[1]


@pytest.fixture(scope="module")
def runtime(app_and_client: tuple[object, httpx.AsyncClient]):  # type: ignore[no-untyped-def]
    return app_and_client[0].state.runtime  # type: ignore[attr-defined]


@pytest.fixture(scope="session")
async def tap(stack: Stack) -> AsyncIterator[TopicTap]:
    """One tap for the whole session: tests filter by their own fresh tenant."""
    async with TopicTap(
        stack.kafka_bootstrap_servers,
        "afterglow.orders",
        "afterglow.tickets",
        "afterglow.customers",
        "afterglow.tenants",
    ) as t:
        yield t


@pytest.fixture(scope="module")
def fake() -> Iterator[FakePlatforms]:
    """The platforms' order APIs (Shopify, WooCommerce, BigCommerce), on 127.0.0.1."""
    with running_fake() as f:
        yield f


@pytest.fixture
def admin_headers() -> dict[str, str]:
    return {"Authorization": f"Bearer {ADMIN_TOKEN}"}
