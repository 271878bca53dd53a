"""The console's pages over HTTP, against every service running on the real stack."""

from __future__ import annotations

import httpx
import pytest

from ..console_support import (
    HELD_REVIEW,
    PERIOD,
    Tenant,
    csrf_of,
    figure,
    signed_in,
)

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]


class TestSignIn:
    async def test_pages_send_a_stranger_to_sign_in(self, shop: Tenant):
        async with httpx.AsyncClient(base_url=shop.urls["console"]) as c:
            for path in (
                "/dashboard",
                "/customers",
                "/reviews",
                f"/customers/{shop.customer('a')}",
            ):
                r = await c.get(path)
                assert (r.status_code, r.headers["location"]) == (303, "/sign-in"), path

    async def test_the_session_cookie_is_httponly_lax_and_expiring(self, shop: Tenant):
        async with httpx.AsyncClient(base_url=shop.urls["console"]) as c:
            page = await c.get("/sign-in")
            r = await c.post(
                "/sign-in", data={"csrf": csrf_of(page.text), "api_key": shop.keys["writer"]}
            )
            assert r.status_code == 303, r.text
            cookie = next(
                v
                for k, v in r.headers.multi_items()
                if k == "set-cookie" and v.startswith("afterglow_console=")
            )
            attrs = {a.strip().split("=")[0].lower() for a in cookie.split(";")}
            assert {"httponly", "max-age", "path"} <= attrs
            assert "samesite=lax" in cookie.lower()
            # Served over plain http (dev): a Secure cookie would never come back.
            assert "secure" not in attrs

    @pytest.mark.parametrize("key", ["agk_nothing_here", "no_console"])
    async def test_a_bad_key_or_one_without_console_scope_is_refused(self, shop: Tenant, key):
        presented = shop.keys.get(key, key)
        async with httpx.AsyncClient(base_url=shop.urls["console"]) as c:
            page = await c.get("/sign-in")
            r = await c.post("/sign-in", data={"csrf": csrf_of(page.text), "api_key": presented})
            assert r.status_code == 401
            assert "console:read" in r.text
            assert "afterglow_console=" not in r.headers.get("set-cookie", "")

    async def test_sign_in_without_the_form_token_is_refused(self, shop: Tenant):
        async with httpx.AsyncClient(base_url=shop.urls["console"]) as c:
            r = await c.post("/sign-in", data={"api_key": shop.keys["writer"]})
            assert r.status_code == 403

    async def test_sign_out_ends_the_session_for_good(self, shop: Tenant):
        async with signed_in(shop.urls["console"], shop.keys["reader"]) as c:
            page = await c.get("/customers")
            assert page.status_code == 200
            stolen = c.cookies["afterglow_console"]
            r = await c.post("/sign-out", data={"csrf": csrf_of(page.text)})
            assert (r.status_code, r.headers["location"]) == (303, "/sign-in")
        # The cookie's value, replayed after sign-out, opens nothing.
        async with httpx.AsyncClient(
            base_url=shop.urls["console"], cookies={"afterglow_console": stolen}
        ) as replay:
            assert (await replay.get("/dashboard")).status_code == 303


class TestDashboard:
    async def test_it_shows_the_seeded_figures_with_charts_and_tables(self, shop: Tenant):
        async with signed_in(shop.urls["console"], shop.keys["reader"]) as c:
            r = await c.get("/dashboard", params=PERIOD)
        assert r.status_code == 200, r.text
        html = r.text
        assert figure(html, "orders") == "7"
        assert figure(html, "customers") == "4"
        assert figure(html, "new_customers") == "3"
        assert figure(html, "repeat_purchase_rate") == "75.0%"
        assert figure(html, "revenue") == "530.00"
        assert figure(html, "nps") == "33.3"
        # Each chart is an accessible SVG with its numbers in a table.
        # orders, cohorts, CLV, NPS, CSAT, reviews, rating, points; no journey started in
        # the period (the book is older than the journeys), no referral was rejected.
        assert html.count('<svg class="chart"') == 8
        assert "<caption>Orders per day</caption>" in html
        assert '<th scope="row">2026-01</th><td class="n">2</td>' in html  # January: A and B
        assert "185.00" in html  # January's revenue per customer over three months

    async def test_a_reversed_period_is_shown_in_order(self, shop: Tenant):
        async with signed_in(shop.urls["console"], shop.keys["reader"]) as c:
            r = await c.get("/dashboard", params={"from": PERIOD["to"], "to": PERIOD["from"]})
        assert r.status_code == 200
        assert figure(r.text, "orders") == "7"


class TestCustomers:
    async def test_the_timeline_gathers_every_service(self, shop: Tenant):
        async with signed_in(shop.urls["console"], shop.keys["reader"]) as c:
            found = await c.get("/customers", params={"q": shop.customer("a")})
            assert found.status_code == 303
            r = await c.get(found.headers["location"])
        assert r.status_code == 200, r.text
        assert HELD_REVIEW["title"] in r.text
        for order in ("o-a1", "o-a2", "o-a3"):
            assert order in r.text

    async def test_another_tenants_customer_is_not_found(self, shop: Tenant, other_shop: Tenant):
        async with signed_in(shop.urls["console"], shop.keys["reader"]) as c:
            r = await c.get(f"/customers/{other_shop.customer('a')}")
        assert r.status_code == 404
        assert HELD_REVIEW["title"] not in r.text


class TestReviewQueue:
    async def test_a_read_only_key_sees_the_queue_and_changes_nothing(self, shop: Tenant, http):
        async with signed_in(shop.urls["console"], shop.keys["reader"]) as c:
            page = await c.get("/reviews")
            assert HELD_REVIEW["title"] in page.text
            assert 'value="published"' not in page.text
            r = await c.post(
                f"/reviews/{shop.review_id}/moderation",
                data={"csrf": csrf_of(page.text), "decision": "published"},
            )
        assert r.status_code == 403
        review = await http.get(
            f"{shop.urls['feedback']}/v1/reviews/{shop.review_id}", headers=shop.auth()
        )
        assert review.json()["status"] == "pending"

    async def test_a_post_without_this_sessions_token_is_refused(self, shop: Tenant, http):
        async with signed_in(shop.urls["console"], shop.keys["writer"]) as c:
            r = await c.post(
                f"/reviews/{shop.review_id}/moderation",
                data={"csrf": "forged", "decision": "published"},
            )
            assert r.status_code == 403
            page = await c.get("/reviews")
            r = await c.post(
                f"/reviews/{shop.review_id}/moderation",
                data={"csrf": csrf_of(page.text), "decision": "published"},
                headers={"Origin": "https://evil.example"},
            )
            assert r.status_code == 403
        review = await http.get(
            f"{shop.urls['feedback']}/v1/reviews/{shop.review_id}", headers=shop.auth()
        )
        assert review.json()["status"] == "pending"

    async def test_another_tenants_review_cannot_be_approved(
        self, shop: Tenant, other_shop: Tenant, http
    ):
        async with signed_in(shop.urls["console"], shop.keys["writer"]) as c:
            page = await c.get("/reviews")
            r = await c.post(
                f"/reviews/{other_shop.review_id}/moderation",
                data={"csrf": csrf_of(page.text), "decision": "published"},
            )
        assert r.status_code == 404
        review = await http.get(
            f"{other_shop.urls['feedback']}/v1/reviews/{other_shop.review_id}",
            headers=other_shop.auth(),
        )
        assert review.json()["status"] == "pending"


BROKEN = """name: default
trigger:
  events: [order.placed]
stages:
  - name: onboarding
    actions:
      - type: message
        kind: welcome
        category: transactional
  - name: check_in
    wait: three days please
    actions:
      - type: message
        kind: check_in
"""


class TestJourneys:
    async def test_a_broken_definition_is_shown_at_its_line_then_fixed_simulated_activated(
        self, shop: Tenant
    ):
        async with signed_in(shop.urls["console"], shop.keys["writer"]) as c:
            listing = await c.get("/journeys")
            assert listing.status_code == 200 and "/journeys/default" in listing.text
            page = await c.get("/journeys/default")
            assert page.status_code == 200 and "onboarding" in page.text
            token = csrf_of(page.text)
            bad = await c.post("/journeys/default", data={"csrf": token, "definition": BROKEN})
            assert bad.status_code == 422
            assert "Line 11:" in bad.text  # the wait of the second stage
            assert "three days please" in bad.text  # the text is kept for fixing
            fixed = BROKEN.replace("three days please", "P3D after order.delivered")
            saved = await c.post("/journeys/default", data={"csrf": token, "definition": fixed})
            assert saved.status_code == 303, saved.text
            version = saved.headers["location"].rsplit("=", 1)[1]
            sim = await c.post(
                "/journeys/default/simulate", data={"csrf": token, "version": version}
            )
            assert sim.status_code == 200
            assert "Simulated path" in sim.text and "welcome" in sim.text
            act = await c.post(
                "/journeys/default/activate", data={"csrf": token, "version": version}
            )
            assert act.status_code == 303
            after = await c.get("/journeys")
            assert f"v{version}</a> (active)" in after.text

    async def test_a_read_only_key_has_no_editor_and_cannot_save(self, shop: Tenant):
        async with signed_in(shop.urls["console"], shop.keys["reader"]) as c:
            page = await c.get("/journeys/default")
            assert page.status_code == 200
            assert 'name="definition"' not in page.text
            r = await c.post(
                "/journeys/default", data={"csrf": csrf_of(page.text), "definition": BROKEN}
            )
            assert r.status_code == 403
