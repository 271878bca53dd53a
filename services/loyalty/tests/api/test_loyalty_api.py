"""The loyalty service through its HTTP API and its topics, on the real stack."""

from __future__ import annotations

import asyncio
from datetime import timedelta

from afterglow.events.catalog import (
    CustomerErasureRequested,
    Money,
    OrderFulfilled,
    OrderRefunded,
    ReferralConverted,
    ReviewSubmitted,
    SurveyResponded,
)

from ..loyalty_support import Loyalty, new_id


def of(tenant: str, type_suffix: str):
    return lambda e: e.tenantid == tenant and e.type.endswith(type_suffix)


class TestEarning:
    async def test_order_earns_pending_then_available_after_return_window(
        self, loyalty: Loyalty, tenant_id
    ):
        c = new_id("c")
        await loyalty.publish(
            loyalty.event(loyalty.order("o1", 10_000, customer_orders_count=1), tenant_id, c)
        )
        # 5 points per unit on $100 = 500, plus the first-order bonus (100), pending.
        acc = await loyalty.wait_account(tenant_id, c, lambda a: a["pending"] == 600)
        assert acc["available"] == 0
        earned = await loyalty.tap.wait_for(of(tenant_id, "points.earned.v1"), count=2)
        assert {e.data.status for e in earned} == {"pending"}
        fulfilled_at = loyalty.clock.now()
        await loyalty.publish(
            loyalty.event(OrderFulfilled(order_id="o1", fulfilled_at=fulfilled_at), tenant_id, c)
        )
        await asyncio.sleep(0.5)  # the fulfilment is consumed, the window has not passed
        assert (await loyalty.account(tenant_id, c))["available"] == 0
        loyalty.clock.advance(timedelta(days=30, minutes=1))
        acc = await loyalty.wait_account(tenant_id, c, lambda a: a["available"] == 600)
        assert acc["pending"] == 0 and acc["lifetime_earned"] == 600
        assert await loyalty.consistent(tenant_id, c) == (600, 0)

    async def test_review_bonus_is_the_same_for_every_rating(self, loyalty: Loyalty, tenant_id):
        low, high = new_id("c"), new_id("c")
        now = loyalty.clock.now()
        for customer, rating in ((low, 1), (high, 5)):
            review = ReviewSubmitted(
                review_id=new_id("rv"), rating=rating, verified=True, submitted_at=now
            )
            await loyalty.publish(loyalty.event(review, tenant_id, customer))
        a = await loyalty.wait_account(tenant_id, low, lambda a: a["available"] > 0)
        b = await loyalty.wait_account(tenant_id, high, lambda a: a["available"] > 0)
        assert a["available"] == b["available"] == 50

    async def test_survey_pays_once_and_referral_pays_the_advocate(
        self, loyalty: Loyalty, tenant_id
    ):
        c = new_id("c")
        now = loyalty.clock.now()
        answer = dict(survey_id="sv-1", kind="nps", score=9, band="promoter", responded_at=now)
        await loyalty.publish(loyalty.event(SurveyResponded(**answer), tenant_id, c))
        await loyalty.publish(
            loyalty.event(SurveyResponded(**answer, is_update=True), tenant_id, c)
        )
        referral = ReferralConverted(
            referral_id=new_id("rf"),
            code="CODE1",
            referee_customer_id="someone-else",
            order_id="o-ref",
            order_total=Money(amount=5000, currency="USD"),
            converted_at=now,
        )
        ev = loyalty.event(referral, tenant_id, c)
        await loyalty.publish(ev)
        await loyalty.publish(ev)  # redelivered: the inbox drops it
        acc = await loyalty.wait_account(tenant_id, c, lambda a: a["available"] >= 525)
        await asyncio.sleep(0.5)
        acc = await loyalty.account(tenant_id, c)
        assert acc["available"] == 25 + 500
        assert await loyalty.consistent(tenant_id, c) == (525, 0)


class TestRedemption:
    async def credit(self, loyalty: Loyalty, tenant: str, customer: str, points: int) -> None:
        r = await loyalty.client.post(
            f"/v1/accounts/{customer}/adjustments",
            json={"points": points, "reason": "goodwill"},
            headers=await loyalty.key(tenant),
        )
        assert r.status_code == 201, r.text

    async def test_idempotency_key_replays_the_same_answer(self, loyalty: Loyalty, tenant_id):
        c = new_id("c")
        await self.credit(loyalty, tenant_id, c, 1_200)
        h = await loyalty.key(tenant_id)
        url = f"/v1/accounts/{c}/redemptions"
        first = await loyalty.client.post(
            url, json={"reward_id": "five-off"}, headers={**h, "Idempotency-Key": "k1"}
        )
        again = await loyalty.client.post(
            url, json={"reward_id": "five-off"}, headers={**h, "Idempotency-Key": "k1"}
        )
        assert first.status_code == again.status_code == 201
        assert first.json() == again.json()
        assert first.json()["code"].startswith("AG-")
        assert (await loyalty.account(tenant_id, c))["available"] == 700
        other = await loyalty.client.post(
            url, json={"reward_id": "free-shipping"}, headers={**h, "Idempotency-Key": "k1"}
        )
        assert other.status_code == 422
        assert other.json()["error"]["field"] == "Idempotency-Key"
        missing = await loyalty.client.post(url, json={"reward_id": "five-off"}, headers=h)
        assert missing.status_code == 422
        assert "idempotency" in missing.json()["error"]["field"].lower()
        short = await loyalty.client.post(
            url, json={"reward_id": "ten-percent"}, headers={**h, "Idempotency-Key": "k2"}
        )
        assert short.status_code == 409
        assert short.json()["error"]["code"] == "insufficient_points"
        assert await loyalty.consistent(tenant_id, c) == (700, 0)
        redeemed = await loyalty.tap.wait_for(of(tenant_id, "points.redeemed.v1"))
        assert redeemed[0].data.reward_code == first.json()["code"]
        # The code is asked of the shop (orders-ingest), carrying its announcement: no
        # message leaves loyalty before the code exists there.
        [asked] = await loyalty.tap.wait_for(of(tenant_id, "discount.requested.v1"))
        assert asked.subject == c
        assert (asked.data.code, asked.data.value_kind) == (first.json()["code"], "fixed_amount")
        assert asked.data.amount.amount == 500
        assert asked.data.reference == redeemed[0].data.redemption_id
        assert asked.data.announce.kind == "reward_code"
        assert asked.data.announce.variables["reward_code"] == first.json()["code"]
        mine = [e for e in await loyalty.tap.events(settle=0.2) if e.tenantid == tenant_id]
        assert not any(
            e.type == "afterglow.message.requested.v1" and e.data.kind == "reward_code"
            for e in mine
        )

    async def test_hundred_parallel_redemptions_succeed_exactly_ten_times(
        self, loyalty: Loyalty, tenant_id
    ):
        c = new_id("c")
        await self.credit(loyalty, tenant_id, c, 5_000)  # ten five-off rewards at 500
        h = await loyalty.key(tenant_id)

        async def one(i: int) -> int:
            r = await loyalty.client.post(
                f"/v1/accounts/{c}/redemptions",
                json={"reward_id": "five-off"},
                headers={**h, "Idempotency-Key": f"par-{i}"},
            )
            return r.status_code

        codes = await asyncio.gather(*(one(i) for i in range(100)))
        assert codes.count(201) == 10
        assert codes.count(409) == 90
        assert await loyalty.consistent(tenant_id, c) == (0, 0)

    async def test_refund_after_redemption_leaves_a_debt_that_earnings_repay(
        self, loyalty: Loyalty, tenant_id
    ):
        c = new_id("c")
        h = await loyalty.key(tenant_id)
        await loyalty.publish(
            loyalty.event(loyalty.order("o-d", 20_000, customer_orders_count=3), tenant_id, c)
        )
        await loyalty.wait_account(tenant_id, c, lambda a: a["pending"] == 1_000)
        await loyalty.publish(
            loyalty.event(
                OrderFulfilled(
                    order_id="o-d", fulfilled_at=loyalty.clock.now() - timedelta(days=31)
                ),
                tenant_id,
                c,
            )
        )
        await loyalty.wait_account(tenant_id, c, lambda a: a["available"] == 1_000)
        r = await loyalty.client.post(
            f"/v1/accounts/{c}/redemptions",
            json={"reward_id": "ten-percent"},
            headers={**h, "Idempotency-Key": "d1"},
        )
        assert r.status_code == 201
        refund = OrderRefunded(
            order_id="o-d",
            refund_id="rf-1",
            refunded_at=loyalty.clock.now(),
            amount=Money(amount=10_000, currency="USD"),
            full=False,
        )
        await loyalty.publish(loyalty.event(refund, tenant_id, c))
        acc = await loyalty.wait_account(tenant_id, c, lambda a: a["debt"] == 500)
        assert acc["available"] == 0
        await loyalty.publish(loyalty.event(refund, tenant_id, c))  # same refund id again
        review = ReviewSubmitted(
            review_id=new_id("rv"), rating=3, verified=True, submitted_at=loyalty.clock.now()
        )
        await loyalty.publish(loyalty.event(review, tenant_id, c))
        acc = await loyalty.wait_account(tenant_id, c, lambda a: a["debt"] == 450)
        assert await loyalty.consistent(tenant_id, c) == (-450, 0)


class TestTiers:
    async def test_tier_up_then_down_as_the_window_rolls(self, loyalty: Loyalty, tenant_id):
        # Two customers, so that both tier down in the same review pass: each must get
        # its own tier.changed even though the pass and its instant are shared.
        c, twin = new_id("c"), new_id("c")
        for customer, order in ((c, "o-big"), (twin, "o-twin")):
            await loyalty.publish(loyalty.event(loyalty.order(order, 60_000), tenant_id, customer))
        acc = await loyalty.wait_account(tenant_id, c, lambda a: a["tier"] == "silver")
        await loyalty.wait_account(tenant_id, twin, lambda a: a["tier"] == "silver")
        assert acc["tier_progress"]["next_tier"] == "gold"
        assert acc["tier_progress"]["remaining"] == 40_000
        up = await loyalty.tap.wait_for(
            lambda e: of(tenant_id, "tier.changed.v1")(e) and e.subject == c
        )
        assert (up[0].data.from_tier, up[0].data.to_tier, up[0].data.direction) == (
            "bronze",
            "silver",
            "up",
        )
        await loyalty.tap.wait_for(
            lambda e: of(tenant_id, "message.requested.v1")(e) and e.data.kind == "tier_up"
        )
        loyalty.clock.advance(timedelta(days=366))
        # A year on, every account of this module is due for review at once: the worker
        # goes through that backlog before it reaches these, hence the longer waits.
        for customer in (c, twin):
            await loyalty.wait_account(tenant_id, customer, lambda a: a["tier"] == "bronze")
        down = await loyalty.tap.wait_for(
            lambda e: of(tenant_id, "tier.changed.v1")(e) and e.data.direction == "down",
            count=2,
            timeout=120,
        )
        assert {e.subject for e in down} == {c, twin}
        assert {e.data.to_tier for e in down} == {"bronze"}


class TestExpiry:
    async def test_notice_then_oldest_points_expire(self, loyalty: Loyalty, tenant_id):
        c = new_id("c")
        h = await loyalty.key(tenant_id)
        r = await loyalty.client.post(
            f"/v1/accounts/{c}/adjustments", json={"points": 300, "reason": "welcome"}, headers=h
        )
        assert r.status_code == 201
        loyalty.clock.advance(timedelta(days=365 - 10))
        msg = await loyalty.tap.wait_for(
            lambda e: of(tenant_id, "message.requested.v1")(e) and e.data.kind == "points_expiring"
        )
        assert msg[0].data.variables["points_expiring"] == 300
        loyalty.clock.advance(timedelta(days=11))
        await loyalty.wait_account(tenant_id, c, lambda a: a["available"] == 0)
        expired = await loyalty.tap.wait_for(of(tenant_id, "points.expired.v1"))
        assert expired[0].data.points == 300
        assert await loyalty.consistent(tenant_id, c) == (0, 0)


class TestRulesAndAccess:
    async def test_rules_are_validated_naming_the_field(self, loyalty: Loyalty, tenant_id):
        h = await loyalty.key(tenant_id)
        rules = (await loyalty.client.get("/v1/rules", headers=h)).json()
        assert rules["bonuses"]["referral"] == 500
        bad = {**rules, "return_window_days": -1}
        r = await loyalty.client.put("/v1/rules", json=bad, headers=h)
        assert r.status_code == 422
        assert r.json()["error"]["field"] == "return_window_days"
        gated = {**rules, "bonuses": {**rules["bonuses"], "review_min_rating": 4}}
        r = await loyalty.client.put("/v1/rules", json=gated, headers=h)
        assert r.status_code == 422
        assert r.json()["error"]["field"] == "bonuses.review_min_rating"
        r = await loyalty.client.put("/v1/rules", json={**rules, "points_per_unit": 10}, headers=h)
        assert r.status_code == 200
        assert (await loyalty.client.get("/v1/rules", headers=h)).json()["points_per_unit"] == 10

    async def test_scopes(self, loyalty: Loyalty, tenant_id):
        reader = await loyalty.key(tenant_id, ["loyalty:read"])
        assert (await loyalty.client.get("/v1/rules")).status_code == 401
        r = await loyalty.client.post(
            "/v1/accounts/x/adjustments", json={"points": 1, "reason": "x"}, headers=reader
        )
        assert r.status_code == 403
        assert (await loyalty.client.get("/v1/accounts/nobody", headers=reader)).status_code == 404

    async def test_adjustment_needs_a_reason_and_never_overdraws(self, loyalty, tenant_id):
        h = await loyalty.key(tenant_id)
        url = f"/v1/accounts/{new_id('c')}/adjustments"
        r = await loyalty.client.post(url, json={"points": 10}, headers=h)
        assert r.status_code == 422 and r.json()["error"]["field"] == "reason"
        r = await loyalty.client.post(url, json={"points": -10, "reason": "x"}, headers=h)
        assert r.status_code == 409

    async def test_history_pages_and_metrics(self, loyalty: Loyalty, tenant_id):
        c = new_id("c")
        h = await loyalty.key(tenant_id)
        for i in range(5):
            await loyalty.client.post(
                f"/v1/accounts/{c}/adjustments", json={"points": 200, "reason": f"r{i}"}, headers=h
            )
        r = await loyalty.client.post(
            f"/v1/accounts/{c}/redemptions",
            json={"reward_id": "five-off"},
            headers={**h, "Idempotency-Key": "m1"},
        )
        assert r.status_code == 201
        seen, cursor = [], None
        while True:
            params = {"limit": 4, **({"cursor": cursor} if cursor else {})}
            page = (
                await loyalty.client.get(f"/v1/accounts/{c}/history", params=params, headers=h)
            ).json()
            seen += page["entries"]
            cursor = page["next_cursor"]
            if cursor is None:
                break
        assert [e["kind"] for e in seen] == ["redeem"] + ["adjust"] * 5
        assert len({e["id"] for e in seen}) == 6
        m = (await loyalty.client.get("/v1/metrics", headers=h)).json()
        assert (m["points_issued"], m["points_redeemed"], m["points_outstanding"]) == (
            1000,
            500,
            500,
        )
        assert m["outstanding_liability"] == {"amount": 500, "currency": "USD"}
        assert m["redemption_rate"] == 0.5


class TestErasure:
    async def test_erasure_pseudonymizes_and_keeps_aggregates(self, loyalty: Loyalty, tenant_id):
        c = new_id("c")
        h = await loyalty.key(tenant_id)
        await loyalty.client.post(
            f"/v1/accounts/{c}/adjustments",
            json={"points": 70, "reason": "note about Jane"},
            headers=h,
        )
        ev = CustomerErasureRequested(requested_at=loyalty.clock.now())
        await loyalty.publish(loyalty.event(ev, tenant_id, c))

        async def gone() -> int:
            return (await loyalty.client.get(f"/v1/accounts/{c}", headers=h)).status_code

        from afterglow.events.testing import eventually

        await eventually(gone, lambda s: s == 404)
        m = (await loyalty.client.get("/v1/metrics", headers=h)).json()
        assert m["points_outstanding"] == 70 and m["accounts"] == 1
