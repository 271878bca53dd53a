"""Consumers and producers on the real broker: survey.requested in, message.requested
and survey.sent out; orders and erasure requests applied."""

from __future__ import annotations

import uuid
from datetime import UTC, datetime

from sqlalchemy import select

from afterglow.events import CloudEvent, Money
from afterglow.events.catalog import (
    CustomerErasureRequested,
    CustomerInfo,
    LineItem,
    OrderPlaced,
    ReviewRequested,
    SurveyRequested,
)
from afterglow.events.testing import eventually
from afterglow.feedback.models import Order, Response, Review, Survey

FORM = {"content-type": "application/x-www-form-urlencoded"}


def requested(tenant, customer, request_id, **kw):
    return CloudEvent.new(
        SurveyRequested(request_id=request_id, requested_at=datetime.now(UTC), **kw),
        tenant_id=tenant,
        subject=customer,
        source="tests",
    )


def order_placed(tenant, customer, order_id, skus):
    return CloudEvent.new(
        OrderPlaced(
            order_id=order_id,
            platform="api",
            placed_at=datetime.now(UTC),
            customer=CustomerInfo(email="a@example.com"),
            total=Money(amount=1000, currency="EUR"),
            line_items=[
                LineItem(
                    sku=s,
                    title=f"Product {s}",
                    quantity=1,
                    unit_price=Money(amount=500, currency="EUR"),
                )
                for s in skus
            ],
        ),
        tenant_id=tenant,
        subject=customer,
        source="tests",
    )


async def surveys_of(fb, tenant):
    async with fb.runtime.sessionmaker() as s:
        return list((await s.execute(select(Survey).where(Survey.tenant_id == tenant))).scalars())


class TestSurveyRequested:
    async def test_creates_survey_and_requests_the_message(self, fb, tenant_id):
        request_id = f"j-{uuid.uuid4().hex[:8]}"
        await fb.publish(requested(tenant_id, "cust-1", request_id, order_id="o-1"))
        # The same request again under a new event id (a retrying journey): no second survey.
        await fb.publish(requested(tenant_id, "cust-1", request_id, order_id="o-1"))
        mine = lambda e: e.tenantid == tenant_id  # noqa: E731
        [msg] = await fb.tap.wait_for(
            lambda e: mine(e) and e.type == "afterglow.message.requested.v1"
        )
        [sent] = await fb.tap.wait_for(lambda e: mine(e) and e.type == "afterglow.survey.sent.v1")
        assert msg.subject == sent.subject == "cust-1"
        assert msg.data.kind == "survey_invite"
        assert msg.data.category == "marketing"
        assert msg.data.request_id == f"feedback:survey:{request_id}"
        url = msg.data.variables["survey_url"]
        assert url.startswith("http://testserver/s/")
        assert sent.data.request_id == request_id
        assert sent.data.kind == "nps"
        assert (sent.data.expires_at - sent.data.sent_at).days == 14
        await eventually(lambda: surveys_of(fb, tenant_id), lambda v: len(v) == 1)
        # The link in the message opens the page, and answering emits survey.responded.
        path = url.removeprefix("http://testserver")
        assert (await fb.client.get(path)).status_code == 200
        assert (await fb.client.post(path, content="score=9", headers=FORM)).status_code == 200
        [answer] = await fb.tap.wait_for(
            lambda e: mine(e) and e.type == "afterglow.survey.responded.v1"
        )
        assert (answer.data.score, answer.data.band, answer.data.is_update) == (
            9,
            "promoter",
            False,
        )
        assert answer.data.survey_id == sent.data.survey_id
        assert answer.data.request_id == request_id
        assert answer.data.order_id == "o-1"
        extra = [e for e in await fb.tap.events(settle=0.5) if mine(e)]
        assert len([e for e in extra if e.type == "afterglow.message.requested.v1"]) == 1

    async def test_reminder_resends_same_link_until_answered(self, fb, tenant_id):
        first = f"j-{uuid.uuid4().hex[:8]}"
        await fb.publish(requested(tenant_id, "c", first, kind="csat"))
        mine = lambda e: e.tenantid == tenant_id  # noqa: E731
        [invite] = await fb.tap.wait_for(
            lambda e: mine(e) and e.type == "afterglow.message.requested.v1"
        )
        await fb.publish(requested(tenant_id, "c", first + "-r", reminder=True, reminder_of=first))
        [reminder] = await fb.tap.wait_for(
            lambda e: (
                mine(e)
                and e.type == "afterglow.message.requested.v1"
                and e.data.kind == "survey_reminder"
            )
        )
        assert reminder.data.variables["survey_url"] == invite.data.variables["survey_url"]
        assert reminder.data.request_id == f"feedback:survey:{first}-r"
        [sent] = await fb.tap.wait_for(
            lambda e: mine(e) and e.type == "afterglow.survey.sent.v1" and e.data.reminder
        )
        assert sent.data.kind == "csat"
        assert len(await surveys_of(fb, tenant_id)) == 1


class TestOrdersAndErasure:
    async def test_erasure_wipes_text_but_keeps_scores(self, fb, tenant_id, at_start):
        headers = await fb.key(tenant_id)
        await fb.publish(order_placed(tenant_id, "eve", "o-9", ["SKU-1"]))

        async def orders():
            async with fb.runtime.sessionmaker() as s:
                return (await s.execute(select(Order).where(Order.tenant_id == tenant_id))).all()

        await eventually(orders, lambda v: len(v) == 1)
        _, path = await fb.survey_direct(tenant_id, customer="eve")
        await fb.client.post(path, content="score=4&comment=my+name+is+Eve", headers=FORM)
        r = await fb.client.post(
            "/v1/reviews",
            json={
                "customer_id": "eve",
                "rating": 2,
                "title": "Not great at all",
                "body": "Arrived late and scratched.",
                "sku": "SKU-1",
                "order_id": "o-9",
            },
            headers=headers,
        )
        assert r.status_code == 201 and r.json()["verified"] is True
        await fb.publish(
            CloudEvent.new(
                CustomerErasureRequested(requested_at=datetime.now(UTC)),
                tenant_id=tenant_id,
                subject="eve",
                source="tests",
            )
        )

        async def state():
            async with fb.runtime.sessionmaker() as s:
                resp = (
                    await s.execute(select(Response).where(Response.tenant_id == tenant_id))
                ).scalar_one()
                rev = (
                    await s.execute(select(Review).where(Review.tenant_id == tenant_id))
                ).scalar_one()
                return resp, rev

        resp, rev = await eventually(state, lambda v: v[0].customer_id == "erased")
        assert (resp.score, resp.comment) == (4, None)
        assert (rev.rating, rev.title, rev.body, rev.customer_id) == (2, None, None, "erased")
        # Aggregates still count the erased answer.
        m = await fb.client.get(
            "/v1/metrics/nps",
            params={
                "from": "2026-03-01T00:00:00Z",
                "to": "2026-03-03T00:00:00Z",
                "interval": "day",
            },
            headers=headers,
        )
        assert m.json()["total"]["detractors"] == 1


class TestReviewRequested:
    async def test_requests_the_review_message_with_a_link_to_the_order_review_page(
        self, fb, tenant_id
    ):
        await fb.publish(order_placed(tenant_id, "cust-r", "o-r1", ["MUG", "CUP"]))
        request_id = f"j-{uuid.uuid4().hex[:8]}"
        ask = CloudEvent.new(
            ReviewRequested(request_id=request_id, order_id="o-r1", requested_at=datetime.now(UTC)),
            tenant_id=tenant_id,
            subject="cust-r",
            source="tests",
        )
        await fb.publish(ask)
        await fb.publish(ask)  # a redelivery asks once
        mine = lambda e: e.tenantid == tenant_id  # noqa: E731
        [msg] = await fb.tap.wait_for(
            lambda e: mine(e) and e.type == "afterglow.message.requested.v1"
        )
        assert msg.subject == "cust-r"
        assert msg.data.kind == "review_request"
        assert msg.data.request_id == f"feedback:review:{request_id}"
        path = msg.data.variables["review_url"].removeprefix("http://testserver")
        await eventually(lambda: fb.client.get(path), lambda r: r.status_code == 200)
        page = (await fb.client.get(path)).text
        assert "MUG" in page or "Product MUG" in page
        extra = [e for e in await fb.tap.events(settle=0.5) if mine(e)]
        assert len([e for e in extra if e.type == "afterglow.message.requested.v1"]) == 1

    async def test_one_reminder_unless_the_order_was_reviewed(self, fb, tenant_id):
        mine = lambda e: e.tenantid == tenant_id  # noqa: E731

        def reminder(customer: str, order_id: str) -> CloudEvent:
            return CloudEvent.new(
                ReviewRequested(
                    request_id=f"j-{uuid.uuid4().hex[:8]}",
                    order_id=order_id,
                    requested_at=datetime.now(UTC),
                    reminder=True,
                ),
                tenant_id=tenant_id,
                subject=customer,
                source="tests",
            )

        # Someone who has not reviewed the order gets the reminder ...
        await fb.publish(order_placed(tenant_id, "cust-quiet", "o-q1", ["MUG"]))
        await fb.publish(reminder("cust-quiet", "o-q1"))
        [msg] = await fb.tap.wait_for(
            lambda e: mine(e) and e.type == "afterglow.message.requested.v1"
        )
        assert (msg.subject, msg.data.kind) == ("cust-quiet", "review_reminder")
        # ... someone who has, does not.
        await fb.publish(order_placed(tenant_id, "cust-done", "o-d1", ["MUG"]))
        h = await fb.key(tenant_id)
        r = await fb.client.post(
            "/v1/reviews",
            json={"customer_id": "cust-done", "order_id": "o-d1", "sku": "MUG", "rating": 2},
            headers=h,
        )
        assert r.status_code == 201, r.text
        await fb.publish(reminder("cust-done", "o-d1"))
        # A marker behind it on the same key (so the same partition, consumed in order):
        # a reminder for another order of theirs, not reviewed.
        await fb.publish(order_placed(tenant_id, "cust-done", "o-d2", ["CUP"]))
        await fb.publish(reminder("cust-done", "o-d2"))
        await fb.tap.wait_for(
            lambda e: (
                mine(e) and e.subject == "cust-done" and e.type == "afterglow.message.requested.v1"
            )
        )
        asked = [
            e.data.order_id
            for e in await fb.tap.events(settle=0.5)
            if mine(e) and e.subject == "cust-done" and e.type == "afterglow.message.requested.v1"
        ]
        assert asked == ["o-d2"]
