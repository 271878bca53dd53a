"""The referrals consumer applies a batch of records in one transaction, and still
applies each event once and in order: repeats in the batch and of earlier batches
change nothing, and a poison record in the middle goes alone to the DLQ."""

from __future__ import annotations

from afterglow.events import CloudEvent
from afterglow.events.testing import (
    TopicTap,
    poison_record,
    record_id,
    send_together,
    wait_dead_letter,
)

from ..referrals_support import new_id

CONSUMER = "referrals.events"


class TestReferralBatches:
    async def test_a_repeat_in_the_batch_and_of_an_applied_event_apply_once(
        self, service, tenant_id
    ):
        advocate = new_id("adv")
        code = await service.issue_code(tenant_id, advocate)
        first = await service.publish(
            service.placed(referral_code=code), tenant=tenant_id, subject=new_id("ref")
        )
        await service.wait_referral(tenant_id, advocate, first.data.order_id)
        referee = new_id("ref")
        second = CloudEvent.new(
            service.placed(referral_code=code),
            tenant_id=tenant_id,
            subject=referee,
            source="tests",
            time=service.clock.now(),
        )
        # The fulfilment comes after the repeats in the referee's partition: once it is
        # applied, so are they.
        marker = CloudEvent.new(
            service.fulfilled(second.data.order_id),
            tenant_id=tenant_id,
            subject=referee,
            source="tests",
        )
        await send_together(service.producer, second, second, first, marker)
        await service.wait_referral(
            tenant_id, advocate, second.data.order_id, lambda r: r["fulfilled_at"] is not None
        )
        rows = await service.referrals(tenant_id, advocate)
        assert sorted(r["order_id"] for r in rows) == sorted(
            [first.data.order_id, second.data.order_id]
        )

    async def test_a_poison_record_alone_reaches_the_dlq_and_the_rest_apply_in_order(
        self, service, tenant_id, stack
    ):
        advocate, referee = new_id("adv"), new_id("ref")
        code = await service.issue_code(tenant_id, advocate)

        def event(data):
            return CloudEvent.new(
                data, tenant_id=tenant_id, subject=referee, source="tests", time=service.clock.now()
            )

        placed = event(service.placed(referral_code=code))
        poison = poison_record(placed)
        # A full refund after the order: applied before it, it would find no referral
        # to reject and the referral would stay pending.
        refunded = event(service.refunded(placed.data.order_id))
        async with TopicTap(stack.kafka_bootstrap_servers, "afterglow.orders.dlq") as dlq:
            await send_together(service.producer, placed, poison, refunded)
            dead = await wait_dead_letter(dlq, record_id(poison), CONSUMER)
            row = await service.wait_referral(
                tenant_id, advocate, placed.data.order_id, lambda r: r["state"] == "rejected"
            )
        assert dict(dead.headers)["x-error-type"] == b"InvalidEventData"
        assert row["reason"] == "refunded"
