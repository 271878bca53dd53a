"""Minor units and their display (afterglow.events.money)."""

from __future__ import annotations

import pytest

from afterglow.events.money import currency_exponent, format_money


@pytest.mark.parametrize(
    ("minor", "currency", "shown"),
    [
        (1299, "EUR", "12.99 EUR"),
        (5, "usd", "0.05 USD"),
        (4030, "JPY", "4030 JPY"),
        (12345, "KWD", "12.345 KWD"),
        (-250, "GBP", "-2.50 GBP"),
        (0, "EUR", "0.00 EUR"),
    ],
)
def test_format_money(minor: int, currency: str, shown: str) -> None:
    assert format_money(minor, currency) == shown


def test_exponents() -> None:
    assert [currency_exponent(c) for c in ("EUR", "JPY", "BHD", "XYZ")] == [2, 0, 3, 2]
