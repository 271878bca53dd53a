"""Across two services on the real broker: a confirmed referral becomes points on the
advocate's loyalty account. Both apps run their full lifespans (consumers, relays,
workers); nothing between them is mocked."""

from __future__ import annotations

from collections.abc import AsyncIterator
from datetime import timedelta

import pytest
from referrals_support import Service

from afterglow.devstack.pytest_plugin import serve_app
from afterglow.events.testing import TopicTap, eventually
from afterglow.loyalty.app import create_app as create_loyalty_app
from afterglow.loyalty.settings import LoyaltySettings


@pytest.fixture(scope="module")
async def both(service: Service) -> AsyncIterator[tuple[Service, Service]]:
    """The session's referrals app and a loyalty app sharing its clock, so both services
    live in the same moment when the test moves time past the return window."""
    loyalty = create_loyalty_app(
        LoyaltySettings(
            relay_poll_interval_s=0.2,
            loyalty_worker_interval_s=0.2,
            log_json=False,
            log_level="WARNING",
        ),
        clock=service.clock,
    )
    async with serve_app(loyalty) as client:
        yield (
            service,
            Service(app=loyalty, client=client, clock=service.clock, producer=service.producer),
        )


async def test_confirmed_referral_gives_the_advocate_points(both, tenant_id):
    referrals, loyalty = both
    advocate, referee = "advocate-1", "referee-1"
    bootstrap = referrals.runtime.settings.kafka_bootstrap_servers
    async with TopicTap(bootstrap, "afterglow.referrals") as tap:
        await referrals.publish(referrals.invited(), tenant=tenant_id, subject=advocate)
        issued = await tap.wait_for(
            lambda e: e.tenantid == tenant_id and e.type == "afterglow.referral.code_issued.v1"
        )
        code = issued[0].data.code
        order = referrals.placed(referral_code=code, amount=8000)
        await referrals.publish(order, tenant=tenant_id, subject=referee)
        await referrals.publish(
            referrals.fulfilled(order.order_id), tenant=tenant_id, subject=referee
        )
        await referrals.wait_referral(
            tenant_id, advocate, order.order_id, lambda r: r["confirm_due_at"] is not None
        )
        referrals.clock.advance(timedelta(days=31))
        await tap.wait_for(
            lambda e: e.tenantid == tenant_id and e.type == "afterglow.referral.converted.v1"
        )

    async with loyalty.runtime.sessionmaker.begin() as s:
        key = await loyalty.runtime.api_keys.create(s, tenant_id, ["loyalty:read"])
    headers = {"Authorization": f"Bearer {key}"}
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
