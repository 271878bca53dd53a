"""The survey page as a browser uses it: GET the form, POST it form-encoded, no JS."""

from __future__ import annotations

import re
from datetime import timedelta

from sqlalchemy import select

from afterglow.feedback.models import Response


def form_action(html: str) -> str:
    match = re.search(r'<form method="post" action="([^"]+)"', html)
    assert match, html
    return match.group(1)


async def answers(fb, tenant):
    async with fb.runtime.sessionmaker() as s:
        rows = await s.execute(
            select(Response).where(Response.tenant_id == tenant).order_by(Response.id)
        )
        return list(rows.scalars())


class TestSurveyPage:
    async def test_browser_flow_get_then_post_form(self, fb, tenant_id, at_start):
        _, path = await fb.survey_direct(tenant_id)
        page = await fb.client.get(path)
        assert page.status_code == 200
        html = page.text
        assert '<html lang="en">' in html
        assert 'name="viewport"' in html
        assert html.count('type="radio" name="score"') == 11  # 0..10
        assert '<label for="comment">' in html
        action = form_action(html)
        assert action == path
        resp = await fb.client.post(
            action,
            content="score=10&comment=Fast+delivery+%26+great+%3Cb%3Eservice%3C%2Fb%3E",
            headers={"content-type": "application/x-www-form-urlencoded"},
        )
        assert resp.status_code == 200, resp.text
        assert "Thank you" in resp.text
        rows = await answers(fb, tenant_id)
        assert [(r.score, r.comment, r.superseded) for r in rows] == [
            (10, "Fast delivery & great <b>service</b>", False)
        ]
        # Reopened, the page shows the answer, escaped.
        again = await fb.client.get(path)
        assert 'value="10" required\n             checked' in again.text or "checked" in again.text
        assert "&lt;b&gt;service&lt;/b&gt;" in again.text
        assert "<b>service</b>" not in again.text

    async def test_tenant_branding_and_csat_scale(self, fb, tenant_id):
        headers = await fb.key(tenant_id)
        r = await fb.client.put(
            "/v1/settings",
            json={"name": "Acme <Shop>", "brand_color": "#ff0066"},
            headers=headers,
        )
        assert r.status_code == 200
        _, path = await fb.survey_direct(tenant_id, kind="csat")
        html = (await fb.client.get(path)).text
        assert "Acme &lt;Shop&gt;" in html
        assert "--brand: #ff0066" in html
        assert html.count('type="radio" name="score"') == 5
        bad = await fb.client.put(
            "/v1/settings", json={"brand_color": "red;}body{x:y"}, headers=headers
        )
        assert bad.status_code == 422
        assert bad.json()["error"]["field"] == "brand_color"

    async def test_missing_or_out_of_range_score_re_renders_form(self, fb, tenant_id):
        _, path = await fb.survey_direct(tenant_id)
        for body in ("comment=hi", "score=11", "score=abc"):
            resp = await fb.client.post(
                path, content=body, headers={"content-type": "application/x-www-form-urlencoded"}
            )
            assert resp.status_code == 422
            assert "Please choose a score" in resp.text
        assert await answers(fb, tenant_id) == []

    async def test_get_with_score_preselects_but_stores_nothing(self, fb, tenant_id):
        _, path = await fb.survey_direct(tenant_id)
        html = (await fb.client.get(path + "?score=7")).text
        assert re.search(r'value="7" required\s+checked', html)
        assert await answers(fb, tenant_id) == []


class TestTokens:
    async def test_tampered_token_is_404(self, fb, tenant_id):
        _, path = await fb.survey_direct(tenant_id)
        token = path.removeprefix("/s/")
        payload, sig = token.split(".")
        flipped = sig[:-2] + ("A" if sig[-2] != "A" else "B") + sig[-1]
        for bad in (f"{payload}.{flipped}", "garbage", f"{payload}x.{sig}", ""):
            for method in ("GET", "POST"):
                resp = await fb.client.request(
                    method,
                    f"/s/{bad}",
                    content="score=9",
                    headers={"content-type": "application/x-www-form-urlencoded"},
                )
                assert resp.status_code == 404, (bad, method)
                if bad:
                    assert "could not find" in resp.text
        assert await answers(fb, tenant_id) == []

    async def test_token_signed_with_another_secret_is_404(self, fb, tenant_id):
        from afterglow.feedback import domain

        survey, _ = await fb.survey_direct(tenant_id)
        forged = domain.sign("not-the-secret", "s", [tenant_id, survey.id], survey.expires_at)
        assert (await fb.client.get(f"/s/{forged}")).status_code == 404

    async def test_expired_link_is_410_on_get_and_post(self, fb, tenant_id, at_start):
        _, path = await fb.survey_direct(tenant_id)
        fb.clock.advance(timedelta(days=14, seconds=1))
        assert (await fb.client.get(path)).status_code == 410
        resp = await fb.client.post(
            path, content="score=9", headers={"content-type": "application/x-www-form-urlencoded"}
        )
        assert resp.status_code == 410
        assert "expired" in resp.text
        assert await answers(fb, tenant_id) == []


class TestAnswerChanges:
    async def test_double_submit_stores_one_answer(self, fb, tenant_id, at_start):
        _, path = await fb.survey_direct(tenant_id)
        form = {"content-type": "application/x-www-form-urlencoded"}
        first = await fb.client.post(path, content="score=8&comment=ok", headers=form)
        second = await fb.client.post(path, content="score=8&comment=ok", headers=form)
        assert first.status_code == second.status_code == 200
        rows = await answers(fb, tenant_id)
        assert [(r.score, r.superseded) for r in rows] == [(8, False)]
        responded = lambda e: (  # noqa: E731
            e.tenantid == tenant_id and e.type == "afterglow.survey.responded.v1"
        )
        await fb.tap.wait_for(responded)
        assert len([e for e in await fb.tap.events(settle=0.5) if responded(e)]) == 1

    async def test_change_within_24h_then_locked(self, fb, tenant_id, at_start):
        survey, path = await fb.survey_direct(tenant_id)
        form = {"content-type": "application/x-www-form-urlencoded"}
        assert (await fb.client.post(path, content="score=3", headers=form)).status_code == 200
        fb.clock.advance(timedelta(hours=23, minutes=59))
        assert (await fb.client.post(path, content="score=6", headers=form)).status_code == 200
        rows = await answers(fb, tenant_id)
        assert [(r.score, r.superseded) for r in rows] == [(3, True), (6, False)]
        # The window runs from the FIRST answer: 24 h after it, the answer is final.
        fb.clock.advance(timedelta(minutes=2))
        locked = await fb.client.post(path, content="score=10", headers=form)
        assert locked.status_code == 409
        assert "already answered" in locked.text
        rows = await answers(fb, tenant_id)
        assert [(r.score, r.superseded) for r in rows] == [(3, True), (6, False)]
        events = await fb.tap.wait_for(
            lambda e: e.tenantid == tenant_id and e.type == "afterglow.survey.responded.v1",
            count=2,
        )
        assert [(e.data.score, e.data.band, e.data.is_update) for e in events] == [
            (3, "detractor", False),
            (6, "detractor", True),
        ]
        assert all(e.data.survey_id == survey.id for e in events)

    async def test_promoter_sees_referral_link_when_issued(self, fb, tenant_id, at_start):
        from datetime import UTC, datetime

        from afterglow.events import CloudEvent
        from afterglow.events.catalog import ReferralCodeIssued
        from afterglow.events.testing import eventually
        from afterglow.feedback import service

        url = "https://shop.example/r/ANNA10"
        await fb.publish(
            CloudEvent.new(
                ReferralCodeIssued(code="ANNA10", share_url=url, issued_at=datetime.now(UTC)),
                tenant_id=tenant_id,
                subject="anna",
                source="tests",
            )
        )

        async def link():
            async with fb.runtime.sessionmaker() as s:
                return await service.referral_link(s, tenant_id, "anna")

        await eventually(link, lambda v: v == url)
        _, path = await fb.survey_direct(tenant_id, customer="anna")
        form = {"content-type": "application/x-www-form-urlencoded"}
        detractor = await fb.client.post(path, content="score=5", headers=form)
        assert url not in detractor.text
        promoter = await fb.client.post(path, content="score=9", headers=form)
        assert url in promoter.text
