"""Minor units and their display (afterglow.events.money)."""

from __future__ import annotations

import pytest

from afterglow.events.money import (
    _EXPONENTS,
    ISO_CURRENCIES,
    currency_exponent,
    format_money,
    is_iso_currency,
)


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


@pytest.mark.parametrize("code", ["EUR", "USD", "JPY", "KWD", "XOF", "CHF"])
def test_a_currency_of_iso_4217_is_one(code: str) -> None:
    assert is_iso_currency(code)


@pytest.mark.parametrize("code", ["ABC", "eur", "EURO", "", "XAU", "XXX", "XTS"])
def test_a_made_up_code_a_metal_or_a_test_code_is_not_a_currency(code: str) -> None:
    assert not is_iso_currency(code)


def test_every_currency_with_another_exponent_is_an_iso_currency() -> None:
    """The exponent table and the code list describe one standard: a code in one and
    not the other is a typo in either."""
    assert set(_EXPONENTS) <= ISO_CURRENCIES
