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
from afterglow.ingest.platforms import bigcommerce as bc
from afterglow.ingest.platforms import shopify, woocommerce, zendesk
from afterglow.kit import contact_hash

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
        assert contact_hash.normalize_phone("+1 (613) 555-0123") == "+16135550123"
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
        out = shopify.normalize_shopify("orders/create", order)
        data = out.emits[0].data
        assert isinstance(data, c.OrderPlaced)
        assert data.total == c.Money(amount=4030, currency="JPY")
        assert data.line_items[0].unit_price.amount == 1990

    def test_unknown_topic(self):
        assert not shopify.normalize_shopify("products/update", {}).known_topic

    def test_guest_checkout_subject_is_email_hash(self):
        order = load("shopify_order")
        order["customer"] = None
        out = shopify.normalize_shopify("orders/create", order)
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
        out = shopify.normalize_shopify("orders/create", order)
        assert out.emits[0].data.customer.accepts_marketing is accepts

    @pytest.mark.parametrize(("buyer", "accepts"), [(True, True), (False, None), (None, None)])
    def test_buyer_accepts_marketing_is_the_checkout_box(self, buyer, accepts):
        order = load("shopify_order") | {"buyer_accepts_marketing": buyer}
        order["customer"] = {"id": 7, "accepts_marketing": False}
        out = shopify.normalize_shopify("orders/create", order)
        assert out.emits[0].data.customer.accepts_marketing is accepts

    def test_in_transit_fulfilment_update_is_not_delivery(self):
        f = load("shopify_fulfillment") | {"shipment_status": "in_transit"}
        out = shopify.normalize_shopify("fulfillments/update", f)
        assert [type(e.data) for e in out.emits] == [c.OrderFulfilled]

    def test_a_refund_without_money_is_no_event(self):
        refund = load("shopify_refund") | {"transactions": []}
        out = shopify.normalize_shopify("refunds/create", refund)
        assert out.known_topic and out.emits == []

    def test_full_refund_when_it_covers_the_total(self):
        out = shopify.normalize_shopify("refunds/create", load("shopify_refund"))
        data = domain.complete_refund(out.emits[0].data, c.Money(amount=19900, currency="USD"))
        assert isinstance(data, c.OrderRefunded) and data.full


class TestWooNormalization:
    def test_pending_emits_nothing(self):
        out = woocommerce.normalize_woocommerce(
            "order.created", load("woocommerce_order") | {"status": "pending"}
        )
        assert out.known_topic and out.emits == []

    def test_dedupe_key_ignores_delivery(self):
        order = load("woocommerce_order")
        assert woocommerce.woo_dedupe_key(order) == "727@2026-03-02T15:30:12"


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
        assert bc.bigcommerce_order_ref(hook) == "250"
        for bad in ({}, {"data": "250"}, {"data": {"type": "order"}}, {"data": {"id": ""}}):
            with pytest.raises(domain.NormalizationError) as err:
                bc.bigcommerce_order_ref(bad)
            assert err.value.field == "data.id"

    def test_order_normalization_error_names_the_field(self):
        order = load("bigcommerce_order")
        del order["total_inc_tax"]
        with pytest.raises(domain.NormalizationError) as err:
            bc.normalize_bigcommerce_order(order, order["_products"])
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
        [emit] = zendesk.normalize_zendesk(pending).emits
        assert isinstance(emit.data, c.TicketUpdated)
        assert (emit.data.ticket_id, emit.data.status) == ("zendesk:35436", "pending")
        assert emit.subject == "zendesk:8447388090494"

    def test_closed_resolves_and_other_resources_are_not_tickets(self):
        created = load("zendesk_ticket_created")
        closed = created | {
            "type": "zen:event-type:ticket.status_changed",
            "event": {"current": "CLOSED", "previous": "SOLVED"},
        }
        [emit] = zendesk.normalize_zendesk(closed).emits
        assert isinstance(emit.data, c.TicketResolved)
        user = created | {"type": "zen:event-type:user.created"}
        assert not zendesk.normalize_zendesk(user).known_topic


def woo_with_refunds(*refunds: tuple[int, str], status: str = "completed") -> dict:
    return load("woocommerce_order") | {
        "status": status,
        "total": "39.00",
        "refunds": [{"id": rid, "reason": "", "total": total} for rid, total in refunds],
    }


def refunds_of(out: domain.Normalized) -> list[c.OrderRefunded]:
    return [e.data for e in out.emits if isinstance(e.data, c.OrderRefunded)]


class TestWooRefunds:
    def test_each_refund_entry_is_one_event_keyed_by_its_id(self):
        out = woocommerce.normalize_woocommerce(
            "order.updated", woo_with_refunds((727, "-9.00"), (726, "-10.00"))
        )
        refunds = refunds_of(out)
        assert [(r.refund_id, r.amount.amount, r.full) for r in refunds] == [
            ("726", 1000, False),
            ("727", 900, False),
        ]
        oid = refunds[0].order_id
        assert [domain.fact_key(r) for r in refunds] == [f"{oid}:refund:726", f"{oid}:refund:727"]
        # The order is still placed and fulfilled: a partial refund ends nothing.
        assert [type(e.data) for e in out.emits][:2] == [c.OrderPlaced, c.OrderFulfilled]

    def test_the_refund_that_reaches_the_total_is_full(self):
        out = woocommerce.normalize_woocommerce(
            "order.updated", woo_with_refunds((726, "-10.00"), (727, "-9.00"), (731, "-20.00"))
        )
        assert [r.full for r in refunds_of(out)] == [False, False, True]

    def test_refunded_status_without_entries_is_one_full_refund(self):
        out = woocommerce.normalize_woocommerce(
            "order.updated", woo_with_refunds(status="refunded")
        )
        (refund,) = refunds_of(out)
        assert (refund.refund_id, refund.amount.amount, refund.full) == ("full", 3900, True)

    def test_a_refund_entry_without_an_amount_names_the_field(self):
        order = woo_with_refunds((726, "-10.00"))
        del order["refunds"][0]["total"]
        with pytest.raises(domain.MissingField) as err:
            woocommerce.normalize_woocommerce("order.updated", order)
        assert err.value.field == "refunds.0.total"

    def test_earlier_refunds_count_towards_full(self):
        refund = c.OrderRefunded(
            order_id="woocommerce:1",
            refund_id="731",
            refunded_at=NOW,
            amount=c.Money(amount=2000, currency="USD"),
            full=False,
        )
        total = c.Money(amount=3900, currency="USD")
        assert not domain.complete_refund(refund, total, refunded_before=1000).full
        assert domain.complete_refund(refund, total, refunded_before=1900).full


class TestBigCommerceRefunds:
    def test_refunds_listed_by_the_api_become_events(self):
        order = load("bigcommerce_order") | {"status_id": 14, "total_inc_tax": "39.0000"}
        refunds = [
            {"id": 2, "created": "2026-03-03T10:00:00Z", "total_amount": 9.0},
            {"id": 1, "created": "2026-03-02T10:00:00Z", "total_amount": 30.0},
        ]
        out = bc.normalize_bigcommerce_order(order, order["_products"], refunds)
        assert [(r.refund_id, r.amount.amount, r.full) for r in refunds_of(out)] == [
            ("1", 3000, False),
            ("2", 900, True),
        ]


class TestHistoricalMarks:
    def placed_at(self, when: datetime) -> list[domain.Emit]:
        order = load("woocommerce_order") | {
            "status": "completed",
            "date_created_gmt": when.replace(tzinfo=None).isoformat(),
        }
        return woocommerce.normalize_woocommerce("order.updated", order).emits

    def test_an_old_order_arriving_live_is_late_with_its_reason(self):
        emits = domain.mark_late(self.placed_at(datetime(2024, 3, 1, tzinfo=UTC)), NOW, 30)
        assert all(e.data.historical and e.data.origin == "late" for e in emits)
        assert "731 days" in emits[0].data.historical_reason
        assert all(e.data.earn_points for e in emits)

    def test_a_recent_order_is_live(self):
        emits = domain.mark_late(self.placed_at(datetime(2026, 2, 20, tzinfo=UTC)), NOW, 30)
        assert not any(e.data.historical for e in emits)

    def test_limit_zero_never_marks(self):
        emits = domain.mark_late(self.placed_at(datetime(2020, 1, 1, tzinfo=UTC)), NOW, 0)
        assert not any(e.data.historical for e in emits)

    def test_imported_events_carry_the_tenants_choice(self):
        emits = domain.mark_imported(
            self.placed_at(datetime(2025, 1, 1, tzinfo=UTC)),
            earn_points=False,
            since=datetime(2024, 1, 1, tzinfo=UTC),
        )
        assert {(e.data.historical, e.data.origin, e.data.earn_points) for e in emits} == {
            (True, "import", False)
        }
        # Already historical: a late check afterwards changes nothing.
        assert domain.mark_late(emits, NOW, 30) == emits


GRAPHQL_ORDER = {
    "id": "gid://shopify/Order/450789469",
    "legacyResourceId": "450789469",
    "name": "#1001",
    "createdAt": "2024-05-01T10:00:00Z",
    "processedAt": "2024-05-01T10:00:00Z",
    "updatedAt": "2024-05-09T10:00:00Z",
    "cancelledAt": None,
    "email": "Ada@Example.com",
    "displayFulfillmentStatus": "FULFILLED",
    "discountCodes": ["SPRING"],
    "totalPriceSet": {"shopMoney": {"amount": "39.00", "currencyCode": "EUR"}},
    "subtotalPriceSet": {"shopMoney": {"amount": "35.00", "currencyCode": "EUR"}},
    "customer": {"legacyResourceId": "207119551", "email": "ada@example.com", "firstName": "Ada"},
    "shippingAddress": {
        "address1": "1 Rue",
        "city": "Paris",
        "zip": "75001",
        "countryCodeV2": "FR",
    },
    "lineItems": {
        "nodes": [
            {
                "sku": "MUG",
                "title": "Mug",
                "quantity": 2,
                "originalUnitPriceSet": {"shopMoney": {"amount": "17.50"}},
                "product": {"legacyResourceId": "632910392"},
            }
        ]
    },
    "fulfillments": [{"createdAt": "2024-05-02T10:00:00Z", "trackingInfo": []}],
    "refunds": [
        {
            "legacyResourceId": "509562969",
            "createdAt": "2024-05-09T10:00:00Z",
            "totalRefundedSet": {"shopMoney": {"amount": "10.00", "currencyCode": "EUR"}},
        }
    ],
}


class TestShopifyGraphQLOrders:
    def test_a_graphql_order_normalizes_like_its_webhook(self):
        order = shopify.shopify_graphql_order(GRAPHQL_ORDER)
        deliveries = shopify.shopify_order_deliveries(order, "import")
        assert [(t, k) for t, k, _ in deliveries] == [
            ("orders/fulfilled", "import:450789469@2024-05-09T10:00:00Z"),
            ("refunds/create", "import:refund:509562969"),
        ]
        out = shopify.normalize_shopify("orders/fulfilled", deliveries[0][2])
        placed = out.emits[0].data
        assert isinstance(placed, c.OrderPlaced)
        assert placed.order_id == "shopify:450789469"
        assert placed.total == c.Money(amount=3900, currency="EUR")
        assert placed.customer.email == "ada@example.com"
        assert placed.customer.platform_customer_id == "207119551"
        assert placed.line_items[0].unit_price.amount == 1750
        assert placed.discount_codes == ["SPRING"]
        assert placed.shipping_country == "FR"
        assert out.order is not None and out.order.subject == "207119551"
        refund = shopify.normalize_shopify("refunds/create", deliveries[1][2]).emits[0].data
        assert isinstance(refund, c.OrderRefunded)
        assert (refund.refund_id, refund.amount.amount) == ("509562969", 1000)

    def test_the_bucket_decides_the_wait(self):
        body = {
            "extensions": {
                "cost": {
                    "requestedQueryCost": 202,
                    "actualQueryCost": 150,
                    "throttleStatus": {
                        "maximumAvailable": 1000.0,
                        "currentlyAvailable": 102,
                        "restoreRate": 50.0,
                    },
                }
            }
        }
        cost = shopify.ShopifyCost.of(body)
        assert cost is not None and cost.wait_s() == pytest.approx(2.0)
        body["extensions"]["cost"]["throttleStatus"]["currentlyAvailable"] = 900
        assert shopify.ShopifyCost.of(body).wait_s() == 0.0

    def test_throttled_is_an_error_code(self):
        assert shopify.shopify_throttled({"errors": [{"extensions": {"code": "THROTTLED"}}]})
        assert not shopify.shopify_throttled({"errors": [{"message": "Field 'x' doesn't exist"}]})
        assert not shopify.shopify_throttled({"data": {}})
