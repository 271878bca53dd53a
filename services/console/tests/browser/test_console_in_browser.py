"""The console in a real browser: Debian's chromium driven by Playwright, against every
service on the real stack with a seeded tenant.

Sign in, read the dashboard's charts and their tables, find a customer by email and read
why a message to them was suppressed, approve a held review, look at the work queues and
the settings, open a journey's diagram, fix a broken YAML from the error shown,
simulate, activate, compare two versions, sign out; another tenant's customer in the
URL is a 404. Each page is saved as a
screenshot at 1280 and 390 px wide under ``.afterglow/screenshots/`` and checked with
axe-core (vendored from npm, injected into the page): no serious or critical violation.

Playwright's own browser download is not used: ``CHROMIUM`` (default
``/usr/bin/chromium``, which ``.ci/run`` installs with apt) is launched instead. Without
it the test is skipped, saying why."""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from afterglow.devstack.services import RunningServices
from afterglow.events.testing import eventually

from ..console_support import (
    EMAIL_OF_A,
    HELD_REVIEW,
    PERIOD,
    Tenant,
    new_tenant,
    screenshots_dir,
    seed,
    seed_suppressed_message,
)

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]

CHROMIUM = os.environ.get("CHROMIUM") or shutil.which("chromium") or "/usr/bin/chromium"
AXE = Path(__file__).parent / "vendor" / "axe.min.js"
WIDTHS = (1280, 390)


@pytest.fixture(scope="module")
async def browser() -> AsyncIterator[Any]:
    if not os.access(CHROMIUM, os.X_OK):
        pytest.skip(f"no chromium at {CHROMIUM} (apt-get install chromium; .ci/run does)")
    from playwright.async_api import async_playwright

    async with async_playwright() as pw:
        b = await pw.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        try:
            yield b
        finally:
            await b.close()


async def check_page(page: Any, name: str) -> None:
    """Screenshots at each width and an axe-core run: no serious or critical violation."""
    for width in WIDTHS:
        await page.set_viewport_size({"width": width, "height": 900})
        # Usable at 390 px: nothing wider than the viewport but scrollable tables.
        overflow = await page.evaluate(
            "document.documentElement.scrollWidth - document.documentElement.clientWidth"
        )
        assert overflow <= 1, f"{name} scrolls sideways at {width} px ({overflow} px)"
        await page.screenshot(
            path=str(screenshots_dir() / f"console-{name}-{width}.png"), full_page=True
        )
    await page.add_script_tag(content=AXE.read_text())
    result = await page.evaluate("async () => await axe.run(document)")
    bad = [
        (v["id"], v["impact"], [n["target"] for n in v["nodes"]][:3])
        for v in result["violations"]
        if v["impact"] in ("serious", "critical")
    ]
    assert not bad, f"{name}: accessibility violations {bad}"


async def test_a_marketer_signs_in_reads_finds_approves_and_signs_out(
    browser: Any, services: RunningServices
) -> None:
    async with httpx.AsyncClient(timeout=30) as http:
        shop: Tenant = await seed(http, await new_tenant(http, services))
        other: Tenant = await seed(http, await new_tenant(http, services))
        suppressed = await seed_suppressed_message(http, shop)
    console = shop.urls["console"]
    # bypass_csp: the pages allow no script, and axe-core is injected as one.
    context = await browser.new_context(base_url=console, bypass_csp=True)
    page = await context.new_page()

    # --- sign in (the key's announcement may still be on its way to the console) ---
    await page.goto("/sign-in")
    await check_page(page, "sign-in")

    async def sign_in() -> str:
        await page.goto("/sign-in")
        await page.get_by_label("API key").fill(shop.keys["writer"])
        await page.get_by_role("button", name="Sign in").click()
        return str(page.url)

    await eventually(sign_in, lambda url: url.endswith("/dashboard"), timeout=120)

    # --- the dashboard: charts, and the seeded numbers in their tables ---
    await page.goto(f"/dashboard?from={PERIOD['from']}&to={PERIOD['to']}")
    orders = page.locator("#orders-section")
    assert await orders.locator("[data-figure=orders]").inner_text() == "7"
    assert await orders.locator("[data-figure=repeat_purchase_rate]").inner_text() == "75.0%"
    assert await orders.locator("svg[role=img]").count() == 1
    day = page.locator("#orders-table tbody tr", has_text="2026-01-05")
    assert await day.locator("td").all_inner_texts() == ["1", "1"]
    jan = page.locator("#cohorts-table tbody tr", has_text="2026-01")
    assert (await jan.locator("td").all_inner_texts())[:4] == ["2", "2", "1", "1"]
    assert await page.locator("#nps-section [data-figure=nps]").inner_text() == "33.3"
    await check_page(page, "dashboard")

    # --- find a customer by email, and read why a message was suppressed ---
    await page.get_by_role("link", name="Customers").click()
    await check_page(page, "find-customer")
    await page.get_by_label("Customer id or email").fill(EMAIL_OF_A.upper())
    await page.get_by_role("button", name="Find").click()
    assert await page.get_by_role("heading", name=f"Customer {shop.customer('a')}").is_visible()
    assert await page.locator("#timeline", has_text="o-a3").count() == 1
    why = page.locator("#timeline tr", has_text=suppressed["request_id"]).locator(".why")
    assert await why.inner_text() == "Why suppressed: no marketing consent"
    assert await page.get_by_role("link", name="Download all their data (JSON)").is_visible()
    await check_page(page, "customer")

    # --- another tenant's customer id in the URL ---
    response = await page.goto(f"/customers/{other.customer('a')}")
    assert response is not None and response.status == 404
    assert await page.get_by_role("heading", name="No such customer").is_visible()

    # --- approve the held review ---
    await page.goto("/reviews")
    await check_page(page, "reviews")
    card = page.locator("article", has_text=HELD_REVIEW["title"])
    await card.get_by_role("button", name="Approve").click()
    assert page.url.endswith("/reviews")
    assert await page.locator("article", has_text=HELD_REVIEW["title"]).count() == 0
    async with httpx.AsyncClient(timeout=30) as http:
        r = await http.get(
            f"{shop.urls['feedback']}/v1/reviews/{shop.review_id}", headers=shop.auth()
        )
    assert r.json()["status"] == "published"

    # --- the work queues and the settings, read ---
    await page.get_by_role("link", name="Queues").click()
    await page.get_by_role("heading", name="Referrals held for review").wait_for()
    await check_page(page, "queues")
    await page.get_by_role("link", name="Settings").click()
    await page.get_by_label("Quiet hours start (HH:MM)").wait_for()
    await check_page(page, "settings")

    # --- a journey: its diagram; fix a broken definition from the error shown,
    # simulate, activate ---
    await page.get_by_role("link", name="Journeys").click()
    await check_page(page, "journeys")
    await page.get_by_role("link", name="default", exact=True).click()
    diagram = page.get_by_role("img", name="Flow of journey default")
    await diagram.wait_for(state="visible")  # the click's navigation may still be on its way
    assert await diagram.get_by_text("check_in", exact=True).count() == 1  # its stage box
    editor = page.get_by_label("Definition")
    good = await editor.input_value()
    assert "delay: P3D" in good  # check_in's wait, as the stored definition spells it
    await editor.fill(good.replace("delay: P3D", "delay: soonish", 1))
    await page.get_by_role("button", name="Save as a new version").click()
    alert = page.get_by_role("alert")
    assert "Line " in await alert.inner_text()
    await check_page(page, "journey-error")
    await editor.fill((await editor.input_value()).replace("delay: soonish", "delay: P3D", 1))
    await page.get_by_role("button", name="Save as a new version").click()
    assert "version=2" in page.url
    await page.get_by_role("button", name="Simulate").click()
    assert await page.locator("#simulation", has_text="welcome").count() == 1
    await check_page(page, "journey")
    await page.get_by_role("button", name="Activate version 2").click()
    assert (
        await page.get_by_role("heading", name="Journey default, version 2 (active)").count() == 1
    )
    await page.get_by_role("link", name="v1 beside v2").click()
    assert await page.locator("#compare svg[role=img]").count() == 2
    await check_page(page, "journey-compare")

    # --- sign out: the pages are closed again ---
    await page.get_by_role("button", name="Sign out").click()
    assert page.url.endswith("/sign-in")
    await page.goto("/dashboard")
    assert page.url.endswith("/sign-in")
    await context.close()
