"""The dashboard in a real browser (Debian's chromium through Playwright) against every
service on the real stack: a tenant seeded today through the services' public APIs, so
its journeys really run (orders older than ingest's lateness bound start none).

Hand-computed figures of the seed (SEED below):
- orders 3 (p twice, q once), customers 2, repeat purchase rate 50.0%, revenue 185.00;
- the default journey, version 1: p1 and q1 start an instance each; p2 converts p1's
  (its goal: another order within 30 days) and, the journey restarting on a new order,
  starts a third: started 3, reached the goal 1, goal revenue 45.00 (p2's total);
- NPS answers 10, 9, 3: (2 - 1) / 3 = 33.3; reviews 5 and 3: 2 reviews, average 4.00;
- referrals: p's code used by q (a referral, pending) and by p itself (rejected as a
  self-referral): 1 advocate invited, 2 referred orders, 1 rejected for self_referral;
- loyalty: the page shows what loyalty's own endpoint answers (its figures are
  hand-computed in loyalty's tests). The orders' points are still pending, in the return
  window; what is issued is the engagement bonuses, available at once: two reviews and
  three survey answers at the programme's bonuses (50 and 25 by default: 175).

Each chart is checked for its number of marks (one per value), the tables for the
numbers, the page at 1280 and 390 px (screenshots) and with axe-core."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import httpx
import pytest

from afterglow.devstack.services import RunningServices
from afterglow.events.testing import eventually

from ..console_support import Tenant, new_tenant

# The browser fixture and the page check (screenshots, axe) of the main browser test.
from .test_console_in_browser import browser, check_page  # noqa: F401 - a fixture

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]


async def place(
    http: httpx.AsyncClient, t: Tenant, role: str, oid: str, total: int, **extra: Any
) -> None:
    r = await http.post(
        t.urls["ingest"] + "/v1/orders",
        headers={**t.auth(), "Idempotency-Key": oid},
        json={
            "type": "order.placed",
            "customer_id": t.customer(role),
            "data": {
                "order_id": oid,
                "platform": "api",
                "placed_at": datetime.now(UTC).isoformat(),
                "customer": {},
                "total": {"amount": total, "currency": "USD"},
                **extra,
            },
        },
    )
    assert r.status_code == 201, r.text


async def journey_instances(http: httpx.AsyncClient, t: Tenant, role: str) -> int:
    r = await http.get(
        f"{t.urls['journeys']}/v1/customers/{t.customer(role)}/journey", headers=t.auth()
    )
    return len(r.json().get("instances", [])) if r.status_code == 200 else 0


async def seed_today(http: httpx.AsyncClient, t: Tenant) -> Tenant:
    r = await http.post(
        f"{t.urls['referrals']}/v1/advocates/{t.customer('p')}/code", headers=t.auth()
    )
    assert r.status_code in (200, 201), r.text
    code = r.json()["code"]
    await place(http, t, "p", "o-p1", 8000)
    await place(http, t, "q", "o-q1", 6000, referral_code=code)
    # p's second order must come after p's first journey started, to be its goal.
    await eventually(lambda: journey_instances(http, t, "p"), lambda n: n == 1, timeout=120)
    await place(http, t, "p", "o-p2", 4500, referral_code=code)
    now = datetime.now(UTC).isoformat()
    for role, score in (("p", 10), ("q", 9), ("r", 3)):
        r = await http.post(
            t.urls["feedback"] + "/v1/survey-responses",
            headers=t.auth(),
            json={
                "external_id": f"nps-{role}",
                "customer_id": t.customer(role),
                "kind": "nps",
                "score": score,
                "responded_at": now,
            },
        )
        assert r.status_code == 201, r.text
    for role, rating, body in (("p", 5, "Warm and light."), ("q", 3, "Zip is stiff.")):
        r = await http.post(
            t.urls["feedback"] + "/v1/reviews",
            headers=t.auth(),
            json={"customer_id": t.customer(role), "sku": "BAG", "rating": rating, "body": body},
        )
        assert r.status_code == 201 and r.json()["status"] == "published", r.text

    # Everything downstream of the orders, answers and reviews is applied by consumers:
    # wait for the last. Loyalty's bonuses for the answers and reviews come through
    # feedback's events, apart from the orders, so its order count says nothing of them.
    rules = (await http.get(t.urls["loyalty"] + "/v1/rules", headers=t.auth())).json()
    issued = 2 * rules["bonuses"]["review"] + 3 * rules["bonuses"]["survey"]

    async def settled() -> tuple[Any, Any, Any, Any]:
        journeys = await http.get(
            t.urls["journeys"] + "/v1/metrics/journeys", params=period(), headers=t.auth()
        )
        referrals = await http.get(t.urls["referrals"] + "/v1/metrics", headers=t.auth())
        loyalty = await http.get(t.urls["loyalty"] + "/v1/metrics", headers=t.auth())
        points = await http.get(
            t.urls["loyalty"] + "/v1/metrics/points",
            params={**period(), "interval": "week"},
            headers=t.auth(),
        )
        return journeys.json(), referrals.json(), loyalty.json(), points.json()

    await eventually(
        settled,
        lambda jrlp: (
            any(v["converted"] for v in jrlp[0].get("versions", []))
            and jrlp[1].get("rejected") == 1
            and sum(o["orders"] for o in jrlp[2].get("orders_by_currency", [])) == 3
            and jrlp[3].get("issued") == issued
        ),
        timeout=120,
    )
    return t


def period() -> dict[str, str]:
    today = datetime.now(UTC).date().isoformat()
    return {"from": today, "to": today}


def cells(texts: list[str]) -> list[str]:
    return [t.strip() for t in texts]


async def test_the_dashboard_shows_every_seeded_figure_with_its_chart(
    browser: Any,  # noqa: F811 - the fixture imported above
    services: RunningServices,
) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        shop = await seed_today(http, await new_tenant(http, services))
        loyalty = (
            await http.get(
                shop.urls["loyalty"] + "/v1/metrics/points",
                params={**period(), "interval": "week"},
                headers=shop.auth(),
            )
        ).json()
    context = await browser.new_context(base_url=shop.urls["console"], bypass_csp=True)
    page = await context.new_page()

    async def sign_in() -> str:
        await page.goto("/sign-in")
        await page.get_by_label("API key").fill(shop.keys["reader"])
        await page.get_by_role("button", name="Sign in").click()
        return str(page.url)

    await eventually(sign_in, lambda url: url.endswith("/dashboard"), timeout=120)
    # The period chooser: today only (the seed's day).
    today = period()["from"]
    await page.get_by_label("From", exact=True).fill(today)
    await page.get_by_label("To", exact=True).fill(today)
    await page.get_by_role("button", name="Show").click()
    assert f"from={today}" in page.url

    def marks(section: str, chart: int = 0) -> Any:
        return page.locator(f"#{section} svg[role=img]").nth(chart).locator(".mark")

    # --- orders, customers, repeat rate; a bar for the one day ---
    orders = page.locator("#orders-section")
    assert await orders.locator("[data-figure=orders]").inner_text() == "3"
    assert await orders.locator("[data-figure=customers]").inner_text() == "2"
    assert await orders.locator("[data-figure=repeat_purchase_rate]").inner_text() == "50.0%"
    assert await orders.locator("[data-figure=revenue]").inner_text() == "185.00"
    assert await marks("orders-section").count() == 1
    assert cells(await page.locator("#orders-table tbody tr td").all_inner_texts()) == ["3", "2"]

    # --- retention grid and CLV: one cohort (this month), two customers ---
    assert await marks("cohorts-section").count() == 1  # the +0 cell
    row = page.locator("#clv-table tbody tr").first
    assert cells(await row.locator("td").all_inner_texts())[0] == "2"
    # A cohort of this month is too young for any of 3, 6, 12 months: a dash, no bar
    # (the figures of an older cohort are checked by the page test, on ingest's book).
    assert cells(await row.locator("td").all_inner_texts())[1:] == ["\u2013"] * 3
    assert await marks("clv-section").count() == 0

    # --- the default journey, version 1 ---
    jn = page.locator("#journeys-section")
    assert await jn.locator("[data-figure=journey_started_default_1]").inner_text() == "3"
    assert await jn.locator("[data-figure=journey_converted_default_1]").inner_text() == "1"
    assert await jn.locator("[data-figure=journey_revenue_default_1]").inner_text() == "45.00"
    funnel = jn.locator(".funnel-table tbody tr")
    assert await funnel.count() == 5  # started and the four stages
    assert cells(await funnel.nth(1).locator("td").all_inner_texts())[0] == "3"  # onboarding
    assert await marks("journeys-section").count() == 5

    # --- NPS; reviews ---
    assert await page.locator("#nps-section [data-figure=nps]").inner_text() == "33.3"
    assert await marks("nps-section").count() == 1  # one week with answers
    rv = page.locator("#reviews-section")
    assert await rv.locator("[data-figure=reviews]").inner_text() == "2"
    assert await rv.locator("[data-figure=average_rating]").inner_text() == "4.00"
    assert await marks("reviews-section", 0).count() == 1  # the week's bar
    assert await marks("reviews-section", 1).count() == 1  # the week's average

    # --- loyalty: the table says what loyalty says; a bar per figure ---
    lt = page.locator("#loyalty-table")
    for figure, name in (("points_issued", "issued"), ("points_outstanding", "outstanding")):
        assert await lt.locator(f"[data-figure={figure}]").inner_text() == str(loyalty[name])
    assert await marks("loyalty-section").count() == 4

    # --- referrals: one rejected for self-referral ---
    rf = page.locator("#referrals-section")
    assert await rf.locator("[data-figure=referral_invited]").inner_text() == "1"
    assert await rf.locator("[data-figure=referral_orders]").inner_text() == "2"  # q1, p2
    assert await rf.locator("[data-figure=referral_rejected]").inner_text() == "1"
    assert cells(await page.locator("#rejections-table tbody tr").all_inner_texts()) == [
        "self_referral\t1"
    ]
    assert await marks("referrals-section").count() == 1

    await check_page(page, "dashboard-today")

    # A period with nothing in it says so.
    await page.goto("/dashboard?from=2020-01-01&to=2020-01-31")
    assert await page.locator("#journeys-section", has_text="No journey started").count() == 1
    await context.close()
