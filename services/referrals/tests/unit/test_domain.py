from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from urllib.parse import parse_qs, urlsplit

import pytest
from hypothesis import given
from hypothesis import strategies as st

from afterglow.referrals import domain
from afterglow.referrals.domain import Facts, Identity, Limits

T0 = datetime(2026, 3, 1, 12, 0, tzinfo=UTC)


class TestCodes:
    @given(st.integers(min_value=6, max_value=8), st.integers())
    def test_generated_codes_avoid_ambiguous_characters(self, length: int, seed: int) -> None:
        code = domain.generate_code(length, choice=random.Random(seed).choice)
        assert len(code) == length
        assert not set(code) & set("0O1IL")
        assert domain.is_code_shaped(code)

    @given(st.text(alphabet=domain.CODE_ALPHABET, min_size=6, max_size=8))
    def test_normalization_recovers_a_code_typed_loosely(self, code: str) -> None:
        typed = " " + "-".join(code[i : i + 3] for i in range(0, len(code), 3)).lower() + " "
        assert domain.normalize_code(typed) == code

    def test_ordinary_discount_codes_are_not_code_shaped(self) -> None:
        assert not domain.is_code_shaped("WELCOME10")  # too long and has 0, 1, L, O
        assert not domain.is_code_shaped("SAVE5")
        assert not domain.is_code_shaped("HELLO2")

    def test_rejects_lengths_outside_the_range(self) -> None:
        with pytest.raises(ValueError):
            domain.generate_code(5)

    def test_share_url_carries_the_code_as_ref(self) -> None:
        url = domain.share_url(
            "https://shop.example/pages/friends?utm_source=ref&ref=OLD", "ABC234"
        )
        q = parse_qs(urlsplit(url).query)
        assert q["ref"] == ["ABC234"]
        assert q["utm_source"] == ["ref"]
        assert url.startswith("https://shop.example/pages/friends?")

    def test_contact_hash_normalizes(self) -> None:
        assert domain.contact_hash(" Ada@Example.com ") == domain.contact_hash("ada@example.com")
        assert domain.contact_hash("+1 (555) 010-2030") == domain.contact_hash("+15550102030")
        assert domain.contact_hash(None) is None


class TestWindow:
    @given(st.integers(min_value=-200 * 24, max_value=200 * 24))
    def test_window_is_inclusive_start_exclusive_end(self, hours: int) -> None:
        placed = T0 + timedelta(hours=hours)
        inside = domain.within_window(T0, placed, 90)
        assert inside == (0 <= hours < 90 * 24)
        decision = domain.check_window(T0, placed, 90)
        assert decision.accepted == inside
        if not inside:
            assert decision.reason == "outside_window"

    def test_confirmation_waits_for_the_return_window(self) -> None:
        assert domain.confirmation_due(T0, 30) == T0 + timedelta(days=30)


def identity(cid: str, email: str | None = None, phone: str | None = None, addr: str | None = None):
    return Identity(
        customer_id=cid,
        email_hashes=frozenset([email] if email else []),
        phone_hashes=frozenset([phone] if phone else []),
        address_hashes=frozenset([addr] if addr else []),
    )


class TestPolicy:
    DEFAULTS = domain.Policy(
        share_base_url="https://default.example/r",
        return_window_days=30,
        attribution_window_days=90,
    )

    def test_a_tenant_that_set_nothing_gets_the_defaults(self) -> None:
        policy = self.DEFAULTS.overridden_by({})
        assert (policy.return_window_days, policy.attribution_window_days) == (30, 90)
        assert set(policy.sources.values()) == {"default"}

    def test_a_tenant_value_wins_and_a_null_falls_back(self) -> None:
        policy = self.DEFAULTS.overridden_by(
            {"share_base_url": None, "return_window_days": 0, "attribution_window_days": None}
        )
        assert policy.return_window_days == 0  # a zero is a choice, not "unset"
        assert policy.share_base_url == "https://default.example/r"
        assert dict(policy.sources) == {
            "share_base_url": "default",
            "return_window_days": "tenant",
            "attribution_window_days": "default",
            "referee_reward": "default",
        }
        assert policy.referee_reward == domain.DEFAULT_REFEREE_REWARD

    def test_a_tenant_reward_replaces_the_default(self) -> None:
        own = domain.RefereeReward(kind="fixed_amount", amount=500, currency="EUR", valid_days=7)
        policy = self.DEFAULTS.overridden_by({"referee_reward": own})
        assert policy.referee_reward == own
        assert policy.sources["referee_reward"] == "tenant"

    @pytest.mark.parametrize(
        ("reward", "label"),
        [
            (domain.RefereeReward(kind="percentage", percent=15, valid_days=45), "15% off"),
            (
                domain.RefereeReward(
                    kind="fixed_amount", amount=500, currency="EUR", valid_days=30
                ),
                "5.00 EUR off",
            ),
            # The currency's own minor unit: yen have none, dinars three.
            (
                domain.RefereeReward(
                    kind="fixed_amount", amount=1000, currency="JPY", valid_days=30
                ),
                "1000 JPY off",
            ),
            (
                domain.RefereeReward(
                    kind="fixed_amount", amount=1500, currency="KWD", valid_days=30
                ),
                "1.500 KWD off",
            ),
        ],
    )
    def test_a_reward_is_labelled_in_its_currency(self, reward, label) -> None:
        assert reward.label() == label

    def test_the_tenant_windows_drive_due_time_and_attribution(self) -> None:
        policy = self.DEFAULTS.overridden_by(
            {"return_window_days": 14, "attribution_window_days": 7}
        )
        assert policy.confirmation_due(T0) == T0 + timedelta(days=14)
        limits = policy.limits(Limits(attribution_days=90, advocate_cap=2))
        assert (limits.attribution_days, limits.advocate_cap) == (7, 2)
        late = domain.evaluate(facts(placed_at=T0 + timedelta(days=8)), limits)
        assert (late.reason, late.detail) == (
            "outside_window",
            "order placed more than 7 days after",
        )


class TestSelfReferral:
    @pytest.mark.parametrize(
        ("referee", "detail"),
        [
            (identity("adv"), "same customer"),
            (identity("other", email="e1"), "same email"),
            (identity("other", phone="p1"), "same phone"),
            (identity("other", addr="a1"), "same shipping address"),
        ],
    )
    def test_each_shared_identifier_is_a_self_referral(self, referee: Identity, detail: str):
        advocate = identity("adv", "e1", "p1", "a1")
        decision = domain.check_self_referral(advocate, referee)
        assert (decision.outcome, decision.reason, decision.detail) == (
            "reject",
            "self_referral",
            detail,
        )

    def test_a_stranger_passes(self) -> None:
        advocate = identity("adv", "e1", "p1", "a1")
        assert domain.check_self_referral(advocate, identity("x", "e2", "p2", "a2")).accepted

    def test_missing_hashes_never_match(self) -> None:
        assert domain.check_self_referral(identity("adv"), identity("x")).accepted


class TestNewCustomer:
    @pytest.mark.parametrize(
        ("count", "seen", "ok"),
        [
            (None, 0, True),
            (1, 0, True),
            (0, 0, True),
            (2, 0, False),
            (1, 1, False),
            (None, 3, False),
        ],
    )
    def test_only_a_first_order_counts(self, count: int | None, seen: int, ok: bool) -> None:
        decision = domain.check_new_customer(count, seen)
        assert decision.accepted == ok
        if not ok:
            assert decision.reason == "existing_customer"


class TestLimits:
    @given(st.integers(min_value=0, max_value=50), st.integers(min_value=1, max_value=20))
    def test_cap_rejects_from_the_cap_on(self, prior: int, cap: int) -> None:
        decision = domain.check_advocate_cap(prior, cap, 30)
        assert decision.accepted == (prior < cap)
        assert decision.outcome in ("accept", "reject")

    @given(st.integers(min_value=0, max_value=50), st.integers(min_value=1, max_value=20))
    def test_velocity_holds_rather_than_rejects(self, recent: int, limit: int) -> None:
        decision = domain.check_velocity(recent, limit, timedelta(hours=1))
        assert decision.outcome == ("hold" if recent >= limit else "accept")
        if decision.outcome == "hold":
            assert decision.reason == "velocity_review"


def facts(**overrides) -> Facts:
    base = dict(
        invited_at=T0,
        placed_at=T0 + timedelta(days=1),
        advocate=identity("adv", "e1", "p1", "a1"),
        referee=identity("ref", "e2", "p2", "a2"),
        platform_orders_count=1,
        earlier_orders_seen=0,
        advocate_conversions_in_period=0,
        recent_from_code=0,
    )
    base.update(overrides)
    return Facts(**base)  # type: ignore[arg-type]


class TestEvaluate:
    def test_a_clean_referral_is_accepted(self) -> None:
        assert domain.evaluate(facts(), Limits()).accepted

    def test_rejections_win_over_a_velocity_hold(self) -> None:
        decision = domain.evaluate(
            facts(referee=identity("adv"), recent_from_code=10, advocate_conversions_in_period=99),
            Limits(),
        )
        assert decision.reason == "self_referral"

    def test_window_is_checked_first(self) -> None:
        decision = domain.evaluate(
            facts(placed_at=T0 + timedelta(days=91), referee=identity("adv")), Limits()
        )
        assert decision.reason == "outside_window"

    def test_cap_before_velocity(self) -> None:
        decision = domain.evaluate(
            facts(advocate_conversions_in_period=10, recent_from_code=5), Limits()
        )
        assert decision.reason == "advocate_cap"

    def test_velocity_holds(self) -> None:
        decision = domain.evaluate(facts(recent_from_code=3), Limits())
        assert decision.outcome == "hold"


def test_referral_rate() -> None:
    assert domain.referral_rate(0, 0) == 0.0
    assert domain.referral_rate(1, 4) == 0.25
