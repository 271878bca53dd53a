"""The JSON the REST routes answer, key by key and in order: the answers are rendered
through response models (afterglow.feedback.schemas), and a model that drops a key,
adds a null, renames "from" or renders an instant as pydantic's "Z" form instead of
"+00:00" breaks clients that parsed the answers before."""

from __future__ import annotations

import uuid

REVIEW_KEYS = [
    "id",
    "customer_id",
    "order_id",
    "sku",
    "product_id",
    "rating",
    "title",
    "body",
    "status",
    "moderation_reasons",
    "verified",
    "source",
    "created_at",
    "published_at",
]
FIGURES = ["responses", "average", "sent", "answered", "response_rate"]


def _iso_utc(value: str) -> bool:
    return value.endswith("+00:00") and "T" in value


class TestReviewAnswers:
    async def test_every_route_answers_the_same_review_object(self, fb, tenant_id):
        h = await fb.key(tenant_id)
        body = {"customer_id": "c-1", "rating": 4, "sku": "MUG", "external_id": "x-1"}
        created = await fb.client.post("/v1/reviews", json=body, headers=h)
        again = await fb.client.post("/v1/reviews", json=body, headers=h)
        assert (created.status_code, again.status_code) == (201, 200)
        review = created.json()
        assert list(review) == REVIEW_KEYS
        assert again.json() == review
        # Absent values are nulls, not missing keys; no moderation reason is [].
        assert review["order_id"] is None and review["product_id"] is None
        assert review["title"] is None and review["body"] is None
        assert review["moderation_reasons"] == [] and review["status"] == "published"
        assert _iso_utc(review["created_at"]) and review["published_at"] == review["created_at"]

        one = await fb.client.get(f"/v1/reviews/{review['id']}", headers=h)
        listed = await fb.client.get("/v1/reviews", params={"status": "published"}, headers=h)
        product = await fb.client.get("/v1/products/MUG/reviews", headers=h)
        assert one.json() == review
        assert listed.json() == {"reviews": [review]}
        assert product.json() == {
            "product": "MUG",
            "count": 1,
            "average": 4.0,
            "distribution": {"1": 0, "2": 0, "3": 0, "4": 1, "5": 0},
            "reviews": [review],
        }

        held = await fb.client.patch(
            f"/v1/reviews/{review['id']}/moderation", json={"status": "pending"}, headers=h
        )
        assert held.status_code == 200
        assert held.json() == {
            **review,
            "status": "pending",
            "moderation_reasons": ["manual:pending"],
        }


class TestExternalAnswers:
    async def test_first_answer_then_the_same_for_a_repeat(self, fb, tenant_id):
        h = await fb.key(tenant_id)
        ext = f"typeform-{uuid.uuid4().hex[:6]}"
        body = {"external_id": ext, "customer_id": "c-1", "kind": "nps", "score": 9}
        first = await fb.client.post("/v1/survey-responses", json=body, headers=h)
        repeat = await fb.client.post("/v1/survey-responses", json=body, headers=h)
        assert first.status_code == 201
        answer = first.json()
        assert list(answer) == ["id", "external_id", "band", "created"]
        assert answer == {
            "id": answer["id"],
            "external_id": ext,
            "band": "promoter",
            "created": True,
        }
        assert repeat.status_code == 200
        assert repeat.json() == {**answer, "created": False}

    async def test_a_repeat_with_another_score_answers_the_first_answers_band(self, fb, tenant_id):
        h = await fb.key(tenant_id)
        ext = f"typeform-{uuid.uuid4().hex[:6]}"
        body = {"external_id": ext, "customer_id": "c-1", "kind": "nps", "score": 9}
        first = await fb.client.post("/v1/survey-responses", json=body, headers=h)
        changed = await fb.client.post("/v1/survey-responses", json={**body, "score": 2}, headers=h)
        assert first.status_code == 201 and changed.status_code == 200
        assert changed.json() == {**first.json(), "created": False}  # promoter, not detractor


class TestMetricsAnswers:
    async def test_keys_in_order_and_nulls_for_an_empty_window(self, fb, tenant_id):
        h = await fb.key(tenant_id)
        window = {"from": "2026-03-02T00:00:00Z", "to": "2026-03-04T00:00:00Z", "interval": "day"}
        shapes = {
            "nps": (["promoters", "passives", "detractors"], "nps"),
            "csat": (["satisfied", "neutral", "dissatisfied"], "csat"),
            "ces": (["satisfied", "neutral", "dissatisfied"], "ces_satisfied_pct"),
        }
        for kind, (bands, figure) in shapes.items():
            r = await fb.client.get(f"/v1/metrics/{kind}", params=window, headers=h)
            assert r.status_code == 200, r.text
            m = r.json()
            assert list(m) == ["kind", "from", "to", "interval", "sku", "total", "series"]
            assert (m["kind"], m["from"], m["to"], m["sku"]) == (
                kind,
                "2026-03-02T00:00:00+00:00",
                "2026-03-04T00:00:00+00:00",
                None,
            )
            assert m["total"] == {
                **dict.fromkeys(bands, 0),
                "responses": 0,
                "average": None,
                "sent": 0,
                "answered": 0,
                "response_rate": None,
                figure: None,
            }
            assert list(m["total"]) == [*bands, *FIGURES, figure]
            assert [b["start"] for b in m["series"]] == [
                "2026-03-02T00:00:00+00:00",
                "2026-03-03T00:00:00+00:00",
            ]
            assert list(m["series"][0]) == ["start", *bands, *FIGURES, figure]

    async def test_support_metrics_of_a_tenant_without_tickets(self, fb, tenant_id):
        h = await fb.key(tenant_id)
        window = {"from": "2026-03-02T00:00:00Z", "to": "2026-03-09T00:00:00Z"}
        r = await fb.client.get("/v1/metrics/support", params=window, headers=h)
        assert r.status_code == 200, r.text
        assert r.json() == {
            "from": "2026-03-02T00:00:00+00:00",
            "to": "2026-03-09T00:00:00+00:00",
            "weeks": [],
            "csat_by_ticket": [],
        }


class TestSettingsAnswers:
    async def test_put_answers_what_was_stored_and_get_the_branding(self, fb, tenant_id):
        h = await fb.key(tenant_id)
        before = await fb.client.get("/v1/settings", headers=h)
        assert before.json() == {
            "name": "our shop",
            "brand_color": "#3b5bdb",
            "manual_moderation": False,
        }
        put = await fb.client.put("/v1/settings", json={"brand_color": "#112233"}, headers=h)
        assert put.status_code == 200
        # The answer is what was sent (a name left out is null), the page uses defaults.
        assert put.json() == {"name": None, "brand_color": "#112233", "manual_moderation": False}
        after = await fb.client.get("/v1/settings", headers=h)
        assert after.json() == {
            "name": "our shop",
            "brand_color": "#112233",
            "manual_moderation": False,
        }
