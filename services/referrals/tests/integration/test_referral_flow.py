"""Referrals on the real broker and PostgreSQL: events in, state and events out."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from afterglow.events import to_record
from afterglow.events.catalog import CustomerErasureRequested
from afterglow.events.privacy import is_pseudonym, pseudonym
from afterglow.events.testing import TopicTap, eventually
from afterglow.referrals.deps import deps_of
from afterglow.referrals.models import Order

from ..referrals_support import new_id

REFERRALS = "afterglow.referrals"
MESSAGES = "afterglow.messages"
# Reward codes are asked of the shop (orders-ingest), carrying their announcement.
DISCOUNTS = "afterglow.discounts"


def of_tenant(tenant: str, type_: str):
    return lambda e: e.tenantid == tenant and e.type == type_


class TestCodeIssuance:
    async def test_invitation_issues_one_code_and_requests_the_invite(self, service, tenant_id):
        advocate = "adv-1"
        async with TopicTap(
            service.runtime.settings.kafka_bootstrap_servers, REFERRALS, MESSAGES
        ) as tap:
            await service.publish(service.invited(), tenant=tenant_id, subject=advocate)
            await service.publish(service.invited(), tenant=tenant_id, subject=advocate)
            issued = await tap.wait_for(of_tenant(tenant_id, "afterglow.referral.code_issued.v1"))
            invite = await tap.wait_for(of_tenant(tenant_id, "afterglow.message.requested.v1"))
            r = await service.client.get(
                f"/v1/advocates/{advocate}/referrals", headers=await service.headers(tenant_id)
            )
            # Both invitations are applied (the count proves it) before counting events.
            await eventually(
                lambda: service.client.post(
                    f"/v1/advocates/{advocate}/code", headers=r.request.headers
                ),
                lambda resp: resp.status_code == 200,
            )
            events = await tap.events(settle=1.0)
        code = issued[0].data.code
        assert issued[0].subject == advocate
        assert invite[0].data.kind == "referral_invite"
        assert invite[0].data.variables["referral_code"] == code
        assert invite[0].data.variables["referral_url"].endswith(f"ref={code}")
        assert invite[0].data.request_id == f"referral_invite:{tenant_id}:{code}"
        assert r.json()["code"]["code"] == code
        mine = [e for e in events if e.tenantid == tenant_id]
        assert [e.type for e in mine].count("afterglow.referral.code_issued.v1") == 1
        assert [e.type for e in mine].count("afterglow.message.requested.v1") == 1


class TestFullPath:
    async def test_invitation_to_confirmed_conversion(self, service, tenant_id):
        advocate, referee = "adv-1", "new-1"
        bootstrap = service.runtime.settings.kafka_bootstrap_servers
        async with TopicTap(bootstrap, REFERRALS, DISCOUNTS) as tap:
            await service.publish(service.invited(), tenant=tenant_id, subject=advocate)
            issued = await tap.wait_for(of_tenant(tenant_id, "afterglow.referral.code_issued.v1"))
            code = issued[0].data.code

            order = service.placed(referral_code=code.lower(), amount=12999)
            await service.publish(order, tenant=tenant_id, subject=referee)
            row = await service.wait_referral(tenant_id, advocate, order.order_id)
            assert (row["state"], row["via"], row["reason"]) == ("pending", "referral_code", None)
            reward = await tap.wait_for(
                lambda e: (
                    e.tenantid == tenant_id
                    and e.type == "afterglow.discount.requested.v1"
                    and e.data.announce.kind == "referee_reward"
                )
            )
            assert reward[0].subject == referee
            assert reward[0].data.code == row["referee_reward_code"]
            assert (reward[0].data.value_kind, reward[0].data.percent) == ("percentage", 10)
            assert reward[0].data.announce.variables["reward_code"] == row["referee_reward_code"]

            await service.publish(
                service.fulfilled(order.order_id), tenant=tenant_id, subject=referee
            )
            row = await service.wait_referral(
                tenant_id, advocate, order.order_id, lambda r: r["confirm_due_at"] is not None
            )
            assert row["state"] == "pending"  # the return window is still open

            service.clock.advance(timedelta(days=30, minutes=1))
            converted = await tap.wait_for(of_tenant(tenant_id, "afterglow.referral.converted.v1"))
        assert converted[0].subject == advocate
        assert converted[0].data.order_id == order.order_id
        assert converted[0].data.referee_customer_id == referee
        assert converted[0].data.order_total.amount == 12999
        row = await service.wait_referral(tenant_id, advocate, order.order_id)
        assert row["state"] == "confirmed"

        m = (
            await service.client.get("/v1/metrics", headers=await service.headers(tenant_id))
        ).json()
        assert m["invited"] == 1
        assert m["advocates_converting"] == 1
        assert m["conversions"] == 1
        assert m["referral_rate"] == 1.0
        assert m["revenue"] == {"USD": 12999}


class TestReturns:
    async def test_refund_inside_the_return_window_rejects(self, service, tenant_id):
        advocate, referee = "adv", "ref"
        code = await service.issue_code(tenant_id, advocate)
        bootstrap = service.runtime.settings.kafka_bootstrap_servers
        async with TopicTap(bootstrap, REFERRALS, DISCOUNTS) as tap:
            order = service.placed(discount_codes=["WELCOME10", code])
            await service.publish(order, tenant=tenant_id, subject=referee)
            await service.publish(
                service.fulfilled(order.order_id), tenant=tenant_id, subject=referee
            )
            row = await service.wait_referral(
                tenant_id, advocate, order.order_id, lambda r: r["confirm_due_at"] is not None
            )
            assert row["via"] == "discount_code"
            service.clock.advance(timedelta(days=10))  # inside the 30-day window
            await service.publish(
                service.refunded(order.order_id), tenant=tenant_id, subject=referee
            )
            rejected = await tap.wait_for(of_tenant(tenant_id, "afterglow.referral.rejected.v1"))
            service.clock.advance(timedelta(days=25))  # past the window: nothing to confirm
            events = await tap.events(settle=1.0)
        assert rejected[0].data.reason == "refunded"
        assert rejected[0].subject == advocate
        row = await service.wait_referral(tenant_id, advocate, order.order_id)
        assert (row["state"], row["reason"]) == ("rejected", "refunded")
        assert not [e for e in events if of_tenant(tenant_id, "afterglow.referral.converted.v1")(e)]
        # The friend's code, issued with the conversion, is clawed back in the shop.
        [clawback] = [
            e for e in events if of_tenant(tenant_id, "afterglow.discount.revoke_requested.v1")(e)
        ]
        assert (clawback.subject, clawback.data.reason) == (referee, "clawback")
        assert clawback.data.code == row["referee_reward_code"]

    async def test_partial_refund_keeps_the_conversion(self, service, tenant_id):
        code = await service.issue_code(tenant_id, "adv")
        order = service.placed(referral_code=code, amount=5000)
        await service.publish(order, tenant=tenant_id, subject="ref")
        await service.publish(
            service.refunded(order.order_id, amount=1000, full=False),
            tenant=tenant_id,
            subject="ref",
        )
        await service.publish(service.fulfilled(order.order_id), tenant=tenant_id, subject="ref")
        row = await service.wait_referral(
            tenant_id, "adv", order.order_id, lambda r: r["fulfilled_at"] is not None
        )
        assert row["state"] == "pending"

    async def test_cancellation_rejects(self, service, tenant_id):
        code = await service.issue_code(tenant_id, "adv")
        order = service.placed(referral_code=code)
        await service.publish(order, tenant=tenant_id, subject="ref")
        await service.publish(service.cancelled(order.order_id), tenant=tenant_id, subject="ref")
        row = await service.wait_referral(
            tenant_id, "adv", order.order_id, lambda r: r["state"] == "rejected"
        )
        assert row["reason"] == "cancelled"


class TestDuplicates:
    async def test_the_same_order_event_twice_makes_one_conversion(self, service, tenant_id):
        code = await service.issue_code(tenant_id, "adv")
        order = service.placed(referral_code=code)
        bootstrap = service.runtime.settings.kafka_bootstrap_servers
        async with TopicTap(bootstrap, DISCOUNTS) as tap:
            event = await service.publish(order, tenant=tenant_id, subject="ref")
            await service.send_record(to_record(event))  # the identical record again
            # The same order under a new event id (a platform's repeated webhook).
            await service.publish(order, tenant=tenant_id, subject="ref")
            # Same key, same partition: once this is applied, the repeats were too.
            await service.publish(
                service.fulfilled(order.order_id), tenant=tenant_id, subject="ref"
            )
            await service.wait_referral(
                tenant_id, "adv", order.order_id, lambda r: r["fulfilled_at"] is not None
            )
            events = await tap.events(settle=1.0)
        rows = await service.referrals(tenant_id, "adv")
        assert len(rows) == 1
        rewards = [
            e
            for e in events
            if e.tenantid == tenant_id
            and e.type == "afterglow.discount.requested.v1"
            and e.data.announce.kind == "referee_reward"
        ]
        assert len(rewards) == 1


class TestFraud:
    async def _attributed(self, service, tenant, advocate, referee, order):
        await service.publish(order, tenant=tenant, subject=referee)
        return await service.wait_referral(tenant, advocate, order.order_id)

    async def test_self_referral_same_customer(self, service, tenant_id):
        code = await service.issue_code(tenant_id, "adv")
        row = await self._attributed(
            service, tenant_id, "adv", "adv", service.placed(referral_code=code)
        )
        assert (row["state"], row["reason"], row["detail"]) == (
            "rejected",
            "self_referral",
            "same customer",
        )

    async def _advocate_ordered(self, service, tenant, **kw):
        own = service.placed(**kw)
        await service.publish(own, tenant=tenant, subject="adv")
        await service.wait_order_seen(tenant, own.order_id)

    async def test_self_referral_same_email(self, service, tenant_id):
        await self._advocate_ordered(service, tenant_id, email="Ada@Example.com")
        code = await service.issue_code(tenant_id, "adv")
        row = await self._attributed(
            service,
            tenant_id,
            "adv",
            "alias",
            service.placed(referral_code=code, email="ada@example.com "),
        )
        assert (row["state"], row["reason"], row["detail"]) == (
            "rejected",
            "self_referral",
            "same email",
        )

    async def test_self_referral_same_phone(self, service, tenant_id):
        await self._advocate_ordered(service, tenant_id, phone_hash="ph" * 32)
        code = await service.issue_code(tenant_id, "adv")
        row = await self._attributed(
            service,
            tenant_id,
            "adv",
            "alias",
            service.placed(referral_code=code, phone_hash="ph" * 32),
        )
        assert (row["reason"], row["detail"]) == ("self_referral", "same phone")

    async def test_self_referral_same_shipping_address(self, service, tenant_id):
        await self._advocate_ordered(service, tenant_id, address_hash="ad" * 32)
        code = await service.issue_code(tenant_id, "adv")
        row = await self._attributed(
            service,
            tenant_id,
            "adv",
            "alias",
            service.placed(referral_code=code, address_hash="ad" * 32),
        )
        assert (row["reason"], row["detail"]) == ("self_referral", "same shipping address")

    async def test_existing_customer_by_platform_count(self, service, tenant_id):
        code = await service.issue_code(tenant_id, "adv")
        row = await self._attributed(
            service, tenant_id, "adv", "old", service.placed(referral_code=code, orders_count=4)
        )
        assert (row["state"], row["reason"]) == ("rejected", "existing_customer")

    async def test_existing_customer_by_an_earlier_order_seen(self, service, tenant_id):
        earlier = service.placed(at=service.clock.now() - timedelta(days=40), orders_count=None)
        await service.publish(earlier, tenant=tenant_id, subject="old")
        await service.wait_order_seen(tenant_id, earlier.order_id)
        code = await service.issue_code(tenant_id, "adv")
        row = await self._attributed(
            service, tenant_id, "adv", "old", service.placed(referral_code=code, orders_count=None)
        )
        assert (row["state"], row["reason"]) == ("rejected", "existing_customer")

    async def test_cap_on_conversions_per_advocate(self, service, tenant_id):
        # The test app's cap is 4 per 30 days; orders 2 h apart stay clear of velocity.
        code = await service.issue_code(tenant_id, "adv")
        start = service.clock.now()
        states = []
        for i in range(5):
            order = service.placed(referral_code=code, at=start + timedelta(hours=2 * i))
            row = await self._attributed(service, tenant_id, "adv", f"ref-{i}", order)
            states.append((row["state"], row["reason"]))
        assert states[:4] == [("pending", None)] * 4
        assert states[4] == ("rejected", "advocate_cap")
        m = (
            await service.client.get("/v1/metrics", headers=await service.headers(tenant_id))
        ).json()
        assert m["rejection_reasons"] == {"advocate_cap": 1}

    async def test_velocity_holds_for_review(self, service, tenant_id):
        code = await service.issue_code(tenant_id, "adv")
        start = service.clock.now()
        rows = []
        bootstrap = service.runtime.settings.kafka_bootstrap_servers
        async with TopicTap(bootstrap, REFERRALS) as tap:
            for i in range(4):
                order = service.placed(referral_code=code, at=start + timedelta(minutes=5 * i))
                rows.append(await self._attributed(service, tenant_id, "adv", f"ref-{i}", order))
            assert [r["state"] for r in rows] == ["pending"] * 3 + ["held"]
            held = rows[3]
            assert held["reason"] == "velocity_review"
            assert held["referee_reward_code"] is None  # waits for the review

            headers = await service.headers(tenant_id)
            r = await service.client.post(
                f"/v1/referrals/{rows[0]['id']}/review",
                json={"decision": "approve"},
                headers=headers,
            )
            assert r.status_code == 409
            r = await service.client.post(
                f"/v1/referrals/{held['id']}/review",
                json={"decision": "reject", "note": "code posted on a coupon site"},
                headers=headers,
            )
            assert r.status_code == 200, r.text
            assert (r.json()["state"], r.json()["reason"]) == ("rejected", "velocity_review")
            rejected = await tap.wait_for(of_tenant(tenant_id, "afterglow.referral.rejected.v1"))
        assert rejected[0].data.referral_id == held["id"]
        assert rejected[0].data.detail == "code posted on a coupon site"

    async def test_an_approved_hold_rewards_the_referee(self, service, tenant_id):
        code = await service.issue_code(tenant_id, "adv")
        start = service.clock.now()
        for i in range(4):
            order = service.placed(referral_code=code, at=start + timedelta(minutes=i))
            row = await self._attributed(service, tenant_id, "adv", f"ref-{i}", order)
        assert row["state"] == "held"
        r = await service.client.post(
            f"/v1/referrals/{row['id']}/review",
            json={"decision": "approve"},
            headers=await service.headers(tenant_id),
        )
        assert r.status_code == 200, r.text
        assert r.json()["state"] == "pending"
        assert r.json()["referee_reward_code"]

    async def test_held_referrals_are_listed_for_review_until_decided(self, service, tenant_id):
        code = await service.issue_code(tenant_id, "adv")
        start = service.clock.now()
        for i in range(4):
            order = service.placed(referral_code=code, at=start + timedelta(minutes=i))
            row = await self._attributed(service, tenant_id, "adv", f"ref-{i}", order)
        assert row["state"] == "held"
        headers = await service.headers(tenant_id)
        queue = await service.client.get("/v1/referrals", params={"state": "held"}, headers=headers)
        assert queue.status_code == 200, queue.text
        assert [r["id"] for r in queue.json()["referrals"]] == [row["id"]]
        elsewhere = await service.client.get(
            "/v1/referrals", headers=await service.headers(f"{tenant_id}-other")
        )
        assert elsewhere.json()["referrals"] == []
        r = await service.client.post(
            f"/v1/referrals/{row['id']}/review", json={"decision": "approve"}, headers=headers
        )
        assert r.status_code == 200, r.text
        after = await service.client.get("/v1/referrals", headers=headers)
        assert after.json()["referrals"] == []
        bad = await service.client.get("/v1/referrals", params={"state": "x"}, headers=headers)
        assert bad.status_code == 422


class TestErasure:
    async def test_erasure_wipes_hashes_and_keeps_counts(self, service, tenant_id):
        fraud = TestFraud()
        await fraud._advocate_ordered(service, tenant_id, email="ada@example.com")
        earlier = service.placed(at=service.clock.now() - timedelta(days=3), orders_count=None)
        await service.publish(earlier, tenant=tenant_id, subject="old")
        await service.wait_order_seen(tenant_id, earlier.order_id)
        for customer in ("adv", "old"):
            await erase(service, tenant_id, customer)
        # Issued after the erasure applied: an erasure deactivates the advocate's code.
        code = await service.issue_code(tenant_id, "adv")

        # After erasure the advocate's email no longer links an alias to them (erasure
        # and the alias's order travel on different partitions, hence the retry) ...
        async def alias_row():
            order = service.placed(referral_code=code, email="ada@example.com")
            await service.publish(order, tenant=tenant_id, subject=f"alias-{order.order_id}")
            return await service.wait_referral(tenant_id, "adv", order.order_id)

        row = await eventually(alias_row, lambda r: r["reason"] != "self_referral")
        assert row["state"] == "pending"
        # ... while the erased customer's order still counts: "old" is not new.
        row = await fraud._attributed(
            service, tenant_id, "adv", "old", service.placed(referral_code=code, orders_count=None)
        )
        assert (row["state"], row["reason"]) == ("rejected", "existing_customer")

    async def _program(self, service, tenant, advocate, referees):
        """A code with one confirmed conversion (the first referee) and rejections."""
        code = await service.issue_code(tenant, advocate)
        first = service.placed(referral_code=code, amount=7000)
        await service.publish(first, tenant=tenant, subject=referees[0])
        await service.publish(service.fulfilled(first.order_id), tenant=tenant, subject=referees[0])
        await service.wait_referral(
            tenant, advocate, first.order_id, lambda r: r["confirm_due_at"] is not None
        )
        for referee in referees[1:]:
            order = service.placed(referral_code=code, orders_count=3)
            await service.publish(order, tenant=tenant, subject=referee)
            await service.wait_referral(tenant, advocate, order.order_id)
        service.clock.advance(timedelta(days=30, minutes=1))
        await service.wait_referral(
            tenant, advocate, first.order_id, lambda r: r["state"] == "confirmed"
        )
        return code

    async def _code_is_dead(self, service, tenant, code):
        headers = await service.headers(tenant)
        assert (await service.client.get(f"/v1/codes/{code}", headers=headers)).status_code == 404
        carrying = service.placed(referral_code=code)
        await service.publish(carrying, tenant=tenant, subject=new_id("c"))
        # The order is remembered and attributed in one transaction: seen means decided.
        await service.wait_order_seen(tenant, carrying.order_id)
        async with service.runtime.sessionmaker() as s:
            svc = deps_of(service.runtime).referrals
            assert await svc.referral_for_order(s, tenant, carrying.order_id) is None
        r = await service.client.post(
            "/v1/attributions",
            json={"order_id": carrying.order_id, "code": code},
            headers=headers,
        )
        assert (r.status_code, r.json()["error"]["field"]) == (404, "code")

    async def test_erasure_pseudonymizes_the_customer_and_retires_the_code(
        self, service, tenant_id
    ):
        code = await self._program(service, tenant_id, "adv", ["ref-1", "ref-2"])
        headers = await service.headers(tenant_id)
        before = (await service.client.get("/v1/metrics", headers=headers)).json()
        assert (before["conversions"], before["rejected"], before["invited"]) == (1, 1, 1)
        assert await service.rows_naming(tenant_id, "adv")  # the test can fail

        await erase(service, tenant_id, "adv")
        await erase(service, tenant_id, "ref-1")

        assert await service.rows_naming(tenant_id, "ref-2")  # only the requested go
        alias = pseudonym(tenant_id, "adv")
        assert len(await service.rows_naming(tenant_id, alias)) == 3  # code, two referrals
        after = (await service.client.get("/v1/metrics", headers=headers)).json()
        assert after == before
        r = await service.client.get("/v1/advocates/adv/referrals", headers=headers)
        assert r.status_code == 404
        await self._code_is_dead(service, tenant_id, code)

    async def test_a_tenant_erasure_pseudonymizes_every_customer(self, service, tenant_id):
        code = await self._program(service, tenant_id, "adv-a", ["ref-a", "ref-b"])
        other = await service.issue_code(tenant_id, "adv-b")
        headers = await service.headers(tenant_id)
        before = (await service.client.get("/v1/metrics", headers=headers)).json()

        await erase(service, tenant_id, "*", scope="tenant")
        for customer in ("adv-a", "ref-a", "adv-b"):
            assert await service.rows_naming(tenant_id, customer) == []
            alias = pseudonym(tenant_id, customer)
            assert await service.rows_naming(tenant_id, alias), customer
        after = (await service.client.get("/v1/metrics", headers=headers)).json()
        assert after == before
        await self._code_is_dead(service, tenant_id, code)
        await self._code_is_dead(service, tenant_id, other)


async def erase(service, tenant, customer, scope="customer"):
    """Request an erasure and wait until no orders/codes/referrals row names the
    customer (every customer of the tenant when the scope is the tenant)."""
    await service.publish(
        CustomerErasureRequested(requested_at=service.clock.now(), scope=scope),
        tenant=tenant,
        subject=customer,
    )

    async def named() -> list[str]:
        async with service.runtime.sessionmaker() as s:
            if scope == "tenant":
                return [
                    c
                    for c in await s.scalars(
                        select(Order.customer_id).where(Order.tenant_id == tenant)
                    )
                    if not is_pseudonym(c)
                ]
        return await service.rows_naming(tenant, customer)

    await eventually(named, lambda rows: rows == [])
