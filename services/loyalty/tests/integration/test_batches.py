"""The ledger consumer applies a batch of records as a set, and still applies each event
once and in order: repeats in the batch and of earlier batches change nothing, and a
poison record in the middle goes alone to the DLQ."""

from __future__ import annotations

from afterglow.events.catalog import Money, OrderRefunded
from afterglow.events.testing import (
    TopicTap,
    poison_record,
    record_id,
    send_together,
    wait_dead_letter,
)

from ..loyalty_support import Loyalty, new_id

CONSUMER = "loyalty.ledger"


class TestLedgerBatches:
    async def test_a_repeat_in_the_batch_and_of_an_applied_event_apply_once(
        self, loyalty: Loyalty, tenant_id
    ):
        c = new_id("c")
        # 5 points per unit, no first-order bonus (not a first order).
        first = loyalty.event(loyalty.order("o-1", 10_000, customer_orders_count=3), tenant_id, c)
        await loyalty.publish(first)
        await loyalty.wait_account(tenant_id, c, lambda a: a["pending"] == 500)
        second = loyalty.event(loyalty.order("o-2", 20_000, customer_orders_count=3), tenant_id, c)
        # Same key, so one partition, in this order; the last is the marker that the
        # records before it were consumed.
        last = loyalty.event(loyalty.order("o-3", 2_000, customer_orders_count=3), tenant_id, c)
        await send_together(loyalty.producer, second, second, first, last)
        acc = await loyalty.wait_account(tenant_id, c, lambda a: a["pending"] >= 1_600)
        assert acc["pending"] == 500 + 1_000 + 100
        assert await loyalty.consistent(tenant_id, c) == (0, 1_600)

    async def test_a_poison_record_alone_reaches_the_dlq_and_the_rest_apply_in_order(
        self, loyalty: Loyalty, tenant_id, stack
    ):
        c = new_id("c")
        placed = loyalty.event(loyalty.order("o-p", 10_000, customer_orders_count=3), tenant_id, c)
        poison = poison_record(placed)
        refund = OrderRefunded(
            order_id="o-p",
            refund_id=new_id("rf"),
            refunded_at=loyalty.clock.now(),
            amount=Money(amount=10_000, currency="USD"),
            full=True,
        )
        after = loyalty.event(loyalty.order("o-q", 2_000, customer_orders_count=3), tenant_id, c)
        async with TopicTap(stack.kafka_bootstrap_servers, "afterglow.orders.dlq") as dlq:
            await send_together(
                loyalty.producer, placed, poison, loyalty.event(refund, tenant_id, c), after
            )
            dead = await wait_dead_letter(dlq, record_id(poison), CONSUMER)
            # Placed, then refunded (500 earned, 500 taken back), then o-q's 100: the
            # refund applied before the order would have found nothing to take back.
            acc = await loyalty.wait_account(tenant_id, c, lambda a: a["pending"] == 100)
        assert dict(dead.headers)["x-error-type"] == b"InvalidEventData"
        assert await loyalty.consistent(tenant_id, c) == (0, 100)
        assert acc["available"] == 0
