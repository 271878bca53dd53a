"""Hostile and odd input at the feedback pages and API: never a 500, never a forged
review, never an answer posted from another site."""

from __future__ import annotations

import re
from datetime import timedelta

import pytest
from sqlalchemy import select

from afterglow.events.testing import eventually
from afterglow.feedback import domain, service
from afterglow.feedback.app import create_app
from afterglow.feedback.models import Response, Review
from afterglow.feedback.settings import FeedbackSettings
from afterglow.kit.settings import MissingSecrets

from .test_reviews import FORM, seed_order

# The secret every installation shared before it became required.
OLD_PUBLIC_DEFAULT = "dev-only-feedback-secret-change-me"
EVIL = "https://evil.example"
CHECKED = re.compile(r'value="\d+"(?=[^>]*\bchecked\b)')


async def answers(fb, tenant):
    async with fb.runtime.sessionmaker() as s:
        rows = await s.execute(select(Response).where(Response.tenant_id == tenant))
        return list(rows.scalars())


async def reviews(fb, tenant):
    async with fb.runtime.sessionmaker() as s:
        rows = await s.execute(select(Review).where(Review.tenant_id == tenant))
        return list(rows.scalars())


class TestSurveyPage:
    async def test_unicode_digit_score_is_422_not_500(self, fb, tenant_id, at_start):
        _, path = await fb.survey_direct(tenant_id)
        for odd in ("%C2%B2", "%D9%A3", "1" * 5000, "11", "-1"):
            page = await fb.client.get(f"{path}?score={odd}")
            assert page.status_code == 422, odd
            # ... and the customer can still answer from it.
            assert page.text.count('type="radio" name="score"') == 11
            assert CHECKED.search(page.text) is None
        page = await fb.client.get(f"{path}?score=7")
        assert page.status_code == 200
        assert CHECKED.findall(page.text) == ['value="7"']

    async def test_control_characters_in_form_fields_are_dropped(self, fb, tenant_id, at_start):
        _, path = await fb.survey_direct(tenant_id)
        r = await fb.client.post(path, content="score=9&comment=fine%00%1b+thanks", headers=FORM)
        assert r.status_code == 200, r.text
        assert [(a.score, a.comment) for a in await answers(fb, tenant_id)] == [(9, "fine thanks")]

    async def test_cross_origin_form_post_refused(self, fb, tenant_id, at_start):
        _, path = await fb.survey_direct(tenant_id)
        for header in ({"Origin": EVIL}, {"Origin": "null"}, {"Referer": f"{EVIL}/page"}):
            r = await fb.client.post(path, content="score=0", headers={**FORM, **header})
            assert r.status_code == 403, header
            assert "another website" in r.text
        assert await answers(fb, tenant_id) == []
        page = await fb.client.get(path)
        assert page.headers["referrer-policy"] == "same-origin"
        r = await fb.client.post(
            path, content="score=10", headers={**FORM, "Origin": "http://testserver"}
        )
        assert r.status_code == 200
        assert [a.score for a in await answers(fb, tenant_id)] == [10]


class TestReviewPage:
    async def test_forged_default_secret_review_token_refused(self, fb, tenant_id, at_start):
        await seed_order(fb, tenant_id, "c-1", "o-1", ["MUG"])
        good, _ = service.review_token(fb.settings, tenant_id, "c-1", "o-1", fb.clock.now())
        # The genuine link opens (so the order is there and the forged one is refused for
        # its signature alone).
        await eventually(
            lambda: fb.client.get(f"/r/{good}"), lambda r: r.status_code == 200, timeout=20
        )
        assert fb.settings.feedback_token_secret != OLD_PUBLIC_DEFAULT
        forged = domain.sign(
            OLD_PUBLIC_DEFAULT, "r", [tenant_id, "c-1", "o-1"], fb.clock.now() + timedelta(days=1)
        )
        assert (await fb.client.get(f"/r/{forged}")).status_code == 404
        post = await fb.client.post(f"/r/{forged}", content="product=MUG&rating=1", headers=FORM)
        assert post.status_code == 404
        assert await reviews(fb, tenant_id) == []

    async def test_cross_origin_review_post_refused(self, fb, tenant_id, at_start):
        await seed_order(fb, tenant_id, "c-2", "o-2", ["MUG"])
        good, _ = service.review_token(fb.settings, tenant_id, "c-2", "o-2", fb.clock.now())
        await eventually(
            lambda: fb.client.get(f"/r/{good}"), lambda r: r.status_code == 200, timeout=20
        )
        r = await fb.client.post(
            f"/r/{good}", content="product=MUG&rating=1", headers={**FORM, "Origin": EVIL}
        )
        assert r.status_code == 403
        assert await reviews(fb, tenant_id) == []


class TestApi:
    async def test_nul_in_path_id_is_422(self, fb, tenant_id):
        h = await fb.key(tenant_id)
        for path, field in (
            ("/v1/reviews/a%00b", "review_id"),
            ("/v1/products/a%00b/reviews", "product"),
        ):
            r = await fb.client.get(path, headers=h)
            assert r.status_code == 422, r.text
            assert r.json()["error"]["field"] == field

    async def test_odd_body_values_are_422_naming_the_field(self, fb, tenant_id):
        h = await fb.key(tenant_id)
        base = {"external_id": "e-1", "customer_id": "c-1", "score": 9}
        for change, field in (
            ({"score": 2**63}, "score"),
            ({"customer_id": "c\x00"}, "customer_id"),
            ({"comment": "a\x00b"}, "comment"),
            ({"responded_at": "9999-12-31T00:00:00Z"}, "responded_at"),
        ):
            r = await fb.client.post("/v1/survey-responses", json={**base, **change}, headers=h)
            assert r.status_code == 422, (change, r.text)
            assert r.json()["error"]["field"] == field


class TestStartUp:
    async def test_service_refuses_to_start_without_token_secret(self, monkeypatch):
        monkeypatch.delenv("FEEDBACK_TOKEN_SECRET", raising=False)
        for settings, message in (
            (FeedbackSettings(), "FEEDBACK_TOKEN_SECRET is not set"),
            (FeedbackSettings(feedback_token_secret="short"), "FEEDBACK_TOKEN_SECRET is shorter"),
        ):
            app = create_app(settings)
            # Its OpenAPI document can still be read; it is the start that is refused.
            assert "/v1/reviews" in app.openapi()["paths"]
            with pytest.raises(MissingSecrets, match=message):
                async with app.router.lifespan_context(app):
                    pass
