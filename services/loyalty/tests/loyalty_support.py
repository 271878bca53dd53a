"""One loyalty app (relay, consumers, worker) for the whole suite on the real stack,
with a ManualClock the tests move. Tests isolate themselves by tenant id."""

from __future__ import annotations

import contextlib
import uuid
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import func, select

from afterglow.devstack.stack import Stack
from afterglow.devstack.testing import ServiceHarness, running_service, service_fixture
from afterglow.events import CloudEvent
from afterglow.events.catalog import Money, OrderPlaced
from afterglow.events.testing import eventually
from afterglow.loyalty.app import create_app
from afterglow.loyalty.models import Account, EntryRow
from afterglow.loyalty.settings import LoyaltySettings

START = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


class Loyalty(ServiceHarness):
    default_scopes = ("loyalty:read", "loyalty:write")

    async def key(self, tenant: str, scopes: list[str] | None = None) -> dict[str, str]:
        return await self.headers(tenant, scopes)

    def event(self, data: Any, tenant: str, customer: str, id: str | None = None) -> CloudEvent:
        return CloudEvent.new(data, tenant_id=tenant, subject=customer, source="tests", id=id)

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


def _settings(**overrides: Any) -> LoyaltySettings:
    """Fast loops for tests; keyword arguments override."""
    defaults: dict[str, Any] = {
        "relay_poll_interval_s": 0.2,
        "consumer_retry_attempts": 2,
        "consumer_retry_base_delay_s": 0.05,
        "loyalty_worker_interval_s": 0.2,
        "log_json": False,
        "db_pool_size": 20,
    }
    return LoyaltySettings(**{**defaults, **overrides})


TOPICS = ("afterglow.loyalty", "afterglow.messages", "afterglow.discounts")


def running_loyalty(
    stack: Stack, **settings: Any
) -> contextlib.AbstractAsyncContextManager[Loyalty]:
    """A loyalty app on the stack (relay, consumers, worker) with its own settings, for a
    test that needs other settings than the module's app."""
    return running_service(
        stack, create_app, _settings(**settings), harness=Loyalty, start=START, topics=TOPICS
    )


loyalty = service_fixture(create_app, _settings, harness=Loyalty, start=START, topics=TOPICS)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"
