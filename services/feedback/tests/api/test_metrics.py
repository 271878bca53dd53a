"""NPS / CSAT metrics against hand-computed cases, external answers de-duplicated."""

from __future__ import annotations

from datetime import UTC, datetime

from afterglow.events import CloudEvent, Money
from afterglow.events.catalog import CustomerInfo, LineItem, OrderPlaced
from afterglow.events.testing import eventually
from afterglow.feedback import service

FORM = {"content-type": "application/x-www-form-urlencoded"}


async def answer(fb, h, score, at, kind="nps", order_id=None, ext=None):
    r = await fb.client.post(
        "/v1/survey-responses",
        json={
            "external_id": ext or f"ext-{score}-{at}-{kind}-{order_id}",
            "customer_id": "c",
            "kind": kind,
            "score": score,
            "responded_at": at,
            "order_id": order_id,
        },
        headers=h,
    )
    assert r.status_code == 201, r.text
    return r


async def nps(fb, h, start, end, interval="day", path="/v1/metrics/nps", **extra):
    r = await fb.client.get(
        path, params={"from": start, "to": end, "interval": interval, **extra}, headers=h
    )
    assert r.status_code == 200, r.text
    return r.json()


class TestNps:
    async def test_hand_computed_days_totals_and_empty_day(self, fb, tenant_id):
        h = await fb.key(tenant_id)
        for s in (10, 9, 8, 0):
            await answer(fb, h, s, f"2026-03-02T0{s % 10}:00:00Z")
        for ext in ("d3-a", "d3-b"):
            await answer(fb, h, 6, "2026-03-04T08:00:00Z", ext=ext)
        await answer(fb, h, 6, "2026-03-04T09:00:00Z", ext="d3-other")
        # Outside the window on both sides ([from, to) is half-open).
        await answer(fb, h, 0, "2026-03-01T23:59:59Z")
        await answer(fb, h, 0, "2026-03-05T00:00:00Z")
        # A page answer changed from 0 to 10 counts once, as 10; an unanswered survey
        # counts as sent.
        fb.clock.set(datetime(2026, 3, 4, 10, tzinfo=UTC))
        _, path = await fb.survey_direct(tenant_id)
        await fb.survey_direct(tenant_id)
        await fb.client.post(path, content="score=0", headers=FORM)
        await fb.client.post(path, content="score=10", headers=FORM)

        m = await nps(fb, h, "2026-03-02T00:00:00Z", "2026-03-05T00:00:00Z")
        days = [
            (p["start"][:10], p["promoters"], p["passives"], p["detractors"], p["nps"], p["sent"])
            for p in m["series"]
        ]
        # day 1: 2 promoters, 1 passive, 1 detractor of 4 -> (2-1)/4 = 25
        # day 2: nothing -> None, not 0
        # day 3: 10 vs 6, 6, 6 -> (1-3)/4 = -50
        assert days == [
            ("2026-03-02", 2, 1, 1, 25.0, 0),
            ("2026-03-03", 0, 0, 0, None, 0),
            ("2026-03-04", 1, 0, 3, -50.0, 2),
        ]
        total = m["total"]
        # 3 promoters, 1 passive, 4 detractors of 8 -> (3-4)/8 = -12.5
        assert (total["promoters"], total["passives"], total["detractors"]) == (3, 1, 4)
        assert (total["responses"], total["nps"]) == (8, -12.5)
        assert (total["sent"], total["answered"], total["response_rate"]) == (2, 1, 0.5)
        assert m["series"][1]["response_rate"] is None

    async def test_empty_window_is_null_not_zero(self, fb, tenant_id):
        h = await fb.key(tenant_id)
        m = await nps(fb, h, "2026-01-01T00:00:00Z", "2026-02-01T00:00:00Z", "week")
        assert m["total"]["nps"] is None
        assert m["total"]["responses"] == 0
        assert all(p["nps"] is None for p in m["series"])
        # Weeks start on Monday (ISO): 2025-12-29 holds 1 January 2026.
        assert m["series"][0]["start"].startswith("2025-12-29")

    async def test_week_and_month_buckets(self, fb, tenant_id):
        h = await fb.key(tenant_id)
        await answer(fb, h, 10, "2026-03-02T00:00:00Z")
        await answer(fb, h, 0, "2026-03-08T23:00:00Z")
        await answer(fb, h, 10, "2026-03-09T00:00:00Z")
        w = await nps(fb, h, "2026-03-02T00:00:00Z", "2026-03-16T00:00:00Z", "week")
        assert [(p["start"][:10], p["nps"]) for p in w["series"]] == [
            ("2026-03-02", 0.0),
            ("2026-03-09", 100.0),
        ]
        mo = await nps(fb, h, "2026-03-01T00:00:00Z", "2026-04-01T00:00:00Z", "month")
        assert [(p["start"][:10], p["responses"]) for p in mo["series"]] == [("2026-03-01", 3)]
        assert mo["total"]["nps"] == 33.3

    async def test_filter_by_product_through_the_order(self, fb, tenant_id):
        h = await fb.key(tenant_id)
        for order, skus in (("o-a", ["A"]), ("o-b", ["B", "C"])):
            await fb.publish(
                CloudEvent.new(
                    OrderPlaced(
                        order_id=order,
                        platform="api",
                        placed_at=datetime.now(UTC),
                        customer=CustomerInfo(),
                        total=Money(amount=1, currency="EUR"),
                        line_items=[
                            LineItem(sku=s, quantity=1, unit_price=Money(amount=1, currency="EUR"))
                            for s in skus
                        ],
                    ),
                    tenant_id=tenant_id,
                    subject="c",
                    source="tests",
                )
            )

        async def seen():
            async with fb.runtime.sessionmaker() as s:
                return await service.order_items(s, tenant_id, "c", "o-b")

        await eventually(seen, lambda v: bool(v))
        await answer(fb, h, 10, "2026-03-02T01:00:00Z", order_id="o-a")
        await answer(fb, h, 0, "2026-03-02T02:00:00Z", order_id="o-a")
        await answer(fb, h, 9, "2026-03-02T03:00:00Z", order_id="o-b")
        win = ("2026-03-02T00:00:00Z", "2026-03-03T00:00:00Z")
        assert (await nps(fb, h, *win, sku="A"))["total"]["nps"] == 0.0
        assert (await nps(fb, h, *win, sku="C"))["total"]["nps"] == 100.0
        assert (await nps(fb, h, *win, sku="Z"))["total"]["nps"] is None
        assert (await nps(fb, h, *win))["total"]["responses"] == 3

    async def test_tenants_see_only_their_answers(self, fb, tenant_id):
        h = await fb.key(tenant_id)
        await answer(fb, h, 10, "2026-03-02T10:00:00Z")
        other = await fb.key(f"o{tenant_id}")
        win = ("2026-03-02T00:00:00Z", "2026-03-03T00:00:00Z")
        assert (await nps(fb, h, *win))["total"]["responses"] == 1
        assert (await nps(fb, other, *win))["total"]["responses"] == 0
        assert (await fb.client.get("/v1/metrics/nps")).status_code == 401
        writer = await fb.key(tenant_id, ["feedback:write"])
        assert (await fb.client.get("/v1/metrics/nps", headers=writer)).status_code == 403

    async def test_bad_parameters_name_the_field(self, fb, tenant_id):
        h = await fb.key(tenant_id)
        r = await fb.client.get(
            "/v1/metrics/nps",
            params={"from": "2026-03-05T00:00:00Z", "to": "2026-03-01T00:00:00Z"},
            headers=h,
        )
        assert r.status_code == 422 and r.json()["error"]["field"] == "from"
        r = await fb.client.get("/v1/metrics/nps", params={"interval": "year"}, headers=h)
        assert r.status_code == 422 and r.json()["error"]["field"] == "interval"
        r = await fb.client.get(
            "/v1/metrics/nps",
            params={"from": "2000-01-01T00:00:00Z", "to": "2026-01-01T00:00:00Z"},
            headers=h,
        )
        assert r.status_code == 422


class TestCsatAndExternalAnswers:
    async def test_csat_hand_computed(self, fb, tenant_id):
        h = await fb.key(tenant_id)
        for s in (5, 4, 3, 1):
            await answer(fb, h, s, "2026-03-02T10:00:00Z", kind="csat")
        await answer(fb, h, 10, "2026-03-02T10:00:00Z", kind="nps")  # other kind, ignored
        m = await nps(
            fb, h, "2026-03-02T00:00:00Z", "2026-03-03T00:00:00Z", path="/v1/metrics/csat"
        )
        t = m["total"]
        assert (t["satisfied"], t["neutral"], t["dissatisfied"]) == (2, 1, 1)
        assert (t["csat"], t["average"]) == (50.0, 3.25)

    async def test_external_id_dedupes_and_emits_once(self, fb, tenant_id):
        h = await fb.key(tenant_id)
        body = {"external_id": "typeform-1", "customer_id": "c", "score": 7}
        first = await fb.client.post("/v1/survey-responses", json=body, headers=h)
        second = await fb.client.post("/v1/survey-responses", json={**body, "score": 1}, headers=h)
        assert (first.status_code, second.status_code) == (201, 200)
        assert first.json()["id"] == second.json()["id"]
        assert first.json()["band"] == "passive"
        mine = lambda e: e.tenantid == tenant_id  # noqa: E731
        [ev] = await fb.tap.wait_for(
            lambda e: mine(e) and e.type == "afterglow.survey.responded.v1"
        )
        assert (ev.data.score, ev.data.band, ev.subject) == (7, "passive", "c")
        later = [
            e
            for e in await fb.tap.events(settle=0.5)
            if mine(e) and e.type == "afterglow.survey.responded.v1"
        ]
        assert len(later) == 1

    async def test_score_outside_scale_is_422_on_score(self, fb, tenant_id):
        h = await fb.key(tenant_id)
        r = await fb.client.post(
            "/v1/survey-responses",
            json={"external_id": "x", "customer_id": "c", "kind": "csat", "score": 0},
            headers=h,
        )
        assert r.status_code == 422 and r.json()["error"]["field"] == "score"
        r = await fb.client.post(
            "/v1/survey-responses",
            json={"external_id": "x", "customer_id": "c", "score": 5, "tenant_id": "evil"},
            headers=h,
        )
        assert r.status_code == 422 and r.json()["error"]["field"] == "tenant_id"
