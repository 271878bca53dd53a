from __future__ import annotations

from collections.abc import AsyncIterator, Iterator

import httpx
import pytest

from afterglow.devstack.stack import Stack
from afterglow.devstack.testing import running_service
from afterglow.events.testing import TopicTap
from afterglow.ingest.app import create_app
from afterglow.ingest.settings import IngestSettings
from afterglow.kit.clock import SystemClock

from .ingest_fakes import FakePlatforms, running_fake

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
    stack: Stack, settings: IngestSettings
) -> AsyncIterator[tuple[object, httpx.AsyncClient]]:
    # The system clock: ingest's tests wait out real deadlines (fetch retries, leases);
    # a module that paces them by hand overrides this fixture with a ManualClock.
    async with running_service(stack, create_app, settings, clock=SystemClock()) as ingest:
        yield ingest.app, ingest.client


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
