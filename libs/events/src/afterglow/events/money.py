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


# Active ISO 4217 codes of money a shop can price in: national and regional currencies
# and the fund codes. Left out on purpose: precious metals, SDR and bond units, the
# test and "no currency" codes (XAU, XDR, XTS, XXX...), which no discount is given in.
ISO_CURRENCIES = frozenset(
    """
    AED AFN ALL AMD ANG AOA ARS AUD AWG AZN BAM BBD BDT BGN BHD BIF BMD BND BOB BOV BRL
    BSD BTN BWP BYN BZD CAD CDF CHE CHF CHW CLF CLP CNY COP COU CRC CUC CUP CVE CZK DJF
    DKK DOP DZD EGP ERN ETB EUR FJD FKP GBP GEL GHS GIP GMD GNF GTQ GYD HKD HNL HTG HUF
    IDR ILS INR IQD IRR ISK JMD JOD JPY KES KGS KHR KMF KPW KRW KWD KYD KZT LAK LBP LKR
    LRD LSL LYD MAD MDL MGA MKD MMK MNT MOP MRU MUR MVR MWK MXN MXV MYR MZN NAD NGN NIO
    NOK NPR NZD OMR PAB PEN PGK PHP PKR PLN PYG QAR RON RSD RUB RWF SAR SBD SCR SDG SEK
    SGD SHP SLE SLL SOS SRD SSP STN SVC SYP SZL THB TJS TMT TND TOP TRY TTD TWD TZS UAH
    UGX USD USN UYI UYU UYW UZS VED VES VND VUV WST XAF XCD XCG XOF XPF YER ZAR ZMW ZWG
    ZWL
    """.split()  # noqa: SIM905 (a table to read, not a list to scroll)
)


def is_iso_currency(code: str) -> bool:
    """True for an ISO 4217 code in its canonical form (three upper-case letters): a
    shape check alone lets "ABC" through, which a shop refuses only when the discount
    is created, long after the setting was accepted."""
    return code in ISO_CURRENCIES


def currency_exponent(currency: str) -> int:
    return _EXPONENTS.get(currency.upper(), 2)


def format_money(amount_minor: int, currency: str) -> str:
    """``1299, "EUR"`` -> ``"12.99 EUR"``; ``4030, "JPY"`` -> ``"4030 JPY"``. Neutral on
    purpose: symbols and separators depend on the reader's locale, which templates know
    better (they get the minor units and the currency too)."""
    exponent = currency_exponent(currency)
    value = Decimal(amount_minor).scaleb(-exponent)
    return f"{value:.{exponent}f} {currency.upper()}"
