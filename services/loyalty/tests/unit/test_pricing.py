"""Pricing an order in the program's currency: stated amount, the tenant's rate, or
unpriced with the reason; and relating refunds to the order in one currency."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

from hypothesis import given
from hypothesis import strategies as st

from afterglow.loyalty import domain as d

AS_OF = date(2026, 3, 1)


def rate(currency: str, value: str, quote: str = "USD") -> d.ExchangeRate:
    return d.ExchangeRate(currency, quote, Decimal(value), AS_OF)


class TestPriceOrder:
    def test_an_amount_in_the_program_currency_needs_no_rate(self):
        p = d.price_order("USD", [("PLN", 211_929), ("USD", 53_000)], {})
        assert (p.source_currency, p.value_minor, p.factor) == ("USD", 53_000, Decimal(1))

    def test_the_shop_money_is_converted_at_the_tenants_rate(self):
        p = d.price_order("USD", [("PLN", 211_929), ("EUR", 49_700)], {"PLN": rate("PLN", "0.25")})
        # 2,119.29 PLN x 0.25 = 529.8225 USD -> 529.82 (half up, to the cent)
        assert (p.source_currency, p.value_minor, p.rate, p.rate_as_of) == (
            "PLN",
            52_982,
            Decimal("0.25"),
            AS_OF,
        )

    def test_the_customers_currency_is_used_when_only_it_has_a_rate(self):
        p = d.price_order("USD", [("PLN", 211_929), ("EUR", 49_700)], {"EUR": rate("EUR", "1.08")})
        assert (p.source_currency, p.value_minor) == ("EUR", 53_676)

    def test_without_a_rate_the_order_is_unpriced_and_says_why(self):
        p = d.price_order("USD", [("PLN", 211_929), ("EUR", 49_700)], {})
        assert not p.priced and p.value_minor is None
        assert p.unpriced_reason is not None
        assert "PLN or EUR to USD" in p.unpriced_reason
        assert "/v1/exchange-rates/PLN" in p.unpriced_reason

    def test_a_rate_into_another_program_currency_is_not_used(self):
        p = d.price_order("USD", [("PLN", 100)], {"PLN": rate("PLN", "0.23", quote="EUR")})
        assert not p.priced

    def test_minor_units_of_different_sizes_are_respected(self):
        # 1,000 JPY (no minor unit) at 0.0067 USD = 6.70 USD = 670 cents
        assert (
            d.price_order("USD", [("JPY", 1_000)], {"JPY": rate("JPY", "0.0067")}).value_minor
            == 670
        )
        # 1.500 KWD (three decimals) at 3.25 USD = 4.875 USD -> 4.88 (half up)
        assert (
            d.price_order("USD", [("KWD", 1_500)], {"KWD": rate("KWD", "3.25")}).value_minor == 488
        )

    def test_points_are_rounded_once_after_the_conversion(self):
        rules = d.ProgramRules()
        value = d.price_order("USD", [("PLN", 211_929)], {"PLN": rate("PLN", "0.25")}).value_minor
        assert value is not None
        assert d.order_points(rules, value) == 2_649  # 2,649.1 points, rounded down

    def test_an_order_earns_on_its_net_value_at_its_own_factor(self):
        rec = d.OrderRecord(
            order_id="o1",
            total_minor=211_929,
            currency="PLN",
            placed_at=None,  # type: ignore[arg-type]
            refunded_minor=11_929,
            fx_factor=Decimal("0.25"),
        )
        assert rec.net_value_minor == 50_000
        rec.fx_factor = None
        assert rec.net_value_minor == 0


class TestRefundInOrderCurrency:
    def test_a_refund_in_the_orders_currency_is_taken_as_is(self):
        assert (
            d.refund_in_order_currency("PLN", 211_929, ("EUR", 49_700), [("PLN", 1_000)]) == 1_000
        )

    def test_a_refund_in_the_other_currency_takes_its_share(self):
        got = d.refund_in_order_currency("PLN", 211_929, ("EUR", 49_700), [("EUR", 24_850)])
        assert got == 105_964  # half, floored

    def test_an_unrelated_currency_gives_none(self):
        assert d.refund_in_order_currency("PLN", 211_929, ("EUR", 49_700), [("GBP", 1)]) is None
        assert d.refund_in_order_currency("PLN", 211_929, None, [("EUR", 1)]) is None

    @given(
        total=st.integers(min_value=1, max_value=10**9),
        other=st.integers(min_value=1, max_value=10**9),
        refunded=st.integers(min_value=0, max_value=10**9),
    )
    def test_a_share_never_exceeds_the_total(self, total, other, refunded):
        refunded = min(refunded, other)
        got = d.refund_in_order_currency("PLN", total, ("EUR", other), [("EUR", refunded)])
        assert got is not None and 0 <= got <= total
        if refunded == other:
            assert got == total  # all of it in one currency is all of it in the other


class TestConvertMinor:
    @given(st.integers(min_value=0, max_value=10**12))
    def test_factor_one_is_the_identity(self, amount):
        assert d.convert_minor(amount, Decimal(1)) == amount

    def test_half_up(self):
        assert d.convert_minor(5, Decimal("0.5")) == 3
        assert d.convert_minor(4, Decimal("0.5")) == 2
