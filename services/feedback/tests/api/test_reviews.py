"""Reviews: verification, moderation, events, the review page and product summaries."""

from __future__ import annotations

import re
import uuid
from datetime import UTC, datetime, timedelta

from afterglow.events import CloudEvent, Money
from afterglow.events.catalog import CustomerInfo, LineItem, OrderPlaced
from afterglow.events.testing import eventually
from afterglow.feedback import domain, service

FORM = {"content-type": "application/x-www-form-urlencoded"}


async def seed_order(fb, tenant, customer, order_id, skus):
    await fb.publish(
        CloudEvent.new(
            OrderPlaced(
                order_id=order_id,
                platform="api",
                placed_at=datetime.now(UTC),
                customer=CustomerInfo(),
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
    )

    async def items():
        async with fb.runtime.sessionmaker() as s:
            return await service.order_items(s, tenant, customer, order_id)

    await eventually(items, lambda v: v is not None and len(v) == len(skus))


def review(customer="c-1", **kw):
    body = {
        "customer_id": customer,
        "rating": 5,
        "title": "Lovely mug",
        "body": "Keeps the coffee warm for ages.",
        "sku": "MUG",
    }
    body.update(kw)
    return body


class TestReviewApi:
    async def test_verified_only_when_order_seen_for_that_customer(self, fb, tenant_id):
        h = await fb.key(tenant_id)
        await seed_order(fb, tenant_id, "c-1", "o-1", ["MUG"])
        own = await fb.client.post("/v1/reviews", json=review(order_id="o-1"), headers=h)
        other = await fb.client.post(
            "/v1/reviews", json=review(customer="c-2", order_id="o-1"), headers=h
        )
        unknown = await fb.client.post("/v1/reviews", json=review(order_id="o-404"), headers=h)
        none = await fb.client.post("/v1/reviews", json=review(), headers=h)
        assert [r.status_code for r in (own, other, unknown, none)] == [201] * 4
        assert [r.json()["verified"] for r in (own, other, unknown, none)] == [
            True,
            False,
            False,
            False,
        ]

    async def test_moderation_rules(self, fb, tenant_id):
        h = await fb.key(tenant_id)
        cases = {
            "clean": (review(), "published"),
            "link": (review(body="Great, buy cheaper at https://spam.example now"), "pending"),
            "caps": (review(title="BEST MUG EVER", body="I LOVE THIS MUG SO MUCH"), "pending"),
            "short": (review(title=None, body="ok"), "pending"),
            "profanity": (review(body="This shit broke after a week."), "rejected"),
            "two_signals": (review(title=None, body="GOOOOOOD www.x.com"), "rejected"),
            "rating_only": (review(title=None, body=None, rating=1), "published"),
        }
        for name, (body, expected) in cases.items():
            r = await fb.client.post("/v1/reviews", json=body, headers=h)
            assert r.status_code == 201, (name, r.text)
            assert r.json()["status"] == expected, (name, r.json())

    async def test_low_rating_is_published_like_any_other(self, fb, tenant_id):
        h = await fb.key(tenant_id)
        r = await fb.client.post(
            "/v1/reviews", json=review(rating=1, body="Cracked on arrival, sadly."), headers=h
        )
        assert r.json()["status"] == "published"

    async def test_manual_moderation_and_moderation_api_emit_events(self, fb, tenant_id):
        h = await fb.key(tenant_id)
        await fb.client.put("/v1/settings", json={"manual_moderation": True}, headers=h)
        r = await fb.client.post("/v1/reviews", json=review(rating=4), headers=h)
        assert r.json()["status"] == "pending"
        rid = r.json()["id"]
        queue = await fb.client.get("/v1/reviews", params={"status": "pending"}, headers=h)
        assert [x["id"] for x in queue.json()["reviews"]] == [rid]
        mine = lambda e: e.tenantid == tenant_id  # noqa: E731
        [submitted] = await fb.tap.wait_for(
            lambda e: mine(e) and e.type == "afterglow.review.submitted.v1"
        )
        assert (submitted.data.review_id, submitted.data.rating) == (rid, 4)
        m = await fb.client.patch(
            f"/v1/reviews/{rid}/moderation", json={"status": "published"}, headers=h
        )
        assert m.status_code == 200 and m.json()["status"] == "published"
        [published] = await fb.tap.wait_for(
            lambda e: mine(e) and e.type == "afterglow.review.published.v1"
        )
        assert published.data.review_id == rid
        # Re-publishing after a reject does not announce it twice.
        await fb.client.post(
            f"/v1/reviews/{rid}/moderation", json={"status": "rejected"}, headers=h
        )
        await fb.client.post(
            f"/v1/reviews/{rid}/moderation", json={"status": "published"}, headers=h
        )
        seen = [
            e
            for e in await fb.tap.events(settle=0.5)
            if mine(e) and e.type == "afterglow.review.published.v1"
        ]
        assert len(seen) == 1
        missing = await fb.client.post(
            "/v1/reviews/nope/moderation", json={"status": "published"}, headers=h
        )
        assert missing.status_code == 404

    async def test_bad_input_names_the_field(self, fb, tenant_id):
        h = await fb.key(tenant_id)
        r = await fb.client.post("/v1/reviews", json=review(rating=6), headers=h)
        assert r.status_code == 422 and r.json()["error"]["field"] == "rating"
        r = await fb.client.post("/v1/reviews", json=review(sku=None), headers=h)
        assert r.status_code == 422
        ro = await fb.key(tenant_id, ["feedback:read"])
        assert (await fb.client.post("/v1/reviews", json=review(), headers=ro)).status_code == 403
        assert (await fb.client.post("/v1/reviews", json=review())).status_code == 401

    async def test_product_summary_counts_published_only(self, fb, tenant_id):
        h = await fb.key(tenant_id)
        sku = f"SKU-{uuid.uuid4().hex[:6]}"
        for rating in (5, 5, 4, 1):
            await fb.client.post(
                "/v1/reviews",
                json=review(sku=sku, rating=rating, body=f"Review number {rating}"),
                headers=h,
            )
        await fb.client.post("/v1/reviews", json=review(sku=sku, body="shit product"), headers=h)
        r = await fb.client.get(f"/v1/products/{sku}/reviews", headers=h)
        body = r.json()
        assert body["count"] == 4
        assert body["average"] == 3.75
        assert body["distribution"] == {"1": 1, "2": 0, "3": 0, "4": 1, "5": 2}
        assert len(body["reviews"]) == 4
        empty = await fb.client.get("/v1/products/none/reviews", headers=h)
        assert empty.json()["average"] is None and empty.json()["count"] == 0
        # A review that names the product by its platform id only is found by that id.
        pid = f"gid-{uuid.uuid4().hex[:6]}"
        r = await fb.client.post(
            "/v1/reviews", json=review(sku=None, product_id=pid, rating=4), headers=h
        )
        assert r.status_code == 201, r.text
        by_id = (await fb.client.get(f"/v1/products/{pid}/reviews", headers=h)).json()
        assert (by_id["count"], by_id["average"], by_id["product"]) == (1, 4.0, pid)
        # Another tenant sees nothing of these.
        other = await fb.key(f"x{tenant_id}")
        assert (await fb.client.get(f"/v1/products/{sku}/reviews", headers=other)).json()[
            "count"
        ] == 0


class TestReviewPage:
    async def test_one_form_per_product_posted_as_a_browser_would(self, fb, tenant_id, at_start):
        h = await fb.key(tenant_id)
        await seed_order(fb, tenant_id, "c-1", "o-7", ["MUG", "TEA"])
        link = await fb.client.post(
            "/v1/review-links", json={"customer_id": "c-1", "order_id": "o-7"}, headers=h
        )
        assert link.status_code == 201
        path = link.json()["url"].removeprefix("http://testserver")
        page = await fb.client.get(path)
        assert page.status_code == 200
        assert page.text.count("<form") == 2
        assert "Product MUG" in page.text and "Product TEA" in page.text
        actions = re.findall(r'<form method="post" action="([^"]+)"', page.text)
        assert actions == [path, path]
        r = await fb.client.post(
            path,
            content="product=MUG&rating=4&title=Nice&body=A+very+nice+mug+indeed",
            headers=FORM,
        )
        assert r.status_code == 200
        assert r.text.count("<form") == 1  # MUG is done, TEA still open
        again = await fb.client.post(path, content="product=MUG&rating=1", headers=FORM)
        assert again.status_code == 200
        bad = await fb.client.post(path, content="product=TEA&rating=9", headers=FORM)
        assert bad.status_code == 422
        stored = await fb.client.get("/v1/reviews", params={"status": "published"}, headers=h)
        reviews = stored.json()["reviews"]
        assert [(x["sku"], x["rating"], x["verified"], x["source"]) for x in reviews] == [
            ("MUG", 4, True, "page")
        ]

    async def test_tampered_and_expired_review_links(self, fb, tenant_id, at_start):
        await seed_order(fb, tenant_id, "c-1", "o-8", ["MUG"])
        good, _ = service.review_token(fb.settings, tenant_id, "c-1", "o-8", fb.clock.now())
        # Signed for another customer's order: the order is not theirs -> 404.
        wrong, _ = service.review_token(fb.settings, tenant_id, "c-2", "o-8", fb.clock.now())
        forged = domain.sign(
            "other-secret", "r", [tenant_id, "c-1", "o-8"], fb.clock.now() + timedelta(days=1)
        )
        # A survey token is not a review token.
        survey, _ = await fb.survey_direct(tenant_id)
        cross = service.survey_token(fb.settings, survey)
        for token in (wrong, forged, cross, good[:-3] + "xyz"):
            assert (await fb.client.get(f"/r/{token}")).status_code == 404
            post = await fb.client.post(f"/r/{token}", content="product=MUG&rating=5", headers=FORM)
            assert post.status_code == 404
        assert (await fb.client.get(f"/r/{good}")).status_code == 200
        fb.clock.advance(timedelta(days=61))
        assert (await fb.client.get(f"/r/{good}")).status_code == 410
        post = await fb.client.post(f"/r/{good}", content="product=MUG&rating=5", headers=FORM)
        assert post.status_code == 410
        h = await fb.key(tenant_id)
        listed = await fb.client.get("/v1/reviews", params={"status": "published"}, headers=h)
        assert listed.json()["reviews"] == []
