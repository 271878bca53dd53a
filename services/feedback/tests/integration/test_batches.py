"""The feedback consumer applies a batch as sets (surveys and orders with one statement
per table), and still applies each event once and in order: repeats in the batch and of
earlier batches change nothing, and a poison record in the middle goes alone to the DLQ."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import func, select

from afterglow.events import CloudEvent, Money
from afterglow.events.catalog import CustomerInfo, LineItem, OrderPlaced, SurveyRequested
from afterglow.events.testing import (
    TopicTap,
    eventually,
    poison_record,
    record_id,
    send_together,
    wait_dead_letter,
)
from afterglow.feedback.models import OrderItem, Survey

CONSUMER = "feedback.events"


def requested(tenant: str, customer: str, request_id: str, **kw) -> CloudEvent:
    return CloudEvent.new(
        SurveyRequested(request_id=request_id, requested_at=datetime.now(UTC), **kw),
        tenant_id=tenant,
        subject=customer,
        source="tests",
    )


def placed(tenant: str, customer: str, order_id: str) -> CloudEvent:
    item = LineItem(sku="MUG", quantity=1, unit_price=Money(amount=500, currency="EUR"))
    return CloudEvent.new(
        OrderPlaced(
            order_id=order_id,
            platform="api",
            placed_at=datetime.now(UTC),
            customer=CustomerInfo(email="a@example.com"),
            total=Money(amount=1000, currency="EUR"),
            line_items=[item, item],
        ),
        tenant_id=tenant,
        subject=customer,
        source="tests",
    )


async def count(fb, stmt) -> int:
    async with fb.runtime.sessionmaker() as s:
        return int(await s.scalar(stmt) or 0)


class TestFeedbackBatches:
    async def test_a_repeat_in_the_batch_and_of_an_applied_event_apply_once(self, fb, tenant_id):
        c = f"c-{uuid.uuid4().hex[:6]}"
        first = requested(tenant_id, c, "r-1")
        await fb.publish(first)
        surveys = select(func.count()).where(Survey.tenant_id == tenant_id)
        await eventually(lambda: count(fb, surveys), lambda n: n == 1)
        second, order = requested(tenant_id, c, "r-2"), placed(tenant_id, c, "o-1")
        last = requested(tenant_id, c, "r-3")  # same partition: the marker that all came
        await send_together(fb.producer, second, order, second, first, order, last)
        await eventually(lambda: count(fb, surveys), lambda n: n >= 3)
        invites = await fb.tap.wait_for(
            lambda e: e.tenantid == tenant_id and e.type == "afterglow.message.requested.v1",
            count=3,
        )
        everything = [e for e in await fb.tap.events(settle=1.0) if e.tenantid == tenant_id]
        assert await count(fb, surveys) == 3
        items = select(func.count()).where(OrderItem.tenant_id == tenant_id)
        assert await count(fb, items) == 2
        asked = sorted(
            e.data.request_id for e in everything if e.type == "afterglow.message.requested.v1"
        )
        assert asked == [f"feedback:survey:r-{i}" for i in (1, 2, 3)]
        assert {e.data.kind for e in invites} == {"survey_invite"}

    async def test_a_poison_record_alone_reaches_the_dlq_and_the_rest_apply_in_order(
        self, fb, tenant_id, stack
    ):
        c = f"c-{uuid.uuid4().hex[:6]}"
        first = requested(tenant_id, c, "r-p")
        poison = poison_record(first)
        # A reminder of the survey the same batch creates: applied before it, it would
        # have been a first request (an invite), not a reminder.
        reminder = requested(tenant_id, c, "r-p-again", reminder=True, reminder_of="r-p")
        async with TopicTap(stack.kafka_bootstrap_servers, "afterglow.surveys.dlq") as dlq:
            await send_together(fb.producer, first, poison, reminder)
            dead = await wait_dead_letter(dlq, record_id(poison), CONSUMER)
            sent = await fb.tap.wait_for(
                lambda e: e.tenantid == tenant_id and e.type == "afterglow.message.requested.v1",
                count=2,
            )
        assert dict(dead.headers)["x-error-type"] == b"InvalidEventData"
        assert sorted(e.data.kind for e in sent) == ["survey_invite", "survey_reminder"]
        surveys = select(func.count()).where(Survey.tenant_id == tenant_id)
        assert await count(fb, surveys) == 1
