"""GET /v1/metrics/points against a hand-computed ledger: credits, a redemption, the
expiry of what was left a year later, and the liability of what is outstanding now."""

from __future__ import annotations

from datetime import timedelta

from ..loyalty_support import START, Loyalty, new_id


async def credit(loyalty: Loyalty, h: dict[str, str], customer: str, points: int) -> None:
    r = await loyalty.client.post(
        f"/v1/accounts/{customer}/adjustments",
        json={"points": points, "reason": "goodwill"},
        headers=h,
    )
    assert r.status_code == 201, r.text


class TestPointsMetrics:
    async def test_issued_redeemed_expired_per_month_and_the_liability(
        self, loyalty: Loyalty, tenant_id: str
    ) -> None:
        h = await loyalty.key(tenant_id)
        c1, c2, c3 = new_id("c"), new_id("c"), new_id("c")
        # 2 March 2026: 1200 to c1, who redeems 500 of them; 300 to c2.
        await credit(loyalty, h, c1, 1200)
        r = await loyalty.client.post(
            f"/v1/accounts/{c1}/redemptions",
            json={"reward_id": "five-off"},
            headers={**h, "Idempotency-Key": new_id("k")},
        )
        assert r.status_code == 201 and r.json()["points"] == 500, r.text
        await credit(loyalty, h, c2, 300)
        # A year and a day later what is left expires (12 months): 700 + 300.
        loyalty.clock.advance(timedelta(days=366))
        for c in (c1, c2):
            await loyalty.wait_account(tenant_id, c, lambda a: a["available"] == 0)
        # Then 400 to c3: outstanding now, worth 400 cents at the default point value.
        await credit(loyalty, h, c3, 400)

        last = (START + timedelta(days=366)).date()
        r = await loyalty.client.get(
            "/v1/metrics/points",
            params={"from": START.date().isoformat(), "to": last.isoformat(), "interval": "month"},
            headers=h,
        )
        assert r.status_code == 200, r.text
        m = r.json()
        assert (m["issued"], m["redeemed"], m["expired"]) == (1900, 500, 1000)
        assert m["outstanding"] == 400
        assert m["outstanding_liability"] == {"amount": 400, "currency": "USD"}
        series = m["series"]
        assert len(series) == 13  # March 2026 .. March 2027
        assert series[0] == {"start": "2026-03-01", "issued": 1500, "redeemed": 500, "expired": 0}
        assert series[-1] == {"start": "2027-03-01", "issued": 400, "redeemed": 0, "expired": 1000}
        assert all(p["issued"] == p["redeemed"] == p["expired"] == 0 for p in series[1:-1])

        # Only the first month: the expiry and c3's credit are outside it.
        r = await loyalty.client.get(
            "/v1/metrics/points", params={"from": "2026-03-01", "to": "2026-03-31"}, headers=h
        )
        m = r.json()
        assert (m["issued"], m["redeemed"], m["expired"]) == (1500, 500, 0)

    async def test_bad_periods_are_422_naming_the_field(
        self, loyalty: Loyalty, tenant_id: str
    ) -> None:
        h = await loyalty.key(tenant_id)
        for params, field in (
            ({"from": "2026-03-31", "to": "2026-03-01"}, "to"),
            ({"from": "2020-01-01", "to": "2026-01-01"}, "to"),
            ({"from": "soon", "to": "2026-03-01"}, "from"),
            ({"from": "2025-01-01", "to": "2026-03-01", "interval": "day"}, "interval"),
        ):
            r = await loyalty.client.get("/v1/metrics/points", params=params, headers=h)
            assert r.status_code == 422, (params, r.text)
            assert r.json()["error"]["field"] == field, (params, r.text)

    async def test_needs_the_read_scope_and_sees_only_its_tenant(
        self, loyalty: Loyalty, tenant_id: str
    ) -> None:
        r = await loyalty.client.get(
            "/v1/metrics/points",
            params={"from": "2026-03-01", "to": "2026-03-31"},
            headers=await loyalty.key(tenant_id, ["loyalty:write"]),
        )
        assert r.status_code == 403
        r = await loyalty.client.get(
            "/v1/metrics/points",
            params={"from": "2026-03-01", "to": "2026-03-31"},
            headers=await loyalty.key(f"{tenant_id}-empty"),
        )
        assert (r.json()["issued"], r.json()["outstanding"]) == (0, 0)
