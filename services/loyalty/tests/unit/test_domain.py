"""Rules and ledger arithmetic: fast, pure, property-based where it matters."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from afterglow.loyalty.domain import (
    InsufficientPoints,
    Lot,
    OrderRecord,
    ProgramRules,
    Wallet,
    add_months,
    balances,
    clawback_target,
    earning_basis,
    earns_at,
    order_clawback_target,
    order_points,
    review_bonus,
    tier_direction,
    tier_for,
    tier_progress,
)

T0 = datetime(2026, 1, 1, tzinfo=UTC)
RULES = ProgramRules()


class TestRules:
    def test_defaults_are_valid(self):
        assert RULES.expiry_months == 12
        assert RULES.return_window_days == 30

    def test_rejects_unknown_field_naming_it(self):
        with pytest.raises(ValidationError) as exc:
            ProgramRules.model_validate({"bonuses": {"review_min_rating": 4}})
        assert exc.value.errors()[0]["loc"] == ("bonuses", "review_min_rating")

    def test_rejects_tiers_out_of_order(self):
        with pytest.raises(ValidationError, match="strictly increasing"):
            ProgramRules.model_validate(
                {"tiers": [{"name": "a", "threshold": 0}, {"name": "b", "threshold": 0}]}
            )

    def test_fixed_discount_needs_an_amount(self):
        with pytest.raises(ValidationError, match="amount_minor"):
            ProgramRules.model_validate(
                {"rewards": [{"id": "x", "name": "x", "kind": "fixed_discount", "points_price": 1}]}
            )

    @given(st.integers(min_value=1, max_value=5))
    def test_review_bonus_never_depends_on_rating(self, rating):
        # The bonus function takes no rating at all; this pins that every rating gets it.
        assert review_bonus(RULES) == RULES.bonuses.review > 0


class TestArithmetic:
    @pytest.mark.parametrize(
        ("mode", "total", "expected"),
        [
            ("down", 1_234, 61),
            ("nearest", 1_234, 62),
            ("up", 1_234, 62),
            ("nearest", 1_230, 62),
            ("up", 1_220, 61),
        ],
    )
    def test_rounding_modes(self, mode, total, expected):
        # 1234 cents at 5 points per unit of 100 cents = 61.7 points
        assert order_points(ProgramRules(points_per_unit=5, rounding=mode), total) == expected

    def test_multiplier_rounds_once(self):
        rules = ProgramRules(points_per_unit=1, rounding="down")
        assert order_points(rules, 1_050, Decimal("1.5")) == 15  # 10.5 * 1.5 = 15.75

    @given(
        points=st.integers(0, 10_000),
        total=st.integers(1, 1_000_000),
        refunds=st.lists(st.integers(0, 200_000), max_size=6),
    )
    def test_cumulative_clawback_never_exceeds_points(self, points, total, refunds):
        refunded, last = 0, 0
        for r in refunds:
            refunded += r
            target = clawback_target(points, refunded, total, full=False)
            assert last <= target <= points
            last = target
        assert clawback_target(points, refunded, total, full=True) == points

    def test_add_months_clamps_day(self):
        assert add_months(datetime(2026, 1, 31, tzinfo=UTC), 1).day == 28


class TestTiers:
    def test_tier_and_progress(self):
        assert tier_for(RULES, 49_999).name == "bronze"
        assert tier_for(RULES, 50_000).name == "silver"
        p = tier_progress(RULES, 60_000)
        assert (p.tier, p.next_tier, p.remaining) == ("silver", "gold", 40_000)
        assert tier_progress(RULES, 200_000).next_tier is None

    def test_direction(self):
        assert tier_direction(RULES, "bronze", "gold") == "up"
        assert tier_direction(RULES, "gold", "silver") == "down"
        assert tier_direction(RULES, None, "bronze") == "up"
        assert tier_direction(RULES, "gold", "gold") is None


class TestOrderEarning:
    FULFILLED = ProgramRules(earning_statuses=["fulfilled"])

    def test_a_voided_order_never_earns(self):
        cancelled = OrderRecord("o1", 10_000, "USD", T0, cancelled=True)
        flagged = OrderRecord("o2", 10_000, "USD", T0)
        flagged.record_refund("rf1", 1, full=True)
        summed = OrderRecord("o3", 10_000, "USD", T0)
        summed.record_refund("rf1", 6_000, full=False)
        summed.record_refund("rf2", 4_000, full=False)
        for order in (cancelled, flagged, summed):
            assert order.voided and order.net_minor == 0
            assert not earns_at(self.FULFILLED, "fulfilled", order)

    def test_a_partly_refunded_order_earns_on_the_rest(self):
        order = OrderRecord("o1", 10_000, "USD", T0)
        order.record_refund("rf1", 4_000, full=False)
        assert earns_at(self.FULFILLED, "fulfilled", order)
        assert not earns_at(self.FULFILLED, "placed", order)
        assert order_points(RULES, order.net_minor) == 300

    def test_a_free_order_still_earns_its_bonus(self):
        assert earns_at(RULES, "placed", OrderRecord("o1", 0, "USD", T0))

    def test_a_lot_without_basis_claws_back_on_the_total(self):
        order = OrderRecord("o1", 10_000, "USD", T0)
        order.record_refund("rf1", 2_500, full=False)
        assert order_clawback_target(order_lot("o1", 500, T0), order) == 125

    @given(
        total=st.integers(1, 1_000_000),
        before=st.lists(st.integers(0, 300_000), max_size=3),
        after=st.lists(st.integers(0, 300_000), max_size=4),
    )
    def test_refunds_before_earning_are_never_clawed_back(self, total, before, after):
        order = OrderRecord("o1", total, "USD", T0)
        for i, amount in enumerate(before):
            order.record_refund(f"b{i}", amount, full=False)
        if not earns_at(RULES, "placed", order):
            return
        lot = order_lot("o1", order_points(RULES, order.net_minor), T0)
        lot.rule_snapshot = earning_basis(order)
        assert order_clawback_target(lot, order) == 0
        last = 0
        for i, amount in enumerate(after):
            order.record_refund(f"a{i}", amount, full=False)
            target = order_clawback_target(lot, order)
            assert last <= target <= lot.points
            last = target
        if order.refunded_minor >= total:
            assert last == lot.points
        order.record_refund("full", 0, full=True)
        assert order_clawback_target(lot, order) == lot.points


def order_lot(oid: str, points: int, at: datetime) -> Lot:
    return Lot(
        id=f"lot-{oid}", source="order", source_id=oid, order_id=oid, points=points, earned_at=at
    )


class TestLedgerScenarios:
    def test_refund_after_redemption_leaves_debt_repaid_by_later_earnings(self):
        w, entries, now = Wallet(), [], T0
        lot = order_lot("o1", 1000, now)
        entries += w.add_lot(lot, RULES, now)
        w.schedule(lot, now)
        entries += w.release(lot, RULES, now)
        entries += w.redeem(800, now, "r1", "redeem")
        entries += w.clawback(lot, 1000, now, "refund")
        assert (w.available, w.debt) == (-800, 800)
        with pytest.raises(InsufficientPoints):
            w.redeem(1, now, "r2", "redeem")
        bonus = Lot(
            id="b", source="review", source_id="rv", points=500, earned_at=now, available_at=now
        )
        entries += w.add_lot(bonus, RULES, now)
        assert (w.available, w.debt, bonus.remaining) == (-300, 300, 0)
        w.check()
        assert balances(entries) == (w.available, w.pending)

    def test_oldest_points_expire_first(self):
        w, now = Wallet(), T0
        old = Lot(
            id="old", source="review", source_id="a", points=100, earned_at=now, available_at=now
        )
        w.add_lot(old, RULES, now)
        later = now + timedelta(days=200)
        new = Lot(
            id="new",
            source="review",
            source_id="b",
            points=100,
            earned_at=later,
            available_at=later,
        )
        w.add_lot(new, RULES, later)
        w.redeem(50, later, "r", "redeem")  # spends the oldest lot first
        assert (old.remaining, new.remaining) == (50, 100)
        expired = w.expire(now + timedelta(days=366))
        assert [e.available_delta for e in expired] == [-50]
        assert w.available == 100
        w.check()

    def test_refund_applied_twice_changes_nothing(self):
        order = OrderRecord("o1", 10_000, "USD", T0)
        assert order.record_refund("rf1", 2_500, False)
        assert not order.record_refund("rf1", 2_500, False)
        assert order.refunded_minor == 2_500


# --- property: random sequences of orders, refunds, redemptions and expiries ----------

op = st.one_of(
    st.tuples(st.just("order"), st.integers(0, 50_000)),
    st.tuples(st.just("fulfil"), st.integers(0, 20)),
    st.tuples(st.just("refund"), st.integers(0, 20), st.integers(1, 30_000), st.booleans()),
    st.tuples(st.just("redeem"), st.integers(1, 3_000)),
    st.tuples(st.just("advance"), st.integers(1, 200)),
    st.tuples(st.just("bonus"), st.integers(1, 500)),
    st.tuples(st.just("adjust"), st.integers(-500, 500)),
)


class TestLedgerProperties:
    @settings(max_examples=300, deadline=None)
    @given(ops=st.lists(op, max_size=40), replay=st.booleans())
    def test_balance_is_sum_of_entries_and_never_overdrawn(self, ops, replay):
        w, entries, now = Wallet(), [], T0
        orders: list[tuple[OrderRecord, Lot]] = []
        for i, step in enumerate(ops):
            before = (w.available, w.pending)
            kind = step[0]
            if kind == "order":
                o = OrderRecord(f"o{i}", step[1], "USD", now)
                lot = order_lot(o.order_id, order_points(RULES, step[1]), now)
                entries += w.add_lot(lot, RULES, now)
                orders.append((o, lot))
            elif kind == "fulfil" and orders:
                _, lot = orders[step[1] % len(orders)]
                w.schedule(lot, now + timedelta(days=RULES.return_window_days))
            elif kind == "refund" and orders:
                o, lot = orders[step[1] % len(orders)]
                for _ in range(2 if replay else 1):  # a redelivered refund changes nothing
                    o.record_refund(f"rf{i}", step[2], step[3])
                    target = clawback_target(
                        lot.points, o.refunded_minor, o.total_minor, o.fully_refunded
                    )
                    entries += w.clawback(lot, target, now, "refund")
            elif kind == "redeem":
                try:
                    entries += w.redeem(step[1], now, f"r{i}", "redeem")
                except InsufficientPoints:
                    assert (w.available, w.pending) == before
                    assert w.spendable < step[1]
            elif kind == "advance":
                now += timedelta(days=step[1])
                for _, lot in orders:
                    entries += w.release(lot, RULES, now)
                entries += w.expire(now)
            elif kind == "bonus":
                lot = Lot(
                    id=f"b{i}",
                    source="review",
                    source_id=f"b{i}",
                    points=step[1],
                    earned_at=now,
                    available_at=now,
                )
                entries += w.add_lot(lot, RULES, now)
            elif kind == "adjust" and step[1] != 0:
                try:
                    entries += w.adjust(step[1], RULES, now, "fix", "tester")
                except InsufficientPoints:
                    assert w.spendable < -step[1]
            w.check()
            assert balances(entries) == (w.available, w.pending)
            # Only a clawback may leave a debt; everything else keeps what it found.
            if kind in ("redeem", "adjust") and before[0] >= 0:
                assert w.available >= 0
