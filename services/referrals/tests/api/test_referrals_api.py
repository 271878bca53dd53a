"""The REST API on the real stack: auth, validation, idempotent issuance, attribution."""

from __future__ import annotations

import asyncio
from datetime import datetime, timedelta

import pytest

from afterglow.events.catalog import OrderRefunded
from afterglow.events.testing import TopicTap
from afterglow.referrals import domain

REFERRALS = "afterglow.referrals"
# The referee's reward is asked of the shop (orders-ingest), carrying its announcement.
DISCOUNTS = "afterglow.discounts"


def is_reward(event, tenant):
    return (
        event.tenantid == tenant
        and event.type == "afterglow.discount.requested.v1"
        and event.data.announce.kind == "referee_reward"
    )


class TestAuth:
    async def test_requires_a_key(self, service):
        r = await service.client.get("/v1/metrics")
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "unauthorized"

    async def test_read_key_cannot_write(self, service, tenant_id):
        headers = await service.headers(tenant_id, ["referrals:read"])
        r = await service.client.post("/v1/advocates/a/code", headers=headers)
        assert r.status_code == 403

    async def test_tenants_do_not_see_each_other(self, service, tenant_id):
        code = await service.issue_code(tenant_id, "adv")
        other = await service.headers(tenant_id + "x")
        assert (await service.client.get(f"/v1/codes/{code}", headers=other)).status_code == 404


class TestCodes:
    async def test_issue_is_idempotent(self, service, tenant_id):
        headers = await service.headers(tenant_id)
        first = await service.client.post("/v1/advocates/adv/code", headers=headers)
        again = await service.client.post("/v1/advocates/adv/code", headers=headers)
        assert (first.status_code, again.status_code) == (201, 200)
        assert first.json()["code"] == again.json()["code"]

    async def test_concurrent_issues_make_one_code(self, service, tenant_id):
        headers = await service.headers(tenant_id)
        responses = await asyncio.gather(
            *(service.client.post("/v1/advocates/busy/code", headers=headers) for _ in range(8))
        )
        assert sorted(r.status_code for r in responses) == [200] * 7 + [201]
        assert len({r.json()["code"] for r in responses}) == 1

    async def test_lookup_normalizes_what_people_type(self, service, tenant_id):
        code = await service.issue_code(tenant_id, "adv")
        headers = await service.headers(tenant_id)
        typed = f" {code[:3].lower()}-{code[3:]} "
        r = await service.client.get(f"/v1/codes/{typed}", headers=headers)
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["code"] == code
        assert body["advocate_customer_id"] == "adv"
        assert body["active"] is True
        assert set(code) <= set(domain.CODE_ALPHABET)

    async def test_unknown_code_is_404_naming_the_field(self, service, tenant_id):
        r = await service.client.get("/v1/codes/ZZZZZZ", headers=await service.headers(tenant_id))
        assert r.status_code == 404
        assert r.json()["error"]["field"] == "code"

    async def test_share_url_uses_the_tenant_setting(self, service, tenant_id):
        headers = await service.headers(tenant_id)
        r = await service.client.put(
            "/v1/settings", json={"share_base_url": "ftp://nope"}, headers=headers
        )
        assert r.status_code == 422
        assert r.json()["error"]["field"] == "share_base_url"
        r = await service.client.put(
            "/v1/settings", json={"share_base_url": "https://shop.example/"}, headers=headers
        )
        assert r.status_code == 200
        code = await service.issue_code(tenant_id, "adv")
        r = await service.client.get(f"/v1/codes/{code}", headers=headers)
        assert r.json()["share_url"] == f"https://shop.example/?ref={code}"


class TestSettings:
    async def test_defaults_until_the_tenant_sets_its_own(self, service, tenant_id):
        defaults = service.runtime.settings
        r = await service.client.get("/v1/settings", headers=await service.headers(tenant_id))
        assert r.status_code == 200, r.text
        assert r.json() == {
            # No share URL anywhere: the service's own link, which forwards to the shop.
            "share_base_url": f"{defaults.public_base_url}/r/{tenant_id}",
            "return_window_days": defaults.referrals_return_window_days,
            "attribution_window_days": defaults.referrals_attribution_days,
            "referee_reward": {
                "kind": "percentage",
                "percent": 10,
                "amount": None,
                "currency": None,
                "valid_days": 30,
                "label": "10% off",
            },
            "sources": {
                "share_base_url": "default",
                "return_window_days": "default",
                "attribution_window_days": "default",
                "referee_reward": "default",
            },
        }

    async def test_a_put_sets_the_fields_it_names_and_null_restores_the_default(
        self, service, tenant_id
    ):
        headers = await service.headers(tenant_id)
        put = await service.client.put(
            "/v1/settings", json={"share_base_url": "https://shop.example/"}, headers=headers
        )
        assert put.status_code == 200, put.text
        put = await service.client.put(
            "/v1/settings",
            json={"return_window_days": 0, "attribution_window_days": 14},
            headers=headers,
        )
        assert put.status_code == 200, put.text
        body = put.json()
        assert body["share_base_url"] == "https://shop.example/"  # not named: kept
        assert (body["return_window_days"], body["attribution_window_days"]) == (0, 14)
        assert body["sources"] == {
            "share_base_url": "tenant",
            "return_window_days": "tenant",
            "attribution_window_days": "tenant",
            "referee_reward": "default",
        }
        assert (await service.client.get("/v1/settings", headers=headers)).json() == body

        r = await service.client.put(
            "/v1/settings", json={"return_window_days": None}, headers=headers
        )
        assert r.status_code == 200, r.text
        body = r.json()
        assert body["return_window_days"] == service.runtime.settings.referrals_return_window_days
        assert body["sources"] == {
            "share_base_url": "tenant",
            "return_window_days": "default",
            "attribution_window_days": "tenant",
            "referee_reward": "default",
        }
        assert body["attribution_window_days"] == 14

    @pytest.mark.parametrize(
        ("field", "value"),
        [
            ("return_window_days", -1),
            ("return_window_days", 366),
            ("return_window_days", "30"),
            ("return_window_days", 1.5),
            ("return_window_days", True),
            ("attribution_window_days", 0),
            ("attribution_window_days", 366),
            ("attribution_window_days", "90"),
        ],
    )
    async def test_a_bad_window_is_422_naming_the_field(self, service, tenant_id, field, value):
        headers = await service.headers(tenant_id)
        r = await service.client.put(
            "/v1/settings",
            json={"share_base_url": "https://shop.example/", field: value},
            headers=headers,
        )
        assert r.status_code == 422, r.text
        assert r.json()["error"]["code"] == "validation_error"
        assert r.json()["error"]["field"] == field
        # Nothing of the rejected request was stored, not even its valid field.
        after = (await service.client.get("/v1/settings", headers=headers)).json()
        assert set(after["sources"].values()) == {"default"}

    async def test_the_edges_of_the_ranges_are_accepted(self, service, tenant_id):
        headers = await service.headers(tenant_id)
        for return_days, attribution_days in ((0, 1), (365, 365)):
            r = await service.client.put(
                "/v1/settings",
                json={
                    "return_window_days": return_days,
                    "attribution_window_days": attribution_days,
                },
                headers=headers,
            )
            assert r.status_code == 200, r.text
            assert (r.json()["return_window_days"], r.json()["attribution_window_days"]) == (
                return_days,
                attribution_days,
            )


class TestAttributions:
    async def _order(self, service, tenant, customer, **kw):
        order = service.placed(**kw)
        await service.publish(order, tenant=tenant, subject=customer)
        await service.wait_order_seen(tenant, order.order_id)
        return order

    async def test_explicit_attribution_inside_the_window(self, service, tenant_id):
        code = await service.issue_code(tenant_id, "adv")
        order = await self._order(
            service, tenant_id, "ref", at=service.clock.now() + timedelta(days=5)
        )
        headers = await service.headers(tenant_id)
        r = await service.client.post(
            "/v1/attributions", json={"order_id": order.order_id, "code": code}, headers=headers
        )
        assert r.status_code == 201, r.text
        assert (r.json()["state"], r.json()["via"]) == ("pending", "api")
        again = await service.client.post(
            "/v1/attributions", json={"order_id": order.order_id, "code": code}, headers=headers
        )
        assert again.status_code == 409
        assert again.json()["error"]["field"] == "order_id"

    async def test_an_order_before_the_invitation_is_outside_the_window(self, service, tenant_id):
        order = await self._order(
            service, tenant_id, "ref", at=service.clock.now() - timedelta(days=1)
        )
        code = await service.issue_code(tenant_id, "adv")
        r = await service.client.post(
            "/v1/attributions",
            json={"order_id": order.order_id, "code": code},
            headers=await service.headers(tenant_id),
        )
        assert r.status_code == 201
        assert (r.json()["state"], r.json()["reason"]) == ("rejected", "outside_window")

    async def test_an_order_after_the_window_is_rejected(self, service, tenant_id):
        code = await service.issue_code(tenant_id, "adv")
        order = await self._order(
            service, tenant_id, "ref", at=service.clock.now() + timedelta(days=91)
        )
        r = await service.client.post(
            "/v1/attributions",
            json={"order_id": order.order_id, "code": code},
            headers=await service.headers(tenant_id),
        )
        assert (r.json()["state"], r.json()["reason"]) == ("rejected", "outside_window")

    @pytest.mark.parametrize("event", ["fulfilled", "delivered"])
    async def test_an_order_shipped_before_its_attribution_confirms(
        self, service, tenant_id, event
    ):
        # "delivered": platforms that report the delivery and never the fulfilment.
        code = await service.issue_code(tenant_id, "adv")
        order = await self._order(service, tenant_id, "ref")
        shipped_at = service.clock.now()
        shipped = getattr(service, event)(order.order_id, at=shipped_at)
        await service.publish(shipped, tenant=tenant_id, subject="ref")
        await service.wait_order_seen(tenant_id, order.order_id, lambda o: o.fulfilled_at)
        async with TopicTap(service.runtime.settings.kafka_bootstrap_servers, REFERRALS) as tap:
            r = await service.client.post(
                "/v1/attributions",
                json={"order_id": order.order_id, "code": code},
                headers=await service.headers(tenant_id),
            )
            assert r.status_code == 201, r.text
            body = r.json()
            assert body["state"] == "pending"  # the return window is still open
            assert datetime.fromisoformat(body["fulfilled_at"]) == shipped_at
            assert datetime.fromisoformat(body["confirm_due_at"]) == shipped_at + timedelta(days=30)
            service.clock.advance(timedelta(days=30, minutes=1))
            converted = await tap.wait_for(
                lambda e: e.tenantid == tenant_id and e.type == "afterglow.referral.converted.v1"
            )
        assert converted[0].data.order_id == order.order_id
        row = await service.wait_referral(tenant_id, "adv", order.order_id)
        assert row["state"] == "confirmed"

    @pytest.mark.parametrize(
        ("history", "state", "reason"),
        [
            ("cancelled", "rejected", "cancelled"),
            ("refunded", "rejected", "refunded"),
            ("two halves refunded", "rejected", "refunded"),
            ("half refunded", "pending", None),  # a partial refund leaves the customer
        ],
    )
    async def test_an_order_refunded_or_cancelled_before_its_attribution(
        self, service, tenant_id, history, state, reason
    ):
        code = await service.issue_code(tenant_id, "adv")
        order = await self._order(service, tenant_id, "ref", amount=5000)
        events = {
            "cancelled": [service.cancelled(order.order_id)],
            "refunded": [service.refunded(order.order_id)],
            "two halves refunded": [
                service.refunded(order.order_id, amount=2500, full=False) for _ in range(2)
            ],
            "half refunded": [service.refunded(order.order_id, amount=2500, full=False)],
        }[history]
        for event in events:
            await service.publish(event, tenant=tenant_id, subject="ref")
        refunded = sum(e.amount.amount for e in events if isinstance(e, OrderRefunded))
        await service.wait_order_seen(
            tenant_id,
            order.order_id,
            lambda o: o.cancelled_at if history == "cancelled" else o.refunded_amount == refunded,
        )
        bootstrap = service.runtime.settings.kafka_bootstrap_servers
        async with TopicTap(bootstrap, REFERRALS, DISCOUNTS) as tap:
            r = await service.client.post(
                "/v1/attributions",
                json={"order_id": order.order_id, "code": code},
                headers=await service.headers(tenant_id),
            )
            assert r.status_code == 201, r.text
            assert (r.json()["state"], r.json()["reason"]) == (state, reason)
            if state == "rejected":
                rejected = await tap.wait_for(
                    lambda e: e.tenantid == tenant_id and e.type == "afterglow.referral.rejected.v1"
                )
                assert (rejected[0].data.referral_id, rejected[0].data.reason) == (
                    r.json()["id"],
                    reason,
                )
            else:
                await tap.wait_for(lambda e: is_reward(e, tenant_id))
            events_out = await tap.events(settle=1.0)
        rewards = [e for e in events_out if is_reward(e, tenant_id)]
        assert len(rewards) == (1 if state == "pending" else 0)

    async def test_unknown_order_or_code(self, service, tenant_id):
        headers = await service.headers(tenant_id)
        code = await service.issue_code(tenant_id, "adv")
        r = await service.client.post(
            "/v1/attributions", json={"order_id": "nope", "code": code}, headers=headers
        )
        assert (r.status_code, r.json()["error"]["field"]) == (404, "order_id")
        r = await service.client.post(
            "/v1/attributions", json={"order_id": "nope", "code": "ZZZZZZ"}, headers=headers
        )
        assert (r.status_code, r.json()["error"]["field"]) == (404, "code")

    async def test_validation_names_the_field(self, service, tenant_id):
        r = await service.client.post(
            "/v1/attributions", json={"code": "ABC234"}, headers=await service.headers(tenant_id)
        )
        assert r.status_code == 422
        assert r.json()["error"]["field"] == "order_id"


class TestReviewAndMetrics:
    async def test_review_of_an_unknown_referral_is_404(self, service, tenant_id):
        r = await service.client.post(
            "/v1/referrals/nope/review",
            json={"decision": "approve"},
            headers=await service.headers(tenant_id),
        )
        assert r.status_code == 404

    async def test_metrics_count_invited_and_pending(self, service, tenant_id):
        headers = await service.headers(tenant_id)
        empty = (await service.client.get("/v1/metrics", headers=headers)).json()
        assert empty["invited"] == 0 and empty["referral_rate"] == 0.0
        code = await service.issue_code(tenant_id, "a1")
        await service.issue_code(tenant_id, "a2")
        order = service.placed(referral_code=code, amount=2500, currency="EUR")
        await service.publish(order, tenant=tenant_id, subject="r1")
        await service.wait_referral(tenant_id, "a1", order.order_id)
        m = (await service.client.get("/v1/metrics", headers=headers)).json()
        assert (m["invited"], m["pending"], m["conversions"]) == (2, 1, 0)
        assert m["pending_revenue"] == {"EUR": 2500}
        assert m["revenue"] == {}
