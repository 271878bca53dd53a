"""Support for the referrals tests, shared by conftest and the test modules: the real
app on the real stack, a producer that publishes catalog events to the real broker, and
factories with random ids."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from datetime import UTC, datetime
from typing import Any

import pytest
from aiokafka import AIOKafkaProducer
from sqlalchemy import or_, select

from afterglow.devstack.stack import Stack
from afterglow.devstack.testing import ServiceHarness, running_producer, running_service
from afterglow.events import CloudEvent, KafkaRecord, to_record
from afterglow.events.catalog import (
    CustomerInfo,
    Money,
    OrderCancelled,
    OrderDelivered,
    OrderFulfilled,
    OrderPlaced,
    OrderRefunded,
    ReferralInvited,
)
from afterglow.events.testing import eventually
from afterglow.referrals.app import create_app
from afterglow.referrals.models import Code, Order, Referral
from afterglow.referrals.settings import ReferralsSettings

START = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


def fast_settings(**overrides: Any) -> ReferralsSettings:
    """Short polls so tests wait on data, not on timers; a small advocate cap so the cap
    is reachable with a handful of orders (the default is 10)."""
    values: dict[str, Any] = {
        "relay_poll_interval_s": 0.2,
        "referrals_confirm_interval_s": 0.2,
        "referrals_advocate_cap": 4,
        "log_json": False,
        "log_level": "WARNING",
    }
    values.update(overrides)
    return ReferralsSettings(**values)


@pytest.fixture(scope="session")
async def producer(stack: Stack) -> AsyncIterator[AIOKafkaProducer]:
    async with running_producer(stack) as p:
        yield p


class Service(ServiceHarness):
    default_scopes = ("referrals:read", "referrals:write")

    async def send_record(self, record: KafkaRecord) -> None:
        await self.producer.send_and_wait(
            record.topic, value=record.value, key=record.key, headers=record.headers
        )

    async def publish(  # type: ignore[override]
        self, data: Any, *, tenant: str, subject: str
    ) -> CloudEvent[Any]:
        """Publish catalog data as an event of ``tenant`` about ``subject``."""
        event = CloudEvent.new(
            data, tenant_id=tenant, subject=subject, source="tests", time=self.clock.now()
        )
        await self.send_record(to_record(event))
        return event

    # --- factories -----------------------------------------------------------------

    def invited(self) -> ReferralInvited:
        return ReferralInvited(invited_at=self.clock.now(), reason="promoter", score=10)

    def placed(
        self,
        *,
        order_id: str | None = None,
        referral_code: str | None = None,
        discount_codes: list[str] | None = None,
        email: str | None = None,
        phone_hash: str | None = None,
        address_hash: str | None = None,
        orders_count: int | None = 1,
        at: datetime | None = None,
        amount: int = 5000,
        currency: str = "USD",
    ) -> OrderPlaced:
        return OrderPlaced(
            order_id=order_id or new_id("o"),
            platform="shopify",
            placed_at=at or self.clock.now(),
            customer=CustomerInfo(
                email=email or f"{new_id('c')}@example.com", phone_hash=phone_hash
            ),
            total=Money(amount=amount, currency=currency),
            discount_codes=discount_codes or [],
            referral_code=referral_code,
            shipping_address_hash=address_hash or uuid.uuid4().hex,
            customer_orders_count=orders_count,
        )

    def fulfilled(self, order_id: str, at: datetime | None = None) -> OrderFulfilled:
        return OrderFulfilled(order_id=order_id, fulfilled_at=at or self.clock.now())

    def delivered(self, order_id: str, at: datetime | None = None) -> OrderDelivered:
        return OrderDelivered(
            order_id=order_id, delivered_at=at or self.clock.now(), reported_by="shopify"
        )

    def refunded(self, order_id: str, amount: int = 5000, full: bool = True) -> OrderRefunded:
        return OrderRefunded(
            order_id=order_id,
            refund_id=new_id("rf"),
            refunded_at=self.clock.now(),
            amount=Money(amount=amount, currency="USD"),
            full=full,
        )

    def cancelled(self, order_id: str) -> OrderCancelled:
        return OrderCancelled(order_id=order_id, cancelled_at=self.clock.now(), reason="customer")

    # --- probes --------------------------------------------------------------------

    async def issue_code(self, tenant: str, advocate: str) -> str:
        r = await self.client.post(
            f"/v1/advocates/{advocate}/code", headers=await self.headers(tenant)
        )
        assert r.status_code in (200, 201), r.text
        code: str = r.json()["code"]
        return code

    async def referrals(self, tenant: str, advocate: str) -> list[dict[str, Any]]:
        r = await self.client.get(
            f"/v1/advocates/{advocate}/referrals", headers=await self.headers(tenant)
        )
        if r.status_code == 404:
            return []
        assert r.status_code == 200, r.text
        rows: list[dict[str, Any]] = r.json()["referrals"]
        return rows

    async def wait_referral(
        self, tenant: str, advocate: str, order_id: str, check: Any = None
    ) -> dict[str, Any]:
        def match(rows: list[dict[str, Any]]) -> bool:
            row = next((r for r in rows if r["order_id"] == order_id), None)
            return row is not None and (check is None or check(row))

        rows = await eventually(lambda: self.referrals(tenant, advocate), match)
        return next(r for r in rows if r["order_id"] == order_id)

    async def order_row(self, tenant: str, order_id: str) -> Order | None:
        async with self.runtime.sessionmaker() as s:
            row: Order | None = await s.get(Order, (tenant, order_id))
            return row

    async def wait_order_seen(self, tenant: str, order_id: str, check: Any = None) -> Order:
        """The order's row once it exists (and ``check`` holds on it)."""
        row = await eventually(
            lambda: self.order_row(tenant, order_id),
            lambda o: o is not None and (check is None or check(o)),
        )
        assert row is not None
        return row

    async def rows_naming(self, tenant: str, customer: str) -> list[str]:
        """Every orders/codes/referrals row of the tenant that still holds the id."""
        async with self.runtime.sessionmaker() as s:
            found = [
                f"orders:{o}"
                for o in await s.scalars(
                    select(Order.order_id).where(
                        Order.tenant_id == tenant, Order.customer_id == customer
                    )
                )
            ]
            found += [
                f"codes:{c}"
                for c in await s.scalars(
                    select(Code.code).where(
                        Code.tenant_id == tenant, Code.advocate_customer_id == customer
                    )
                )
            ]
            found += [
                f"referrals:{r}"
                for r in await s.scalars(
                    select(Referral.order_id).where(
                        Referral.tenant_id == tenant,
                        or_(
                            Referral.advocate_customer_id == customer,
                            Referral.referee_customer_id == customer,
                        ),
                    )
                )
            ]
        return found


@pytest.fixture(scope="module")
async def service(stack: Stack, producer: AIOKafkaProducer) -> AsyncIterator[Service]:
    # One app per module: starting one costs seconds of consumer-group joins. Not per
    # session: a session-wide app would keep consuming in the "referrals.events" group
    # while later suites (e2e) run their own referrals with other settings and clocks.
    # Tests isolate by tenant; the clock only moves forward, so each test reads "now".
    async with running_service(
        stack, create_app, fast_settings(), harness=Service, start=START, producer=producer
    ) as svc:
        yield svc
