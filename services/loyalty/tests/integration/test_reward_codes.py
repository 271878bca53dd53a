"""A redemption's code in the shop: loyalty asks orders-ingest for it by event and
gives the points back when the shop could not create it."""

from __future__ import annotations

import uuid

from sqlalchemy import select

from afterglow.events.catalog import DiscountFailed
from afterglow.events.testing import eventually

from ..loyalty_support import Loyalty, new_id


class TestShopAnswers:
    async def test_a_code_the_shop_could_not_create_gives_its_points_back_once(
        self, loyalty: Loyalty, tenant_id
    ):
        c = new_id("c")
        h = await loyalty.key(tenant_id)
        r = await loyalty.client.post(
            f"/v1/accounts/{c}/adjustments", json={"points": 1_200, "reason": "t"}, headers=h
        )
        assert r.status_code == 201, r.text
        r = await loyalty.client.post(
            f"/v1/accounts/{c}/redemptions",
            json={"reward_id": "five-off"},
            headers={**h, "Idempotency-Key": "k1"},
        )
        assert r.status_code == 201, r.text
        assert (await loyalty.account(tenant_id, c))["available"] == 700
        failed = DiscountFailed(
            code=r.json()["code"],
            reference=r.json()["redemption_id"],
            reason="Shopify refused: Code is invalid",
            failed_at=loyalty.clock.now(),
        )
        # The same answer twice under two event ids (a re-sent record): one refund.
        ids = [str(uuid.uuid4()), str(uuid.uuid4())]
        for event_id in ids:
            await loyalty.publish(loyalty.event(failed, tenant_id, c, id=event_id))

        inbox = loyalty.runtime.tables.inbox

        async def applied() -> set[str]:
            async with loyalty.runtime.sessionmaker() as s:
                rows = await s.scalars(select(inbox.c.event_id).where(inbox.c.event_id.in_(ids)))
                return set(rows)

        await eventually(applied, lambda got: got == set(ids), timeout=60)
        account = await loyalty.account(tenant_id, c)
        assert account["available"] == 1_200
        assert await loyalty.consistent(tenant_id, c) == (1_200, 0)

    async def test_another_issuers_failed_code_changes_nothing(self, loyalty: Loyalty, tenant_id):
        c = new_id("c")
        h = await loyalty.key(tenant_id)
        r = await loyalty.client.post(
            f"/v1/accounts/{c}/adjustments", json={"points": 300, "reason": "t"}, headers=h
        )
        assert r.status_code == 201, r.text
        failed = DiscountFailed(
            code="RFAB12CD34", reference="a-referral-id", reason="x", failed_at=loyalty.clock.now()
        )
        event_id = str(uuid.uuid4())
        await loyalty.publish(loyalty.event(failed, tenant_id, c, id=event_id))
        inbox = loyalty.runtime.tables.inbox

        async def applied() -> bool:
            async with loyalty.runtime.sessionmaker() as s:
                found = await s.scalar(select(inbox.c.event_id).where(inbox.c.event_id == event_id))
                return found is not None

        await eventually(applied, timeout=60)
        assert (await loyalty.account(tenant_id, c))["available"] == 300
