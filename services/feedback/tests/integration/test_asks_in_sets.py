"""A run of survey requests, review requests and orders in one partition batch is
applied in sets (service.handle_asks, service.remember_orders) with exactly the outcome
of applying the events one by one, in order (handlers.ONE_BY_ONE: the per-event path).

The batch goes through the consumer runtime's own transaction (the inbox claim and the
group's registered batch handler), so "in one batch" is certain; the same scenario is
applied event by event in a second tenant, and both must end with the same surveys and
the same outbox events in the same order. The outcomes are also checked by hand."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select

from afterglow.events import CloudEvent, Money
from afterglow.events.batch import apply_in_one_transaction, each_in_order, inbox_claim
from afterglow.events.catalog import (
    CustomerInfo,
    LineItem,
    OrderPlaced,
    ReferralCodeIssued,
    ReviewRequested,
    SurveyRequested,
)
from afterglow.feedback import handlers, service
from afterglow.feedback.models import OrderItem, Survey

CONSUMER = "feedback.events"  # the consumer's own inbox


def scenario(fb: Any, tenant: str) -> list[CloudEvent[Any]]:
    """Surveys and review asks of three customers, a repeated survey request, review
    reminders (one for an order already reviewed), orders, and a referral link applied
    alone in the middle."""
    now = fb.clock.now()

    def ev(customer: str, data: Any) -> CloudEvent[Any]:
        return CloudEvent.new(data, tenant_id=tenant, subject=customer, source="tests")

    def survey(customer: str, request: str, **kw: Any) -> CloudEvent[Any]:
        return ev(customer, SurveyRequested(request_id=request, requested_at=now, **kw))

    def review(customer: str, request: str, order: str, reminder: bool = False) -> Any:
        data = ReviewRequested(
            request_id=request, order_id=order, requested_at=now, reminder=reminder
        )
        return ev(customer, data)

    item = LineItem(sku="MUG", quantity=1, unit_price=Money(amount=500, currency="EUR"))
    order = OrderPlaced(
        order_id="o-3",
        platform="api",
        placed_at=now,
        customer=CustomerInfo(email="c3@example.com"),
        total=Money(amount=1000, currency="EUR"),
        line_items=[item, item],
    )
    link = ReferralCodeIssued(
        code="ABC1234", share_url="https://s.example/r/ABC1234", issued_at=now
    )
    return [
        survey("c1", "s-1", order_id="o-1"),
        review("c1", "r-1", "o-1"),
        ev("c3", order),
        survey("c2", "s-2", kind="csat"),
        survey("c1", "s-1", order_id="o-1"),  # the same request again: one survey
        review("c2", "r-2", "o-2", reminder=True),  # c2 reviewed o-2 already: no message
        ev("c1", link),
        review("c1", "r-3", "o-1", reminder=True),  # o-1 not reviewed: reminded
        survey("c3", "s-3", order_id="o-3"),
        review("c3", "r-4", "o-3"),
    ]


async def prepared(fb: Any) -> str:
    """A tenant where c2 reviewed o-2 (through the API's use case) before the batch."""
    tenant = f"t-{uuid.uuid4().hex[:10]}"
    review = service.NewReview(
        customer_id="c2",
        rating=5,
        title="Good",
        body=None,
        sku=None,
        product_id=None,
        order_id="o-2",
        source="api",
        dedupe_key=None,
    )
    async with fb.runtime.sessionmaker.begin() as s:
        await service.submit_review(s, fb.runtime.outbox, tenant, review, fb.clock.now())
    return tenant


async def apply_batch(fb: Any, events: list[CloudEvent[Any]]) -> list[str]:
    table = handlers.CONSUMERS[0].handlers(fb.runtime)
    claim = inbox_claim(fb.runtime.tables.inbox)
    async with fb.runtime.sessionmaker.begin() as s:
        done = await apply_in_one_transaction(
            s, claim, CONSUMER, [(e, table[e.type]) for e in events]
        )
    return [e.id for e in done.applied]


async def apply_one_by_one(fb: Any, events: list[CloudEvent[Any]]) -> None:
    async with fb.runtime.sessionmaker.begin() as s:
        await each_in_order(
            s, events, lambda s, e: handlers.ONE_BY_ONE[type(e.data)](fb.runtime, s, e)
        )


async def surveys(fb: Any, tenant: str) -> list[tuple[Any, ...]]:
    async with fb.runtime.sessionmaker() as s:
        rows = await s.scalars(select(Survey).where(Survey.tenant_id == tenant))
        return sorted(
            (r.request_id, r.customer_id, r.kind, r.order_id, r.sent_at, r.expires_at) for r in rows
        )


async def outbox_events(fb: Any, tenant: str) -> list[tuple[Any, ...]]:
    """(type, subject, request id, message kind) of the tenant's outbox events, in order
    (survey ids and signed links are random: left out)."""
    out = fb.runtime.tables.outbox
    async with fb.runtime.sessionmaker() as s:
        rows = (
            await s.execute(select(out.c.event_type, out.c.headers, out.c.value).order_by(out.c.id))
        ).all()
    found = []
    for event_type, headers, value in rows:
        ce = dict(headers)
        if ce["ce_tenantid"] == tenant:
            data = json.loads(value)
            found.append((event_type, ce["ce_subject"], data.get("request_id"), data.get("kind")))
    return found


class TestAsksInSets:
    async def test_a_batch_of_asks_ends_as_applying_them_one_by_one(self, fb):
        in_sets, one_by_one = await prepared(fb), await prepared(fb)
        batch = scenario(fb, in_sets)

        assert await apply_batch(fb, batch) == [e.id for e in batch]
        await apply_one_by_one(fb, scenario(fb, one_by_one))

        got = await surveys(fb, in_sets)
        assert got == await surveys(fb, one_by_one)
        validity = timedelta(days=fb.settings.feedback_survey_validity_days)
        now = fb.clock.now()
        assert got == [
            ("s-1", "c1", "nps", "o-1", now, now + validity),
            ("s-2", "c2", "csat", None, now, now + validity),
            ("s-3", "c3", "nps", "o-3", now, now + validity),
        ]
        emitted = await outbox_events(fb, in_sets)
        assert emitted == await outbox_events(fb, one_by_one)
        message, sent = "afterglow.message.requested.v1", "afterglow.survey.sent.v1"
        assert [e for e in emitted if e[0] in (message, sent)] == [
            (message, "c1", "feedback:survey:s-1", "survey_invite"),
            (sent, "c1", "s-1", "nps"),
            (message, "c1", "feedback:review:r-1", "review_request"),
            (message, "c2", "feedback:survey:s-2", "survey_invite"),
            (sent, "c2", "s-2", "csat"),
            (message, "c1", "feedback:review:r-3", "review_reminder"),
            (message, "c3", "feedback:survey:s-3", "survey_invite"),
            (sent, "c3", "s-3", "nps"),
            (message, "c3", "feedback:review:r-4", "review_request"),
        ]
        async with fb.runtime.sessionmaker() as s:
            items = select(func.count()).where(OrderItem.tenant_id == in_sets)
            assert await s.scalar(items) == 2

    async def test_a_repeated_batch_changes_nothing(self, fb):
        tenant = await prepared(fb)
        batch = scenario(fb, tenant)
        await apply_batch(fb, batch)
        before = (await surveys(fb, tenant), await outbox_events(fb, tenant))
        assert await apply_batch(fb, batch) == []  # redelivered: the inbox skips it
        # The same survey requests and orders under new event ids: one survey per
        # request id, one order per order id, nothing sent again.
        again = [
            CloudEvent.new(e.data, tenant_id=tenant, subject=e.subject, source="tests")
            for e in batch
            if isinstance(e.data, SurveyRequested | OrderPlaced)
        ]
        assert len(await apply_batch(fb, again)) == len(again)
        after = (await surveys(fb, tenant), await outbox_events(fb, tenant))
        assert after == before
