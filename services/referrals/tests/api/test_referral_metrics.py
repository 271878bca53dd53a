"""GET /v1/metrics/referrals against a hand-computed fixture: one advocate, four
referred orders (confirmed, pending, cancelled, self-referral)."""

from __future__ import annotations

from datetime import timedelta

from ..referrals_support import START

PERIOD = {"from": START.date().isoformat(), "to": (START + timedelta(days=40)).date().isoformat()}


class TestReferralMetrics:
    async def test_outcomes_revenue_and_rejections_by_reason(self, service, tenant_id):
        service.clock.set(START)
        code = await service.issue_code(tenant_id, "adv")
        confirmed = service.placed(referral_code=code, amount=12999)
        pending = service.placed(referral_code=code, amount=7000)
        cancelled = service.placed(referral_code=code, amount=5000)
        own = service.placed(referral_code=code, amount=3000)
        for order, who in ((confirmed, "r1"), (pending, "r2"), (cancelled, "r3"), (own, "adv")):
            await service.publish(order, tenant=tenant_id, subject=who)
        await service.publish(service.fulfilled(confirmed.order_id), tenant=tenant_id, subject="r1")
        await service.publish(service.cancelled(cancelled.order_id), tenant=tenant_id, subject="r3")
        await service.wait_referral(
            tenant_id, "adv", confirmed.order_id, lambda r: r["confirm_due_at"] is not None
        )
        await service.wait_referral(
            tenant_id, "adv", cancelled.order_id, lambda r: r["state"] == "rejected"
        )
        await service.wait_referral(
            tenant_id, "adv", own.order_id, lambda r: r["state"] == "rejected"
        )
        await service.wait_referral(tenant_id, "adv", pending.order_id)
        service.clock.advance(timedelta(days=30, minutes=1))  # the return window passes
        await service.wait_referral(
            tenant_id, "adv", confirmed.order_id, lambda r: r["state"] == "confirmed"
        )

        h = await service.headers(tenant_id)
        r = await service.client.get("/v1/metrics/referrals", params=PERIOD, headers=h)
        assert r.status_code == 200, r.text
        assert r.json() == {
            **PERIOD,
            "invited": 1,
            "referred_orders": 4,
            "conversions": 1,
            "pending": 1,
            "held": 0,
            "rejected": 2,
            "rejection_reasons": [
                {"reason": "cancelled", "referrals": 1},
                {"reason": "self_referral", "referrals": 1},
            ],
            "revenue": {"USD": 12999},
            "pending_revenue": {"USD": 7000},
        }
        # A period before any of it.
        r = await service.client.get(
            "/v1/metrics/referrals", params={"from": "2025-01-01", "to": "2025-12-31"}, headers=h
        )
        assert (r.json()["invited"], r.json()["referred_orders"]) == (0, 0)

    async def test_bad_periods_are_422_and_the_scope_is_checked(self, service, tenant_id):
        h = await service.headers(tenant_id)
        for params, field in (
            ({"from": "2026-03-31", "to": "2026-03-01"}, "to"),
            ({"from": "2020-01-01", "to": "2026-01-01"}, "to"),
            ({"to": "2026-01-01"}, "from"),
        ):
            r = await service.client.get("/v1/metrics/referrals", params=params, headers=h)
            assert r.status_code == 422, (params, r.text)
            assert r.json()["error"]["field"] == field, (params, r.text)
        r = await service.client.get(
            "/v1/metrics/referrals",
            params=PERIOD,
            headers=await service.headers(tenant_id, ["referrals:write"]),
        )
        assert r.status_code == 403
