"""GET /v1/metrics/reviews against a hand-computed fixture: volume per week, the
average rating with rejected reviews (only) left out, totals per status and rating."""

from __future__ import annotations

from datetime import UTC, datetime

from ..conftest import Feedback

PERIOD = {"from": "2026-03-02", "to": "2026-03-15", "interval": "week"}


async def submit(fb: Feedback, h: dict[str, str], at: datetime, rating: int, body: str) -> str:
    fb.clock.set(at)
    r = await fb.client.post(
        "/v1/reviews",
        json={"customer_id": "c-1", "sku": "MUG", "rating": rating, "body": body},
        headers=h,
    )
    assert r.status_code == 201, r.text
    return str(r.json()["id"])


def at(day: int, hour: int = 12) -> datetime:
    return datetime(2026, 3, day, hour, tzinfo=UTC)


class TestReviewMetrics:
    async def test_volume_and_average_rating_per_week(
        self, fb: Feedback, tenant_id: str, at_start: object
    ) -> None:
        h = await fb.key(tenant_id)
        # Week of 2 March: a 5 and a 2, both published.
        await submit(fb, h, at(2), 5, "Lovely mug, keeps tea hot.")
        await submit(fb, h, at(3), 2, "Handle came loose after a week.")
        # Week of 9 March: a 4 held (a link) and a 1 rejected by a moderator.
        await submit(fb, h, at(9), 4, "Photos at https://example.com/mug")
        rejected = await submit(fb, h, at(10), 1, "Rude words were here.")
        r = await fb.client.patch(
            f"/v1/reviews/{rejected}/moderation",
            json={"status": "rejected", "reason": "abuse"},
            headers=h,
        )
        assert r.status_code == 200, r.text
        # Outside the period (16 March) and another tenant's inside it: not counted.
        await submit(fb, h, at(16, 0), 3, "Fine.")
        await submit(fb, await fb.key(f"{tenant_id}-other"), at(4), 1, "Not theirs.")

        r = await fb.client.get("/v1/metrics/reviews", params=PERIOD, headers=h)
        assert r.status_code == 200, r.text
        m = r.json()
        assert (m["from"], m["to"], m["interval"]) == ("2026-03-02", "2026-03-15", "week")
        assert m["series"] == [
            {"start": "2026-03-02", "reviews": 2, "published": 2, "average_rating": 3.5},
            # The rejected 1 is counted as received, not in the average: (4) / 1.
            {"start": "2026-03-09", "reviews": 2, "published": 0, "average_rating": 4.0},
        ]
        assert m["total"] == {
            "reviews": 4,
            "published": 2,
            "pending": 1,
            "rejected": 1,
            "average_rating": round((5 + 2 + 4) / 3, 2),
            "ratings": {"1": 0, "2": 1, "3": 0, "4": 1, "5": 1},
        }

    async def test_an_empty_period_has_buckets_without_an_average(
        self, fb: Feedback, tenant_id: str
    ) -> None:
        h = await fb.key(tenant_id)
        r = await fb.client.get(
            "/v1/metrics/reviews",
            params={"from": "2026-01-01", "to": "2026-02-28", "interval": "month"},
            headers=h,
        )
        assert r.status_code == 200, r.text
        m = r.json()
        assert [(b["start"], b["reviews"], b["average_rating"]) for b in m["series"]] == [
            ("2026-01-01", 0, None),
            ("2026-02-01", 0, None),
        ]
        assert m["total"]["reviews"] == 0 and m["total"]["average_rating"] is None

    async def test_bad_periods_are_422_naming_the_field(self, fb: Feedback, tenant_id: str) -> None:
        h = await fb.key(tenant_id)
        for params, field in (
            ({"from": "2026-03-15", "to": "2026-03-02"}, "to"),
            ({"from": "2020-01-01", "to": "2026-01-01"}, "to"),
            ({"from": "2026-13-01", "to": "2026-03-02"}, "from"),
            ({"from": "2025-01-01", "to": "2026-03-02", "interval": "day"}, "interval"),
            ({"from": "2026-03-01", "to": "2026-03-02", "interval": "year"}, "interval"),
        ):
            r = await fb.client.get("/v1/metrics/reviews", params=params, headers=h)
            assert r.status_code == 422, (params, r.text)
            assert r.json()["error"]["field"] == field, (params, r.text)

    async def test_needs_the_read_scope(self, fb: Feedback, tenant_id: str) -> None:
        h = await fb.key(tenant_id, scopes=["feedback:write"])
        r = await fb.client.get("/v1/metrics/reviews", params=PERIOD, headers=h)
        assert r.status_code == 403
