"""One orchestrator app for the whole suite on the real stack, with a ManualClock the
tests move (days pass in milliseconds). Tests isolate themselves by tenant id."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from afterglow.devstack.testing import ServiceHarness, service_fixture
from afterglow.events import CloudEvent
from afterglow.events import catalog as c
from afterglow.events.testing import eventually
from afterglow.journeys.app import create_app
from afterglow.journeys.settings import Settings

START = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
OUT_TOPICS = (
    "afterglow.messages",
    "afterglow.reviews",
    "afterglow.surveys",
    "afterglow.referrals",
    "afterglow.support",
    "afterglow.journeys",
)


def make_settings(**over: Any) -> Settings:
    return Settings(
        relay_poll_interval_s=0.1,
        consumer_retry_attempts=3,
        consumer_retry_base_delay_s=0.05,
        journeys_timer_poll_interval_s=0.05,
        log_json=False,
        **over,
    )


class Orchestrator(ServiceHarness):
    default_scopes = ("journeys:read", "journeys:write")

    async def publish(  # type: ignore[override]
        self, tenant: str, customer: str, data: Any, id: str | None = None
    ) -> str:
        """Publish catalog data as an event of ``tenant`` about ``customer``; its id."""
        event = CloudEvent.new(
            data, tenant_id=tenant, subject=customer, source="tests", id=id, time=self.clock.now()
        )
        await super().publish(event)
        return event.id

    async def journey(self, tenant: str, customer: str, headers: dict[str, str]) -> dict[str, Any]:
        r = await self.client.get(f"/v1/customers/{customer}/journey", headers=headers)
        return r.json() if r.status_code == 200 else {}

    async def until(
        self,
        tenant: str,
        customer: str,
        headers: dict[str, str],
        check: Callable[[dict[str, Any]], bool],
        timeout: float = 20,  # noqa: ASYNC109 - a deadline between polls
    ) -> dict[str, Any]:
        async def probe() -> dict[str, Any]:
            return await self.journey(tenant, customer, headers)

        return await eventually(probe, check, timeout=timeout)

    async def out(
        self, tenant: str, customer: str, pred: Callable[[CloudEvent[Any]], bool], count: int = 1
    ) -> list[CloudEvent[Any]]:
        assert self.tap is not None
        return await self.tap.wait_for(
            lambda e: e.tenantid == tenant and e.subject == customer and pred(e), count=count
        )

    def seen(self, tenant: str, customer: str) -> list[CloudEvent[Any]]:
        from afterglow.events import from_record

        assert self.tap is not None
        out = []
        for r in self.tap.records:
            try:
                e = from_record(r.key, r.value, r.headers)
            except ValueError:
                continue
            if e.tenantid == tenant and e.subject == customer:
                out.append(e)
        return out


# Package scope: one app for this service's tests, gone before other packages run, so
# its consumers (and its ManualClock timer loop) never join the groups that later tests'
# service processes use.
orch = service_fixture(
    create_app,
    make_settings,
    harness=Orchestrator,
    scope="package",
    start=START,
    topics=OUT_TOPICS,
    wait_ready=True,
)


def order_placed(order_id: str, at: datetime, amount: int = 5000, **kw: Any) -> c.OrderPlaced:
    return c.OrderPlaced(
        order_id=order_id,
        platform="api",
        placed_at=at,
        customer=c.CustomerInfo(email="jo@example.com", timezone="UTC"),
        total=c.Money(amount=amount, currency="USD"),
        **kw,
    )


def new_customer() -> str:
    return f"cust-{uuid.uuid4().hex[:8]}"


DAY = timedelta(days=1)
