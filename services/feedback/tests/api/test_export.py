"""GET /v1/customers/{id}/export: everything feedback holds about one customer of the
calling tenant, put in the way production puts it in (events on the broker, the survey
page, the REST API)."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import select

from afterglow.events import CloudEvent, EventData, Money
from afterglow.events.catalog import (
    CustomerErasureRequested,
    CustomerInfo,
    LineItem,
    OrderPlaced,
    ReferralCodeIssued,
    SurveyRequested,
)
from afterglow.events.testing import eventually
from afterglow.feedback import service
from afterglow.feedback.models import Survey, SurveyReminder

FORM = {"content-type": "application/x-www-form-urlencoded"}
TABLES = {
    "surveys",
    "survey_reminders",
    "responses",
    "orders",
    "order_items",
    "referral_links",
    "reviews",
}
PLACED = datetime(2026, 3, 1, 9, 30, tzinfo=UTC)
ISSUED = datetime(2026, 2, 20, 8, 0, tzinfo=UTC)
ELSEWHERE_EARLIER = timedelta(days=1)  # an answer collected elsewhere, before the survey


def iso(moment: datetime) -> str:
    return moment.isoformat()


@dataclass(frozen=True)
class Seeded:
    tenant: str
    customer: str
    at: datetime  # the service clock while seeding (it stands still in these tests)
    tag: str  # in every text the customer wrote, to spot it in someone else's export
    skus: tuple[str, ...]
    order_id: str
    request_id: str
    survey_id: str
    survey_token: str
    review_token: str
    review_id: str


def event(data: EventData, tenant: str, customer: str) -> CloudEvent[Any]:
    return CloudEvent.new(data, tenant_id=tenant, subject=customer, source="tests")


async def one(fb, model, *where):
    async with fb.runtime.sessionmaker() as s:
        return (await s.execute(select(model).where(*where))).scalar_one_or_none()


async def seed(fb, tenant: str, customer: str, tag: str, skus: list[str]) -> Seeded:
    """An order, a referral link, a survey with a reminder and a changed answer, an
    answer collected elsewhere, a verified review and a review link."""
    headers = await fb.key(tenant)
    at = fb.clock.now()
    order_id = f"o-{customer}"
    request_id = f"req-{uuid.uuid4().hex[:8]}"
    items = [
        LineItem(
            sku=sku,
            product_id=f"p-{sku}",
            title=f"Product {sku}",
            quantity=1,
            unit_price=Money(amount=500, currency="EUR"),
        )
        for sku in skus
    ]
    order = OrderPlaced(
        order_id=order_id,
        platform="api",
        placed_at=PLACED,
        customer=CustomerInfo(email=f"{customer}@example.com"),
        total=Money(amount=500 * len(skus), currency="EUR"),
        line_items=items,
    )
    code = f"{tag.upper()}10"
    link = ReferralCodeIssued(
        code=code, share_url=f"https://shop.example/r/{code}", issued_at=ISSUED
    )
    ask = SurveyRequested(request_id=request_id, order_id=order_id, requested_at=at)
    for data in (order, link, ask):
        await fb.publish(event(data, tenant, customer))
    survey = await eventually(
        lambda: one(fb, Survey, Survey.tenant_id == tenant, Survey.request_id == request_id),
        lambda s: s is not None,
    )
    reminder = SurveyRequested(
        request_id=f"{request_id}-r",
        reminder=True,
        reminder_of=request_id,
        requested_at=at,
    )
    await fb.publish(event(reminder, tenant, customer))
    await eventually(
        lambda: one(fb, SurveyReminder, SurveyReminder.survey_id == survey.id),
        lambda r: r is not None,
    )
    survey_token = service.survey_token(fb.settings, survey)
    for answer in ("score=9&comment=first+thought", f"score=10&comment={tag}+says+great"):
        r = await fb.client.post(f"/s/{survey_token}", content=answer, headers=FORM)
        assert r.status_code == 200, r.text
    elsewhere = {
        "external_id": f"ext-{tag}",
        "customer_id": customer,
        "kind": "csat",
        "score": 5,
        "comment": f"{tag} on the phone",
        "responded_at": iso(at - ELSEWHERE_EARLIER),
    }
    r = await fb.client.post("/v1/survey-responses", json=elsewhere, headers=headers)
    assert r.status_code == 201, r.text

    async def order_seen():
        async with fb.runtime.sessionmaker() as s:
            return await service.order_items(s, tenant, customer, order_id)

    await eventually(order_seen, lambda v: v is not None and len(v) == len(skus))
    review = {
        "customer_id": customer,
        "order_id": order_id,
        "sku": skus[0],
        "rating": 4,
        "title": f"{tag} likes it",
        "body": "Sturdy and keeps the tea warm.",
    }
    r = await fb.client.post("/v1/reviews", json=review, headers=headers)
    assert r.status_code == 201 and r.json()["verified"] is True, r.text
    review_id = r.json()["id"]
    r = await fb.client.post(
        "/v1/review-links", json={"customer_id": customer, "order_id": order_id}, headers=headers
    )
    assert r.status_code == 201, r.text
    review_token = r.json()["url"].rsplit("/r/", 1)[1]
    await eventually(  # the referral link travels on another topic
        lambda: service_link(fb, tenant, customer), lambda url: url is not None
    )
    return Seeded(
        tenant=tenant,
        customer=customer,
        at=at,
        tag=tag,
        skus=tuple(skus),
        order_id=order_id,
        request_id=request_id,
        survey_id=survey.id,
        survey_token=survey_token,
        review_token=review_token,
        review_id=review_id,
    )


async def service_link(fb, tenant: str, customer: str) -> str | None:
    async with fb.runtime.sessionmaker() as s:
        return await service.referral_link(s, tenant, customer)


async def export(fb, tenant: str, customer: str) -> dict[str, Any]:
    headers = await fb.key(tenant, ["customers:export"])
    r = await fb.client.get(f"/v1/customers/{customer}/export", headers=headers)
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["service"], body["tenant_id"], body["customer_id"]) == (
        "feedback",
        tenant,
        customer,
    )
    return body


def assert_all_of(seeded: Seeded, records: dict[str, list[dict[str, Any]]]) -> None:
    """The export holds exactly what ``seed`` put in for this customer, value by value."""
    t, c, at = seeded.tenant, seeded.customer, seeded.at
    assert records["surveys"] == [
        {
            "id": seeded.survey_id,
            "tenant_id": t,
            "customer_id": c,
            "request_id": seeded.request_id,
            "kind": "nps",
            "order_id": seeded.order_id,
            "ticket_id": None,
            "sent_at": iso(at),
            "expires_at": iso(at + timedelta(days=14)),
            "reminders_sent": 1,
            "first_answered_at": iso(at),
            "last_answered_at": iso(at),
        }
    ]
    assert records["survey_reminders"] == [
        {
            "tenant_id": t,
            "request_id": f"{seeded.request_id}-r",
            "survey_id": seeded.survey_id,
            "requested_at": iso(at),
        }
    ]
    responses = records["responses"]
    assert [
        (
            r["tenant_id"],
            r["customer_id"],
            r["survey_id"],
            r["kind"],
            r["score"],
            r["comment"],
            r["order_id"],
            r["source"],
            r["external_id"],
            r["responded_at"],
            r["superseded"],
        )
        for r in responses
    ] == [
        (
            t,
            c,
            None,
            "csat",
            5,
            f"{seeded.tag} on the phone",
            None,
            "api",
            f"ext-{seeded.tag}",
            iso(at - ELSEWHERE_EARLIER),
            False,
        ),
        (
            t,
            c,
            seeded.survey_id,
            "nps",
            9,
            "first thought",
            seeded.order_id,
            "page",
            None,
            iso(at),
            True,
        ),
        (
            t,
            c,
            seeded.survey_id,
            "nps",
            10,
            f"{seeded.tag} says great",
            seeded.order_id,
            "page",
            None,
            iso(at),
            False,
        ),
    ]
    assert all(isinstance(r["id"], int) for r in responses)
    assert records["orders"] == [
        {"tenant_id": t, "order_id": seeded.order_id, "customer_id": c, "placed_at": iso(PLACED)}
    ]
    code = f"{seeded.tag.upper()}10"
    assert records["referral_links"] == [
        {
            "tenant_id": t,
            "customer_id": c,
            "code": code,
            "share_url": f"https://shop.example/r/{code}",
            "issued_at": iso(ISSUED),
        }
    ]
    [review] = records["reviews"]
    assert review["created_at"] == review["moderated_at"] == review["published_at"] == iso(at)
    assert {k: v for k, v in review.items() if not k.endswith("_at")} == {
        "id": seeded.review_id,
        "tenant_id": t,
        "customer_id": c,
        "order_id": seeded.order_id,
        "sku": seeded.skus[0],
        "product_id": None,
        "rating": 4,
        "title": f"{seeded.tag} likes it",
        "body": "Sturdy and keeps the tea warm.",
        "status": "published",
        "moderation_reasons": None,
        "verified": True,
        "source": "api",
        "dedupe_key": None,
    }


class TestCustomerExport:
    async def test_every_table_holds_the_customers_rows_of_this_tenant_only(
        self, fb, tenant_id, at_start
    ):
        other_tenant = f"{tenant_id}-other"
        anna = await seed(fb, tenant_id, "anna", "anna", ["MUG", "CUP"])
        ben = await seed(fb, tenant_id, "ben", "ben", ["KETTLE"])
        # The same customer id and order id at another shop: a different person.
        elsewhere = await seed(fb, other_tenant, "anna", "annaelsewhere", ["TEA"])

        body = await export(fb, tenant_id, "anna")
        records = body["records"]
        assert set(records) == TABLES
        assert_all_of(anna, records)
        # Order lines come through the order, matched within the tenant: not TEA, the
        # other shop's line of its own order o-anna.
        assert records["order_items"] == [
            {
                "tenant_id": tenant_id,
                "order_id": "o-anna",
                "line_no": 0,
                "sku": "MUG",
                "product_id": "p-MUG",
                "title": "Product MUG",
            },
            {
                "tenant_id": tenant_id,
                "order_id": "o-anna",
                "line_no": 1,
                "sku": "CUP",
                "product_id": "p-CUP",
                "title": "Product CUP",
            },
        ]
        text = str(records)
        for other in (ben, elsewhere):
            for trace in (other.survey_id, other.request_id, other.review_id, other.tag):
                assert trace not in text, trace
        assert "KETTLE" not in text and "TEA" not in text
        assert "o-ben" not in text

        # The other shop's export of its own anna is hers alone, too.
        theirs = (await export(fb, other_tenant, "anna"))["records"]
        assert_all_of(elsewhere, theirs)
        assert [i["sku"] for i in theirs["order_items"]] == ["TEA"]

    async def test_no_link_tokens_or_key_material(self, fb, tenant_id, at_start):
        """Links are signed on demand and never stored, so no column is held back; the
        export must still carry no bearer credential and no platform table."""
        anna = await seed(fb, tenant_id, "anna", "anna", ["MUG"])
        body = await export(fb, tenant_id, "anna")
        records = body["records"]
        assert set(records) == TABLES  # not api_keys (key hashes), outbox or inbox
        text = str(body)
        assert anna.survey_token not in text
        assert anna.review_token not in text
        assert fb.settings.feedback_token_secret not in text
        for rows in records.values():
            for row in rows:
                assert not {k for k in row if "hash" in k or "secret" in k or "token" in k}

    async def test_unknown_customer_gets_every_table_empty(self, fb, tenant_id):
        body = await export(fb, tenant_id, "nobody")
        assert body["records"] == {name: [] for name in TABLES}

    async def test_export_needs_its_own_scope(self, fb, tenant_id):
        path = "/v1/customers/anna/export"
        reader = await fb.key(tenant_id, ["feedback:read", "feedback:write"])
        r = await fb.client.get(path, headers=reader)
        assert r.status_code == 403
        assert r.json() == {
            "error": {
                "code": "forbidden",
                "message": "the API key lacks the scope 'customers:export'",
            }
        }
        r = await fb.client.get(path)
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "unauthorized"
        everything = await fb.key(tenant_id, ["*"])
        assert (await fb.client.get(path, headers=everything)).status_code == 200

    async def test_erased_customer_has_nothing_left_to_export(self, fb, tenant_id, at_start):
        await seed(fb, tenant_id, "anna", "anna", ["MUG"])
        ben = await seed(fb, tenant_id, "ben", "ben", ["KETTLE"])
        erasure = CustomerErasureRequested(requested_at=datetime.now(UTC))
        await fb.publish(event(erasure, tenant_id, "anna"))

        async def annas():
            return (await export(fb, tenant_id, "anna"))["records"]

        await eventually(annas, lambda r: r == {name: [] for name in TABLES})
        # Her scores stay under "erased" for the metrics, but "erased" is no one: its
        # export does not hand them out.
        assert (await export(fb, tenant_id, service.ERASED))["records"] == {
            name: [] for name in TABLES
        }
        bens = (await export(fb, tenant_id, "ben"))["records"]
        assert_all_of(ben, bens)
        assert [i["sku"] for i in bens["order_items"]] == ["KETTLE"]
