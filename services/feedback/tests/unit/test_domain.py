"""Pure rules: bands, NPS arithmetic, signed links, the change window, moderation."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from hypothesis import given
from hypothesis import strategies as st

from afterglow.feedback import domain

NOW = datetime(2026, 3, 2, 12, tzinfo=UTC)


class TestBands:
    @pytest.mark.parametrize(
        ("kind", "score", "band"),
        [
            ("nps", 10, "promoter"),
            ("nps", 9, "promoter"),
            ("nps", 8, "passive"),
            ("nps", 7, "passive"),
            ("nps", 6, "detractor"),
            ("nps", 0, "detractor"),
            ("csat", 5, "satisfied"),
            ("csat", 4, "satisfied"),
            ("csat", 3, "neutral"),
            ("csat", 2, "dissatisfied"),
            ("csat", 1, "dissatisfied"),
            ("ces", 7, "satisfied"),
            ("ces", 5, "satisfied"),
            ("ces", 4, "neutral"),
            ("ces", 3, "dissatisfied"),
            ("ces", 1, "dissatisfied"),
        ],
    )
    def test_band_edges(self, kind, score, band):
        assert domain.band(kind, score) == band

    @pytest.mark.parametrize(("kind", "score"), [("nps", 11), ("nps", -1), ("csat", 0), ("ces", 8)])
    def test_rejects_out_of_scale(self, kind, score):
        with pytest.raises(domain.InvalidScore):
            domain.band(kind, score)


class TestNpsArithmetic:
    @pytest.mark.parametrize(
        ("p", "pa", "d", "expected"),
        [
            (0, 0, 0, None),  # empty window: no score, not zero
            (1, 0, 0, 100.0),
            (0, 0, 1, -100.0),
            (0, 5, 0, 0.0),
            (2, 1, 1, 25.0),
            (1, 1, 1, 0.0),
            (1, 0, 2, -33.3),
            (2, 0, 1, 33.3),
            (3, 1, 4, -12.5),
        ],
    )
    def test_hand_computed(self, p, pa, d, expected):
        assert domain.nps(p, pa, d) == expected

    @given(st.integers(0, 10_000), st.integers(0, 10_000), st.integers(0, 10_000))
    def test_bounded_and_antisymmetric(self, p, pa, d):
        score = domain.nps(p, pa, d)
        if p + pa + d == 0:
            assert score is None
            return
        assert score is not None
        assert -100.0 <= score <= 100.0
        assert domain.nps(d, pa, p) == -score
        assert (score > 0) == (p > d) or abs(score) < 0.05

    @given(st.lists(st.integers(0, 10), max_size=200))
    def test_equals_definition_over_raw_scores(self, scores):
        bands = [domain.band("nps", s) for s in scores]
        result = domain.nps(
            bands.count("promoter"), bands.count("passive"), bands.count("detractor")
        )
        if not scores:
            assert result is None
        else:
            promoters = sum(s >= 9 for s in scores) / len(scores)
            detractors = sum(s <= 6 for s in scores) / len(scores)
            # One decimal is at most half a tenth away: exactly 0.05 when the score ends in
            # 5 (-31.25 rounds to -31.2), so the bound holds a float's error above it.
            assert result == pytest.approx(100 * (promoters - detractors), abs=0.05 + 1e-9)

    def test_csat_and_rate_are_null_when_empty(self):
        assert domain.csat(0, 0) is None
        assert domain.csat(2, 4) == 50.0
        assert domain.rate(0, 0) is None
        assert domain.rate(1, 3) == 0.3333


class TestTokens:
    def test_round_trip(self):
        token = domain.sign("k", "s", ["t1", "abc"], NOW + timedelta(days=1))
        parts, exp = domain.verify("k", "s", token, NOW)
        assert parts == ["t1", "abc"]
        assert exp == NOW + timedelta(days=1)

    def test_expired_only_after_signature_checks(self):
        token = domain.sign("k", "s", ["t1", "abc"], NOW)
        with pytest.raises(domain.ExpiredToken):
            domain.verify("k", "s", token, NOW)
        with pytest.raises(domain.BadToken):
            domain.verify("other", "s", token, NOW)

    def test_purpose_is_bound(self):
        token = domain.sign("k", "s", ["t1", "abc"], NOW + timedelta(days=1))
        with pytest.raises(domain.BadToken):
            domain.verify("k", "r", token, NOW)

    @given(st.integers(0, 200), st.sampled_from("AQz-_0"))
    def test_any_single_character_change_is_rejected(self, pos, char):
        token = domain.sign("k", "s", ["t1", "abc"], NOW + timedelta(days=1))
        pos = pos % len(token)
        if token[pos] == char or token[pos] == ".":
            return
        tampered = token[:pos] + char + token[pos + 1 :]
        try:
            parts, _ = domain.verify("k", "s", tampered, NOW)
        except (domain.BadToken, domain.ExpiredToken):
            return
        # Base64 padding bits can absorb a change to the last character of a part;
        # then the decoded bytes, and so the ids, are unchanged.
        assert parts == ["t1", "abc"]

    def test_rejects_separator_in_fields(self):
        with pytest.raises(ValueError):
            domain.sign("k", "s", ["a|b"], NOW)


class TestChangeWindow:
    def test_window_counts_from_first_answer(self):
        window = timedelta(hours=24)
        assert domain.can_change(None, NOW, window)
        assert domain.can_change(NOW, NOW + timedelta(hours=24), window)
        assert not domain.can_change(NOW, NOW + timedelta(hours=24, seconds=1), window)


class TestModeration:
    @pytest.mark.parametrize(
        ("title", "body", "status"),
        [
            ("Great", "Exactly as described, fast shipping.", "published"),
            (None, None, "published"),
            ("Ok", "see http://x.example", "pending"),
            (None, "meh", "pending"),
            ("AMAZING PRODUCT", "I LOVE IT SO MUCH", "pending"),
            (None, "Sooooooo good, really happy", "pending"),
            ("Rubbish", "What a load of shit, honestly.", "rejected"),
            (None, "BUYYYYYYY AT WWW.CHEAP.RU", "rejected"),
        ],
    )
    def test_rules(self, title, body, status):
        assert domain.moderate(title, body, manual=False).status == status

    def test_manual_moderation_holds_clean_reviews(self):
        verdict = domain.moderate("Great", "Exactly as described.", manual=True)
        assert verdict == domain.Moderation("pending", ("manual_moderation",))

    def test_scunthorpe_words_are_not_profanity(self):
        assert not domain.has_profanity("Scunthorpe", "a classic shitake mushroom grinder")

    def test_rating_summary(self):
        avg, dist, total = domain.rating_summary({5: 2, 4: 1, 1: 1})
        assert (avg, total) == (3.75, 4)
        assert dist == {"1": 1, "2": 0, "3": 0, "4": 1, "5": 2}
        assert domain.rating_summary({}) == (None, {str(i): 0 for i in range(1, 6)}, 0)
