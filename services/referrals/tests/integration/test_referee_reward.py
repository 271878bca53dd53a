"""A tenant's own referee reward, on the real broker and PostgreSQL: what it sets through
``PUT /v1/settings`` is the discount orders-ingest is asked to create for the friend."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

import pytest

from afterglow.events.testing import TopicTap

from ..referrals_support import new_id

# The referee's reward is asked of the shop (orders-ingest), carrying its announcement.
DISCOUNTS = "afterglow.discounts"
DEFAULT_REWARD = {
    "kind": "percentage",
    "percent": 10,
    "amount": None,
    "currency": None,
    "valid_days": 30,
    "label": "10% off",
}


def is_reward_of(tenant: str):
    return lambda e: (
        e.tenantid == tenant
        and e.type == "afterglow.discount.requested.v1"
        and e.data.announce.kind == "referee_reward"
    )


async def put_settings(service, tenant: str, body: dict[str, Any]):
    return await service.client.put(
        "/v1/settings", json=body, headers=await service.headers(tenant)
    )


async def get_settings(service, tenant: str) -> dict[str, Any]:
    r = await service.client.get("/v1/settings", headers=await service.headers(tenant))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def reward_requested(service, tenant: str):
    """The discount request a new referee's order with the tenant's code causes, and the
    time the service's clock read when the order arrived."""
    code = await service.issue_code(tenant, "adv")
    async with TopicTap(service.runtime.settings.kafka_bootstrap_servers, DISCOUNTS) as tap:
        now = service.clock.now()
        order = service.placed(referral_code=code)
        await service.publish(order, tenant=tenant, subject=new_id("ref"))
        requested = await tap.wait_for(is_reward_of(tenant))
    return requested[0].data, now


class TestTheTenantsReward:
    async def test_a_percentage_and_its_validity_reach_the_discount_request(
        self, service, tenant_id
    ):
        r = await put_settings(
            service,
            tenant_id,
            {"referee_reward": {"kind": "percentage", "percent": 15, "valid_days": 45}},
        )
        assert r.status_code == 200, r.text
        assert r.json()["referee_reward"] == {
            "kind": "percentage",
            "percent": 15,
            "amount": None,
            "currency": None,
            "valid_days": 45,
            "label": "15% off",
        }
        assert r.json()["sources"]["referee_reward"] == "tenant"
        assert await get_settings(service, tenant_id) == r.json()

        discount, now = await reward_requested(service, tenant_id)
        assert (discount.value_kind, discount.percent, discount.amount) == ("percentage", 15, None)
        assert discount.title == "Referral reward: 15% off"
        assert discount.ends_at - discount.starts_at == timedelta(days=45)
        assert discount.starts_at == now
        assert discount.announce.variables["reward"] == "15% off"

    async def test_a_fixed_amount_reaches_the_discount_request_in_its_currency(
        self, service, tenant_id
    ):
        r = await put_settings(
            service,
            tenant_id,
            {"referee_reward": {"kind": "fixed_amount", "amount": 500, "currency": "EUR"}},
        )
        assert r.status_code == 200, r.text
        # Validity left out: the default's.
        assert r.json()["referee_reward"]["valid_days"] == 30
        assert r.json()["referee_reward"]["label"] == "5.00 EUR off"

        discount, _ = await reward_requested(service, tenant_id)
        assert (discount.value_kind, discount.percent) == ("fixed_amount", None)
        assert (discount.amount.amount, discount.amount.currency) == (500, "EUR")
        assert discount.title == "Referral reward: 5.00 EUR off"
        assert discount.ends_at - discount.starts_at == timedelta(days=30)

    async def test_a_tenant_that_set_none_keeps_the_default_while_another_sets_its_own(
        self, service, tenant_id
    ):
        other = f"{tenant_id}-other"
        r = await put_settings(
            service, other, {"referee_reward": {"kind": "percentage", "percent": 50}}
        )
        assert r.status_code == 200, r.text
        # Another setting of this tenant leaves its reward on the default.
        r = await put_settings(service, tenant_id, {"return_window_days": 14})
        assert r.status_code == 200, r.text
        assert r.json()["referee_reward"] == DEFAULT_REWARD
        assert r.json()["sources"]["referee_reward"] == "default"

        discount, _ = await reward_requested(service, tenant_id)
        assert (discount.value_kind, discount.percent) == ("percentage", 10)
        assert discount.title == "Referral reward: 10% off"
        assert discount.ends_at - discount.starts_at == timedelta(days=30)

    async def test_null_returns_to_the_default_reward(self, service, tenant_id):
        r = await put_settings(
            service,
            tenant_id,
            {"referee_reward": {"kind": "fixed_amount", "amount": 1000, "currency": "JPY"}},
        )
        assert r.status_code == 200, r.text
        assert r.json()["referee_reward"]["label"] == "1000 JPY off"
        r = await put_settings(service, tenant_id, {"referee_reward": None})
        assert r.status_code == 200, r.text
        assert r.json()["referee_reward"] == DEFAULT_REWARD
        assert r.json()["sources"]["referee_reward"] == "default"

    async def test_an_approved_hold_gets_the_tenants_reward(self, service, tenant_id):
        """The review path reads the tenant's reward too, not only attribution."""
        r = await put_settings(
            service,
            tenant_id,
            {"referee_reward": {"kind": "percentage", "percent": 20, "valid_days": 7}},
        )
        assert r.status_code == 200, r.text
        code = await service.issue_code(tenant_id, "adv")
        start: datetime = service.clock.now()
        async with TopicTap(service.runtime.settings.kafka_bootstrap_servers, DISCOUNTS) as tap:
            for i in range(4):  # the fourth within the velocity window is held
                order = service.placed(referral_code=code, at=start + timedelta(minutes=i))
                await service.publish(order, tenant=tenant_id, subject=f"ref-{i}")
                row = await service.wait_referral(tenant_id, "adv", order.order_id)
            assert row["state"] == "held"
            r = await service.client.post(
                f"/v1/referrals/{row['id']}/review",
                json={"decision": "approve"},
                headers=await service.headers(tenant_id),
            )
            assert r.status_code == 200, r.text
            code_of_held = r.json()["referee_reward_code"]
            requested = await tap.wait_for(
                lambda e: is_reward_of(tenant_id)(e) and e.data.code == code_of_held
            )
        discount = requested[0].data
        assert (discount.percent, discount.ends_at - discount.starts_at) == (20, timedelta(days=7))


class TestRefused:
    @pytest.mark.parametrize(
        ("reward", "field"),
        [
            ({"kind": "percentage", "percent": 0}, "referee_reward.percent"),
            ({"kind": "percentage", "percent": 101}, "referee_reward.percent"),
            ({"kind": "percentage", "percent": "15"}, "referee_reward.percent"),
            ({"kind": "percentage"}, "referee_reward.percent"),
            ({"kind": "percentage", "percent": 10, "currency": "EUR"}, "referee_reward.currency"),
            ({"kind": "fixed_amount", "amount": 500}, "referee_reward.currency"),
            ({"kind": "fixed_amount", "currency": "EUR"}, "referee_reward.amount"),
            ({"kind": "fixed_amount", "amount": 0, "currency": "EUR"}, "referee_reward.amount"),
            ({"kind": "fixed_amount", "amount": 5.5, "currency": "EUR"}, "referee_reward.amount"),
            ({"kind": "fixed_amount", "amount": 500, "currency": "ABC"}, "referee_reward.currency"),
            ({"kind": "fixed_amount", "amount": 500, "currency": "eur"}, "referee_reward.currency"),
            ({"kind": "fixed_amount", "amount": 500, "currency": "XAU"}, "referee_reward.currency"),
            ({"kind": "free_shipping"}, "referee_reward.kind"),
            ({"kind": "percentage", "percent": 10, "valid_days": 0}, "referee_reward.valid_days"),
            ({"kind": "percentage", "percent": 10, "valid_days": 366}, "referee_reward.valid_days"),
            ({"kind": "percentage", "percent": 10, "extra": 1}, "referee_reward.extra"),
        ],
    )
    async def test_a_bad_reward_is_422_naming_the_field_and_changes_nothing(
        self, service, tenant_id, reward, field
    ):
        set_before = {"kind": "percentage", "percent": 15, "valid_days": 45}
        r = await put_settings(service, tenant_id, {"referee_reward": set_before})
        assert r.status_code == 200, r.text
        before = r.json()

        r = await put_settings(
            service, tenant_id, {"return_window_days": 7, "referee_reward": reward}
        )
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "validation_error"
        assert r.json()["error"]["field"] == field
        # Nothing of the refused request was stored, not even its valid window.
        assert await get_settings(service, tenant_id) == before
