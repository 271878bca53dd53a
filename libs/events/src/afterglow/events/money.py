"""Money in integer minor units: the exponent of each currency, and a display form.

Every amount in the catalog is an integer of minor units with an ISO 4217 code; this is
the one place that knows how many digits the minor unit has (JPY none, KWD three).
"""

from __future__ import annotations

from decimal import Decimal

# ISO 4217 currencies whose minor unit is not 2 (the rest are cents).
_EXPONENTS = {
    **dict.fromkeys(
        [
            "BIF",
            "CLP",
            "DJF",
            "GNF",
            "ISK",
            "JPY",
            "KMF",
            "KRW",
            "PYG",
            "RWF",
            "UGX",
            "UYI",
            "VND",
            "VUV",
            "XAF",
            "XOF",
            "XPF",
        ],
        0,
    ),
    **dict.fromkeys(["BHD", "IQD", "JOD", "KWD", "LYD", "OMR", "TND"], 3),
}


def currency_exponent(currency: str) -> int:
    return _EXPONENTS.get(currency.upper(), 2)


def format_money(amount_minor: int, currency: str) -> str:
    """``1299, "EUR"`` -> ``"12.99 EUR"``; ``4030, "JPY"`` -> ``"4030 JPY"``. Neutral on
    purpose: symbols and separators depend on the reader's locale, which templates know
    better (they get the minor units and the currency too)."""
    exponent = currency_exponent(currency)
    value = Decimal(amount_minor).scaleb(-exponent)
    return f"{value:.{exponent}f} {currency.upper()}"
