"""The metric endpoints' period: whole UTC days, validated with the field at fault."""

from __future__ import annotations

from datetime import UTC, date, datetime

import pytest

from afterglow.kit.errors import Unprocessable
from afterglow.kit.period import MAX_PERIOD_DAYS, period_of


class TestPeriod:
    def test_both_days_are_included(self):
        p = period_of(date(2026, 1, 1), date(2026, 1, 31))
        assert p.start == datetime(2026, 1, 1, tzinfo=UTC)
        assert p.end == datetime(2026, 2, 1, tzinfo=UTC)

    def test_a_single_day_is_a_period(self):
        p = period_of(date(2026, 1, 1), date(2026, 1, 1))
        assert (p.end - p.start).days == 1

    def test_a_reversed_period_names_to(self):
        with pytest.raises(Unprocessable) as e:
            period_of(date(2026, 2, 1), date(2026, 1, 1))
        assert e.value.field == "to"

    def test_the_longest_period_is_accepted_one_more_day_is_not(self):
        first = date(2024, 1, 1)
        last = date.fromordinal(first.toordinal() + MAX_PERIOD_DAYS - 1)
        assert period_of(first, last).last == last
        with pytest.raises(Unprocessable) as e:
            period_of(first, date.fromordinal(last.toordinal() + 1))
        assert e.value.field == "to"
