"""The onboarding branch's "first order": decided once per instance from its
order.placed with the catalog's rule, the one loyalty's first-order bonus applies."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest

from afterglow.events.catalog import is_first_order
from afterglow.journeys import engine as d

T0 = datetime(2026, 1, 5, 12, 0, tzinfo=UTC)


def placed(order: str, at: datetime, count: int | None, **extra: object) -> d.SimEvent:
    data: dict[str, object] = {
        "order_id": order,
        "total": {"amount": 5000, "currency": "USD"},
        **extra,
    }
    if count is not None:
        data["customer_orders_count"] = count
    return d.SimEvent(type="order.placed", at=at, data=data)


def onboarding_kinds(records: list[d.SimRecord]) -> list[str]:
    return [
        a.params["kind"]
        for r in records
        for a in r.actions
        if a.type == "message" and a.params.get("kind") in ("welcome", "thank_you")
    ]


class TestFirstOrderBranch:
    @pytest.mark.parametrize(
        ("count", "kind"), [(0, "welcome"), (1, "welcome"), (5, "thank_you"), (None, "welcome")]
    )
    def test_the_count_on_the_order_decides_as_loyalty_does(self, count, kind):
        kinds = onboarding_kinds(d.simulate(d.DEFAULT_JOURNEY, [placed("o1", T0, count)]))
        assert kinds == [kind]
        assert (kind == "welcome") is is_first_order(count, earlier_orders_seen=0)

    def test_the_second_order_in_the_book_is_a_repeat(self):
        recs = d.simulate(
            d.DEFAULT_JOURNEY,
            [placed("o1", T0, 1), placed("o2", T0 + timedelta(days=1), 2)],
        )
        assert onboarding_kinds(recs) == ["welcome", "thank_you"]

    def test_without_counts_the_profiles_own_history_decides(self):
        recs = d.simulate(
            d.DEFAULT_JOURNEY,
            [placed("o1", T0, None), placed("o2", T0 + timedelta(days=1), None)],
        )
        assert onboarding_kinds(recs) == ["welcome", "thank_you"]

    def test_an_instance_keeps_its_decision(self):
        prof = d.project(
            d.Profile(),
            d.Occurrence("e1", d.PLACED, T0, {"order_id": "o1", "customer_orders_count": 1}),
        )
        out = d.handle_event(
            {(d.DEFAULT_JOURNEY.name, 1): d.DEFAULT_JOURNEY},
            {d.DEFAULT_JOURNEY.name: 1},
            [],
            d.Profile(),
            d.Occurrence("e1", d.PLACED, T0, {"order_id": "o1", "customer_orders_count": 1}),
            T0,
        )
        assert [r.state.first_order for r in out.results] == [True]
        assert prof.orders_count == 1


class TestSpendPerCurrency:
    def test_spend_is_kept_per_currency_and_never_summed(self):
        prof = d.Profile()
        for i, (amount, cur) in enumerate([(5000, "USD"), (21_192, "PLN"), (2500, "USD")]):
            prof = d.project(
                prof,
                d.Occurrence(
                    f"e{i}",
                    d.PLACED,
                    T0,
                    {"order_id": f"o{i}", "total": {"amount": amount, "currency": cur}},
                ),
            )
        assert prof.spent == {"USD": 7500, "PLN": 21_192}
        assert prof.spent_in("USD") == 7500 and prof.spent_in("EUR") == 0

    def test_shop_money_is_what_counts(self):
        prof = d.project(
            d.Profile(),
            d.Occurrence(
                "e1",
                d.PLACED,
                T0,
                {
                    "order_id": "o1",
                    "total": {"amount": 211_929, "currency": "PLN"},
                    "shop_total": {"amount": 211_929, "currency": "PLN"},
                    "presentment_total": {"amount": 49_700, "currency": "EUR"},
                },
            ),
        )
        assert prof.spent == {"PLN": 211_929}

    def test_spend_above_reads_its_own_currency(self):
        cond = d.Condition(spend_above=d.MoneyThreshold(amount=10_000, currency="PLN"))
        st = d.InstanceState(id="i", journey="j", version=1, started_at=T0)
        rich_in_pln = d.Profile(currency="USD", total_spent=100, spent={"USD": 100, "PLN": 20_000})
        assert d.holds(cond, rich_in_pln, st, T0)
        rich_in_usd = d.Profile(currency="USD", total_spent=50_000, spent={"USD": 50_000})
        assert not d.holds(cond, rich_in_usd, st, T0)

    def test_a_profile_from_before_per_currency_spend_keeps_its_figure(self):
        old = d.Profile.model_validate({"total_spent": 4000, "currency": "EUR"})
        assert old.spent_in("EUR") == 4000
        new = d.project(
            old,
            d.Occurrence(
                "e1", d.PLACED, T0, {"order_id": "o9", "total": {"amount": 100, "currency": "GBP"}}
            ),
        )
        assert new.spent == {"EUR": 4000, "GBP": 100}
