"""The answers that gained a response model (issue #16) are the answers clients had
before, key for key: a model drops a key it does not name and renders a value its own
way (a datetime as "...Z", not "+00:00"), so each answer is pinned whole here."""

from __future__ import annotations

from ..loyalty_support import Loyalty, new_id


class TestTypedAnswers:
    async def test_adjustment_and_redemption_answers_are_unchanged(
        self, loyalty: Loyalty, tenant_id
    ):
        c = new_id("c")
        h = await loyalty.key(tenant_id)
        adjusted = await loyalty.client.post(
            f"/v1/accounts/{c}/adjustments", json={"points": 600, "reason": "goodwill"}, headers=h
        )
        assert adjusted.status_code == 201, adjusted.text
        body = adjusted.json()
        assert set(body) == {"entry_id", "points", "balance"}
        assert body["entry_id"]
        assert (body["points"], body["balance"]) == (
            600,
            {"available": 600, "pending": 0, "debt": 0},
        )

        url = f"/v1/accounts/{c}/redemptions"
        keyed = {**h, "Idempotency-Key": "typed-1"}
        first = await loyalty.client.post(url, json={"reward_id": "five-off"}, headers=keyed)
        assert first.status_code == 201, first.text
        answer = first.json()
        assert set(answer) == {
            "redemption_id",
            "reward",
            "points",
            "code",
            "balance",
            "redeemed_at",
        }
        assert answer["reward"] == {
            "id": "five-off",
            "name": "$5 off",
            "kind": "fixed_discount",
            "points_price": 500,
            "amount_minor": 500,
            "percent": None,  # present, null: a client reads every key of the reward
        }
        assert (answer["points"], answer["balance"]) == (500, {"available": 100, "pending": 0})
        assert answer["code"].startswith("AG-")
        # As stored for the replay: Python's isoformat, the offset spelt "+00:00".
        assert answer["redeemed_at"].endswith("+00:00")
        assert "Idempotent-Replayed" not in first.headers

        again = await loyalty.client.post(url, json={"reward_id": "five-off"}, headers=keyed)
        assert again.status_code == 201
        assert again.headers["Idempotent-Replayed"] == "true"
        assert again.content == first.content  # the replay is the first answer, byte for byte

    async def test_program_metrics_and_rates_answer_every_key(self, loyalty: Loyalty, tenant_id):
        h = await loyalty.key(tenant_id)
        c = new_id("c")
        r = await loyalty.client.post(
            f"/v1/accounts/{c}/adjustments", json={"points": 40, "reason": "welcome"}, headers=h
        )
        assert r.status_code == 201, r.text
        m = (await loyalty.client.get("/v1/metrics", headers=h)).json()
        assert m == {
            "accounts": 1,
            "points_issued": 40,
            "points_redeemed": 0,
            "points_expired": 0,
            "points_clawed_back": 0,
            "points_outstanding": 40,
            "points_pending": 0,
            "points_debt": 0,
            "outstanding_liability": {"amount": 40, "currency": "USD"},
            "redemption_rate": 0.0,
            "orders_by_currency": [],
            "unpriced_orders": 0,
        }
        rates = await loyalty.client.get("/v1/exchange-rates", headers=h)
        assert rates.status_code == 200
        assert rates.json() == {"program_currency": "USD", "rates": []}
