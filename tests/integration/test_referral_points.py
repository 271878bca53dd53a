"""Across two services on the real broker: a confirmed referral becomes points on the
advocate's loyalty account. Both apps run their full lifespans (consumers, relays,
workers); nothing between them is mocked. (Moved here from the referrals suite: a test
that starts the loyalty app is a cross-service test.)"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest

from afterglow.devstack.stack import Stack
from afterglow.devstack.testing import ServiceHarness, running_producer, running_service
from afterglow.events import CloudEvent
from afterglow.events.catalog import (
    CustomerInfo,
    Money,
    OrderFulfilled,
    OrderPlaced,
    ReferralInvited,
)
from afterglow.events.testing import eventually
from afterglow.kit.clock import ManualClock
from afterglow.loyalty.app import create_app as create_loyalty_app
from afterglow.loyalty.settings import LoyaltySettings
from afterglow.referrals.app import create_app as create_referrals_app
from afterglow.referrals.settings import ReferralsSettings

START = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


@dataclass
class Both:
    referrals: ServiceHarness
    loyalty: ServiceHarness

    async def publish(self, data: Any, tenant: str, subject: str) -> None:
        await self.referrals.publish(
            CloudEvent.new(
                data,
                tenant_id=tenant,
                subject=subject,
                source="tests",
                time=self.referrals.clock.now(),
            )
        )


@pytest.fixture(scope="module")
async def both(stack: Stack) -> AsyncIterator[Both]:
    """A referrals app and a loyalty app sharing one clock, so both services live in
    the same moment when the test moves time past the return window."""
    clock = ManualClock(START)
    async with (
        running_producer(stack) as producer,
        running_service(
            stack,
            create_referrals_app,
            ReferralsSettings(
                relay_poll_interval_s=0.2,
                referrals_confirm_interval_s=0.2,
                log_json=False,
                log_level="WARNING",
            ),
            clock=clock,
            producer=producer,
            topics=("afterglow.referrals",),
        ) as referrals,
        running_service(
            stack,
            create_loyalty_app,
            LoyaltySettings(
                relay_poll_interval_s=0.2,
                loyalty_worker_interval_s=0.2,
                log_json=False,
                log_level="WARNING",
            ),
            clock=clock,
            producer=producer,
        ) as loyalty,
    ):
        yield Both(referrals, loyalty)


async def test_confirmed_referral_gives_the_advocate_points(both: Both, tenant_id: str) -> None:
    referrals, loyalty = both.referrals, both.loyalty
    assert referrals.tap is not None
    advocate, referee = "advocate-1", "referee-1"
    await both.publish(
        ReferralInvited(invited_at=referrals.clock.now(), reason="promoter", score=10),
        tenant_id,
        advocate,
    )
    issued = await referrals.tap.wait_for(
        lambda e: e.tenantid == tenant_id and e.type == "afterglow.referral.code_issued.v1"
    )
    code = issued[0].data.code
    order_id = f"o-{uuid.uuid4().hex[:10]}"
    order = OrderPlaced(
        order_id=order_id,
        platform="shopify",
        placed_at=referrals.clock.now(),
        customer=CustomerInfo(email=f"{referee}@example.com"),
        total=Money(amount=8000, currency="USD"),
        referral_code=code,
        shipping_address_hash=uuid.uuid4().hex,
        customer_orders_count=1,
    )
    await both.publish(order, tenant_id, referee)
    await both.publish(
        OrderFulfilled(order_id=order_id, fulfilled_at=referrals.clock.now()), tenant_id, referee
    )
    referrals_headers = await referrals.headers(tenant_id, ["referrals:read"])

    async def confirm_due() -> Any:
        r = await referrals.client.get(
            f"/v1/advocates/{advocate}/referrals", headers=referrals_headers
        )
        rows = r.json()["referrals"] if r.status_code == 200 else []
        return next((row for row in rows if row["order_id"] == order_id), None)

    await eventually(confirm_due, lambda row: row is not None and row["confirm_due_at"])
    referrals.clock.advance(timedelta(days=31))
    await referrals.tap.wait_for(
        lambda e: e.tenantid == tenant_id and e.type == "afterglow.referral.converted.v1"
    )

    headers = await loyalty.headers(tenant_id, ["loyalty:read"])
    account = await eventually(
        lambda: loyalty.client.get(f"/v1/accounts/{advocate}", headers=headers),
        lambda r: r.status_code == 200 and r.json()["available"] > 0,
    )
    body = account.json()
    # The advocate placed no order: every point on the account is the referral's.
    assert body["lifetime_earned"] == body["available"]
    history = await loyalty.client.get(f"/v1/accounts/{advocate}/history", headers=headers)
    assert history.status_code == 200, history.text
    reasons = [e["reason"] for e in history.json()["entries"]]
    assert any(r and "referral" in r for r in reasons), reasons
