"""Pure rules: money, hashing, signatures, normalization."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from decimal import Decimal
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from afterglow.events import catalog as c
from afterglow.events.money import currency_exponent
from afterglow.ingest import domain

FIXTURES = Path(__file__).parent.parent / "fixtures"
NOW = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def load(name: str) -> dict:
    return json.loads((FIXTURES / f"{name}.json").read_text())


class TestMoney:
    def test_decimal_strings_become_minor_units(self):
        assert domain.to_minor("199.65", "USD") == 19965
        assert domain.to_minor("1500", "JPY") == 1500
        assert domain.to_minor("1.234", "KWD") == 1234
        assert domain.to_minor("0.10", "EUR") == 10

    @given(st.integers(min_value=0, max_value=10**12), st.sampled_from(["USD", "JPY", "KWD"]))
    def test_round_trip_is_exact(self, minor, currency):
        exp = currency_exponent(currency)
        text = str(Decimal(minor).scaleb(-exp))
        assert domain.to_minor(text, currency) == minor

    def test_garbage_names_the_field(self):
        with pytest.raises(domain.NormalizationError) as err:
            domain.to_minor("12,00", "EUR", "total_price")
        assert err.value.field == "total_price"


class TestHashing:
    def test_email_normalized_before_hashing(self):
        assert domain.email_hash(" Ada@Example.COM ") == domain.email_hash("ada@example.com")
        assert domain.email_hash("not-an-email") is None

    def test_phone_keeps_plus_and_digits(self):
        assert domain.normalize_phone("+1 (613) 555-0123") == "+16135550123"
        assert domain.phone_hash("+1 613 555 0123") == domain.phone_hash("+1-613-555-0123")

    def test_referral_from_landing_site(self):
        assert domain.referral_from_landing_site("/p/x?utm=a&ref=ADA7K2") == "ADA7K2"
        assert domain.referral_from_landing_site("/p/x?utm=a") is None
        assert domain.referral_from_landing_site(None) is None

    def test_subject_falls_back_to_email_hash(self):
        assert domain.customer_subject(42, "a@b.co", "o") == "42"
        assert domain.customer_subject(None, "A@b.co", "o").startswith("email:")
        assert domain.customer_subject(0, None, "shopify:1") == "order:shopify:1"


class TestSignatures:
    def test_b64_hmac_any_active_secret(self):
        sig = domain.b64_hmac("new", b"body")
        assert domain.verify_b64_hmac(["old", "new"], b"body", sig)
        assert not domain.verify_b64_hmac(["old"], b"body", sig)
        assert not domain.verify_b64_hmac(["new"], b"body2", sig)
        assert not domain.verify_b64_hmac(["new"], b"body", None)

    def test_timestamp_formats(self):
        assert domain.timestamp_fresh("2026-03-02T12:04:00Z", NOW, 300)
        assert not domain.timestamp_fresh("2026-03-02T12:06:00Z", NOW, 300)
        assert not domain.timestamp_fresh("yesterday", NOW, 300)


class TestShopifyNormalization:
    def test_jpy_has_no_minor_unit(self):
        order = load("shopify_order") | {"currency": "JPY", "total_price": "4030"}
        for li in order["line_items"]:
            li["price"] = "1990"
        order["subtotal_price"] = "3880"
        out = domain.normalize_shopify("orders/create", order)
        data = out.emits[0].data
        assert isinstance(data, c.OrderPlaced)
        assert data.total == c.Money(amount=4030, currency="JPY")
        assert data.line_items[0].unit_price.amount == 1990

    def test_unknown_topic(self):
        assert not domain.normalize_shopify("products/update", {}).known_topic

    def test_guest_checkout_subject_is_email_hash(self):
        order = load("shopify_order")
        order["customer"] = None
        out = domain.normalize_shopify("orders/create", order)
        assert out.emits[0].subject == "email:" + domain.email_hash("jon@example.com")[:32]

    @pytest.mark.parametrize(
        ("customer", "accepts"),
        [
            ({"email_marketing_consent": {"state": "subscribed"}}, True),
            ({"email_marketing_consent": {"state": "unsubscribed"}}, False),
            ({"email_marketing_consent": {"state": "redacted"}}, False),
            # never ticked the box: not a refusal
            ({"email_marketing_consent": {"state": "not_subscribed"}}, None),
            ({"email_marketing_consent": {"state": "pending"}}, None),
            ({"accepts_marketing": False}, None),
            ({"accepts_marketing": True}, True),
            # the consent object is the newer, precise field and wins
            (
                {"accepts_marketing": True, "email_marketing_consent": {"state": "unsubscribed"}},
                False,
            ),
        ],
    )
    def test_marketing_consent(self, customer, accepts):
        order = load("shopify_order")
        order["customer"] = {k: v for k, v in order["customer"].items() if k != "accepts_marketing"}
        order["customer"] |= customer
        del order["buyer_accepts_marketing"]  # the order-level box: see the next test
        out = domain.normalize_shopify("orders/create", order)
        assert out.emits[0].data.customer.accepts_marketing is accepts

    @pytest.mark.parametrize(("buyer", "accepts"), [(True, True), (False, None), (None, None)])
    def test_buyer_accepts_marketing_is_the_checkout_box(self, buyer, accepts):
        order = load("shopify_order") | {"buyer_accepts_marketing": buyer}
        order["customer"] = {"id": 7, "accepts_marketing": False}
        out = domain.normalize_shopify("orders/create", order)
        assert out.emits[0].data.customer.accepts_marketing is accepts

    def test_in_transit_fulfilment_update_is_not_delivery(self):
        f = load("shopify_fulfillment") | {"shipment_status": "in_transit"}
        out = domain.normalize_shopify("fulfillments/update", f)
        assert [type(e.data) for e in out.emits] == [c.OrderFulfilled]

    def test_full_refund_when_it_covers_the_total(self):
        out = domain.normalize_shopify("refunds/create", load("shopify_refund"))
        data = domain.complete_refund(out.emits[0].data, c.Money(amount=19900, currency="USD"))
        assert isinstance(data, c.OrderRefunded) and data.full


class TestWooNormalization:
    def test_pending_emits_nothing(self):
        out = domain.normalize_woocommerce(
            "order.created", load("woocommerce_order") | {"status": "pending"}
        )
        assert out.known_topic and out.emits == []

    def test_dedupe_key_ignores_delivery(self):
        order = load("woocommerce_order")
        assert domain.woo_dedupe_key(order) == "727@2026-03-02T15:30:12"


class TestFacts:
    def test_each_order_fact_has_a_key(self):
        t = NOW
        assert domain.fact_key(c.OrderCancelled(order_id="o", cancelled_at=t)) == "o:cancelled"
        refund = c.OrderRefunded(
            order_id="o",
            refund_id="r1",
            refunded_at=t,
            amount=c.Money(amount=1, currency="USD"),
            full=False,
        )
        assert domain.fact_key(refund) == "o:refund:r1"
        assert domain.fact_key(c.TicketResolved(ticket_id="t", resolved_at=t)) is None


class TestBigCommerce:
    def test_order_ref_names_the_missing_field(self):
        hook = load("bigcommerce_order_created")
        assert domain.bigcommerce_order_ref(hook) == "250"
        for bad in ({}, {"data": "250"}, {"data": {"type": "order"}}, {"data": {"id": ""}}):
            with pytest.raises(domain.NormalizationError) as err:
                domain.bigcommerce_order_ref(bad)
            assert err.value.field == "data.id"

    def test_order_normalization_error_names_the_field(self):
        order = load("bigcommerce_order")
        del order["total_inc_tax"]
        with pytest.raises(domain.NormalizationError) as err:
            domain.normalize_bigcommerce_order(order, order["_products"])
        assert err.value.field == "total_inc_tax"

    def test_fetch_retry_delay_doubles_up_to_the_cap(self):
        delays = [domain.retry_delay_s(n, 30, 3600) for n in range(1, 10)]
        assert delays == [30, 60, 120, 240, 480, 960, 1920, 3600, 3600]
        # Absurd attempt counts stay bounded (no float overflow).
        assert domain.retry_delay_s(10_000, 30, 3600) == 3600


class TestZendesk:
    def test_status_change_short_of_solved_is_an_update(self):
        created = load("zendesk_ticket_created")
        pending = created | {
            "type": "zen:event-type:ticket.status_changed",
            "detail": created["detail"] | {"status": "PENDING"},
            "event": {"current": "PENDING", "previous": "OPEN"},
        }
        [emit] = domain.normalize_zendesk(pending).emits
        assert isinstance(emit.data, c.TicketUpdated)
        assert (emit.data.ticket_id, emit.data.status) == ("zendesk:35436", "pending")
        assert emit.subject == "zendesk:8447388090494"

    def test_closed_resolves_and_other_resources_are_not_tickets(self):
        created = load("zendesk_ticket_created")
        closed = created | {
            "type": "zen:event-type:ticket.status_changed",
            "event": {"current": "CLOSED", "previous": "SOLVED"},
        }
        [emit] = domain.normalize_zendesk(closed).emits
        assert isinstance(emit.data, c.TicketResolved)
        user = created | {"type": "zen:event-type:user.created"}
        assert not domain.normalize_zendesk(user).known_topic
