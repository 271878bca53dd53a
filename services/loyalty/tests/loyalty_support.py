"""One loyalty app (relay, consumers, worker) for the whole suite on the real stack,
with a ManualClock the tests move. Tests isolate themselves by tenant id."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from afterglow.devstack.pytest_plugin import serve_app
from afterglow.devstack.stack import Stack
from afterglow.events import CloudEvent, KafkaConfig, build_producer, to_record
from afterglow.events.catalog import Money, OrderPlaced
from afterglow.events.testing import TopicTap, eventually
from afterglow.kit.app import Runtime
from afterglow.kit.clock import ManualClock
from afterglow.loyalty.app import create_app
from afterglow.loyalty.models import Account, EntryRow
from afterglow.loyalty.settings import LoyaltySettings

START = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


@dataclass
class Loyalty:
    client: httpx.AsyncClient
    runtime: Runtime
    clock: ManualClock
    producer: Any
    tap: TopicTap

    async def key(self, tenant: str, scopes: list[str] | None = None) -> dict[str, str]:
        async with self.runtime.sessionmaker.begin() as s:
            key = await self.runtime.api_keys.create(
                s, tenant, scopes or ["loyalty:read", "loyalty:write"]
            )
        return {"Authorization": f"Bearer {key}"}

    def event(self, data: Any, tenant: str, customer: str, id: str | None = None) -> CloudEvent:
        return CloudEvent.new(data, tenant_id=tenant, subject=customer, source="tests", id=id)

    async def publish(self, event: CloudEvent[Any]) -> None:
        rec = to_record(event)
        await self.producer.send_and_wait(rec.topic, rec.value, key=rec.key, headers=rec.headers)

    def order(self, order_id: str, total: int, **kw: Any) -> OrderPlaced:
        return OrderPlaced(
            order_id=order_id,
            platform="api",
            placed_at=self.clock.now(),
            customer={},
            total=Money(amount=total, currency="USD"),
            **kw,
        )

    async def account(self, tenant: str, customer: str) -> dict[str, Any] | None:
        r = await self.client.get(f"/v1/accounts/{customer}", headers=await self.key(tenant))
        return r.json() if r.status_code == 200 else None

    async def wait_account(self, tenant: str, customer: str, check: Any) -> dict[str, Any]:
        headers = await self.key(tenant)

        async def probe() -> dict[str, Any] | None:
            r = await self.client.get(f"/v1/accounts/{customer}", headers=headers)
            return r.json() if r.status_code == 200 else None

        return await eventually(probe, lambda a: a is not None and check(a), timeout=120)

    async def consistent(self, tenant: str, customer: str) -> tuple[int, int]:
        """Cached balances equal the sums of the entries; returns (available, pending)."""
        async with self.runtime.sessionmaker() as s:
            acc = await s.get(Account, (tenant, customer))
            sums = (
                await s.execute(
                    select(
                        func.coalesce(func.sum(EntryRow.available_delta), 0),
                        func.coalesce(func.sum(EntryRow.pending_delta), 0),
                    ).where(EntryRow.tenant_id == tenant, EntryRow.customer_id == customer)
                )
            ).one()
        assert acc is not None
        assert (acc.available, acc.pending) == (int(sums[0]), int(sums[1]))
        return acc.available, acc.pending


@contextlib.asynccontextmanager
async def running_loyalty(stack: Stack, **settings: Any) -> AsyncIterator[Loyalty]:
    """A loyalty app on the stack (relay, consumers, worker) with fast loops; keyword
    arguments override its settings."""
    clock = ManualClock(START)
    defaults: dict[str, Any] = {
        "relay_poll_interval_s": 0.2,
        "consumer_retry_attempts": 2,
        "consumer_retry_base_delay_s": 0.05,
        "loyalty_worker_interval_s": 0.2,
        "log_json": False,
        "db_pool_size": 20,
    }
    app = create_app(LoyaltySettings(**{**defaults, **settings}), clock)
    producer = build_producer(
        KafkaConfig(
            stack.kafka_bootstrap_servers, enable_idempotence=stack.kafka_enable_idempotence
        )
    )
    await producer.start()
    try:
        async with (
            TopicTap(
                stack.kafka_bootstrap_servers,
                "afterglow.loyalty",
                "afterglow.messages",
                "afterglow.discounts",
            ) as tap,
            serve_app(app) as client,
        ):
            yield Loyalty(client, app.state.runtime, clock, producer, tap)
    finally:
        await producer.stop()


# Module scope: an app left running would keep consuming in its service's consumer
# groups while later tests (other services, the e2e processes) use the same groups.
@pytest.fixture(scope="module")
async def loyalty(stack: Stack) -> AsyncIterator[Loyalty]:
    async with running_loyalty(stack) as app:
        yield app


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"
