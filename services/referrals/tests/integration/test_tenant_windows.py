"""Per-tenant return and attribution windows on the real broker and PostgreSQL: one
service, several tenants, each confirming and attributing by its own settings.

The module's clock is not advanced in these tests unless said: a conversion confirmed
here was confirmed by its tenant's window, not by time passing."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from afterglow.events.catalog import OrderPlaced
from afterglow.events.testing import TopicTap

from ..referrals_support import new_id

REFERRALS = "afterglow.referrals"
CONVERTED = "afterglow.referral.converted.v1"
REJECTED = "afterglow.referral.rejected.v1"


def of_tenant(tenant: str, type_: str):
    return lambda e: e.tenantid == tenant and e.type == type_


async def set_settings(service, tenant: str, **values: Any) -> dict[str, Any]:
    r = await service.client.put("/v1/settings", json=values, headers=await service.headers(tenant))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def referred_order(service, tenant: str, code: str, **kw: Any) -> OrderPlaced:
    """An order of a new referee carrying the code, once its referral is recorded (the
    advocate is "adv")."""
    order = service.placed(referral_code=code, **kw)
    await service.publish(order, tenant=tenant, subject=new_id("ref"))
    await service.wait_referral(tenant, "adv", order.order_id)
    return order


async def ship(service, tenant: str, order: OrderPlaced, at: datetime) -> dict[str, Any]:
    """Publish the fulfilment; the referral once its due time is computed."""
    await service.publish(service.fulfilled(order.order_id, at=at), tenant=tenant, subject="ref")
    return await service.wait_referral(
        tenant, "adv", order.order_id, lambda r: r["confirm_due_at"] is not None
    )


def due(row: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(row["confirm_due_at"])


class TestReturnWindow:
    async def test_a_zero_day_window_confirms_on_fulfilment_while_another_tenant_waits(
        self, service, tenant_id
    ):
        final_sale, ordinary = tenant_id, f"{tenant_id}-other"
        settings = await set_settings(service, final_sale, return_window_days=0)
        assert settings["sources"]["return_window_days"] == "tenant"
        default_days = service.runtime.settings.referrals_return_window_days
        assert default_days > 0
        codes = {t: await service.issue_code(t, "adv") for t in (final_sale, ordinary)}
        shipped_at = service.clock.now()
        async with TopicTap(service.runtime.settings.kafka_bootstrap_servers, REFERRALS) as tap:
            orders = {t: await referred_order(service, t, code) for t, code in codes.items()}
            for tenant, order in orders.items():
                await ship(service, tenant, order, shipped_at)
            converted = await tap.wait_for(of_tenant(final_sale, CONVERTED))
            # Several worker passes (0.2 s apart) go by before the other tenant is judged.
            events = await tap.events(settle=2.0)
        assert service.clock.now() == shipped_at  # no time passed on the service's clock
        assert converted[0].data.order_id == orders[final_sale].order_id
        confirmed = await service.wait_referral(
            final_sale, "adv", orders[final_sale].order_id, lambda r: r["state"] == "confirmed"
        )
        assert due(confirmed) == shipped_at
        waiting = await service.wait_referral(ordinary, "adv", orders[ordinary].order_id)
        assert waiting["state"] == "pending"
        assert due(waiting) == shipped_at + timedelta(days=default_days)
        assert not [e for e in events if of_tenant(ordinary, CONVERTED)(e)]

    async def test_an_order_shipped_before_its_attribution_gets_the_tenant_window(
        self, service, tenant_id
    ):
        await set_settings(service, tenant_id, return_window_days=14)
        code = await service.issue_code(tenant_id, "adv")
        order = service.placed()  # arrived without the code
        await service.publish(order, tenant=tenant_id, subject="ref")
        shipped_at = service.clock.now()
        await service.publish(
            service.fulfilled(order.order_id, at=shipped_at), tenant=tenant_id, subject="ref"
        )
        await service.wait_order_seen(tenant_id, order.order_id, lambda o: o.fulfilled_at)
        r = await service.client.post(
            "/v1/attributions",
            json={"order_id": order.order_id, "code": code},
            headers=await service.headers(tenant_id),
        )
        assert r.status_code == 201, r.text
        assert r.json()["state"] == "pending"
        assert due(r.json()) == shipped_at + timedelta(days=14)

    async def test_a_changed_window_applies_to_orders_shipped_afterwards(self, service, tenant_id):
        """A conversion whose order shipped keeps its due time (the customer bought under
        that return policy); one whose order ships after the change gets the new one."""
        default_days = service.runtime.settings.referrals_return_window_days
        code = await service.issue_code(tenant_id, "adv")
        shipped_at = service.clock.now()
        async with TopicTap(service.runtime.settings.kafka_bootstrap_servers, REFERRALS) as tap:
            shipped_before = await referred_order(service, tenant_id, code)
            shipped_after = await referred_order(service, tenant_id, code)
            before = await ship(service, tenant_id, shipped_before, shipped_at)
            assert due(before) == shipped_at + timedelta(days=default_days)

            await set_settings(service, tenant_id, return_window_days=0)
            after = await ship(service, tenant_id, shipped_after, shipped_at)
            assert due(after) == shipped_at
            converted = await tap.wait_for(of_tenant(tenant_id, CONVERTED))
            events = await tap.events(settle=2.0)
        assert [e.data.order_id for e in events if of_tenant(tenant_id, CONVERTED)(e)] == [
            shipped_after.order_id
        ]
        assert converted[0].data.order_id == shipped_after.order_id
        row = await service.wait_referral(tenant_id, "adv", shipped_before.order_id)
        assert row["state"] == "pending"
        assert due(row) == shipped_at + timedelta(days=default_days)


class TestAttributionWindow:
    async def test_an_attribution_outside_the_tenant_window_is_rejected_with_its_reason(
        self, service, tenant_id
    ):
        short, ordinary = tenant_id, f"{tenant_id}-other"
        await set_settings(service, short, attribution_window_days=7)
        invited_at = service.clock.now()
        results = {}
        async with TopicTap(service.runtime.settings.kafka_bootstrap_servers, REFERRALS) as tap:
            for tenant in (short, ordinary):
                code = await service.issue_code(tenant, "adv")
                order = service.placed(at=invited_at + timedelta(days=10))
                await service.publish(order, tenant=tenant, subject="ref")
                await service.wait_order_seen(tenant, order.order_id)
                headers = await service.headers(tenant)
                r = await service.client.post(
                    "/v1/attributions",
                    json={"order_id": order.order_id, "code": code},
                    headers=headers,
                )
                assert r.status_code == 201, r.text
                lookup = await service.client.get(f"/v1/codes/{code}", headers=headers)
                results[tenant] = (r.json(), lookup.json())
            rejected = await tap.wait_for(of_tenant(short, REJECTED))
            events = await tap.events(settle=1.0)

        referral, code_out = results[short]
        assert (referral["state"], referral["reason"]) == ("rejected", "outside_window")
        assert referral["detail"] == "order placed more than 7 days after"
        assert (rejected[0].data.referral_id, rejected[0].data.reason) == (
            referral["id"],
            "outside_window",
        )
        assert datetime.fromisoformat(code_out["window_ends_at"]) == invited_at + timedelta(days=7)

        referral, code_out = results[ordinary]
        assert (referral["state"], referral["reason"]) == ("pending", None)
        default_days = service.runtime.settings.referrals_attribution_days
        assert datetime.fromisoformat(code_out["window_ends_at"]) == invited_at + timedelta(
            days=default_days
        )
        assert not [e for e in events if of_tenant(ordinary, REJECTED)(e)]

    async def test_an_order_carrying_the_code_is_judged_by_the_tenant_window(
        self, service, tenant_id
    ):
        await set_settings(service, tenant_id, attribution_window_days=7)
        code = await service.issue_code(tenant_id, "adv")
        start = service.clock.now()
        async with TopicTap(service.runtime.settings.kafka_bootstrap_servers, REFERRALS) as tap:
            inside = await referred_order(service, tenant_id, code, at=start + timedelta(days=6))
            outside = await referred_order(service, tenant_id, code, at=start + timedelta(days=8))
            rejected = await tap.wait_for(of_tenant(tenant_id, REJECTED))
        assert rejected[0].data.order_id == outside.order_id
        assert rejected[0].data.reason == "outside_window"
        rows = {r["order_id"]: r for r in await service.referrals(tenant_id, "adv")}
        assert rows[inside.order_id]["state"] == "pending"
        assert (rows[outside.order_id]["state"], rows[outside.order_id]["reason"]) == (
            "rejected",
            "outside_window",
        )
