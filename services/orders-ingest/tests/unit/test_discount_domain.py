"""The pure rules of reward codes: amounts, what each platform is sent, the bucket."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from afterglow.ingest.discounts import domain
from afterglow.ingest.discounts.domain import Discount, PlatformError, ShopBucket

T = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)


def discount(**kw: object) -> Discount:
    fields: dict[str, object] = {
        "code": "AG-X",
        "customer_id": "42",
        "title": "t",
        "value_kind": "fixed_amount",
        "amount_minor": 500,
        "currency": "USD",
        "percent": None,
        "starts_at": T,
        "ends_at": None,
    }
    return Discount(**(fields | kw))  # type: ignore[arg-type]


class TestAmounts:
    @pytest.mark.parametrize(
        ("minor", "currency", "text"),
        [(500, "USD", "5.00"), (500, "JPY", "500"), (1500, "KWD", "1.500"), (7, "EUR", "0.07")],
    )
    def test_minor_units_become_the_currencys_decimal(self, minor, currency, text):
        assert domain.decimal_amount(minor, currency) == text


class TestShopify:
    def test_percentage_is_a_fraction_and_the_code_is_limited_to_the_customer(self):
        doc, mutation, variables = domain.shopify_create(
            discount(value_kind="percentage", amount_minor=None, currency=None, percent=15)
        )
        assert mutation == "discountCodeBasicCreate" and mutation in doc
        basic = variables["basicCodeDiscount"]
        assert basic["customerGets"]["value"] == {"percentage": 0.15}
        assert basic["context"] == {"customers": {"add": ["gid://shopify/Customer/42"]}}
        assert (basic["usageLimit"], basic["appliesOncePerCustomer"]) == (1, True)

    def test_free_shipping_uses_its_own_mutation(self):
        _, mutation, variables = domain.shopify_create(discount(value_kind="free_shipping"))
        assert mutation == "discountCodeFreeShippingCreate"
        assert variables["freeShippingCodeDiscount"]["destination"] == {"all": True}

    def test_a_subject_that_is_no_customer_id_is_refused_for_good(self):
        with pytest.raises(PlatformError) as err:
            domain.shopify_create(discount(customer_id="email:ab12"))
        assert err.value.permanent


class TestShopBucket:
    def test_waits_for_the_missing_cost_at_the_restore_rate(self):
        clock = [100.0]
        bucket = ShopBucket(monotonic=lambda: clock[0])
        assert bucket.wait_s(10) == 0.0  # nothing known yet: ask
        bucket.observe(
            {
                "extensions": {
                    "cost": {
                        "requestedQueryCost": 10,
                        "throttleStatus": {
                            "maximumAvailable": 1000,
                            "currentlyAvailable": 4,
                            "restoreRate": 50,
                        },
                    }
                }
            }
        )
        assert bucket.wait_s(10) == pytest.approx(0.12)
        clock[0] += 0.12
        assert bucket.wait_s(10) == 0.0


class TestOtherPlatforms:
    def test_woocommerce_coupon_names_the_email_and_one_use(self):
        body = domain.woo_coupon(discount(ends_at=T), "ada@example.com")
        assert body["email_restrictions"] == ["ada@example.com"]
        assert (body["usage_limit"], body["usage_limit_per_user"]) == (1, 1)
        assert body["date_expires_gmt"] == "2026-03-02T12:00:00"

    def test_bigcommerce_expiry_is_an_rfc_2822_date(self):
        body = domain.bigcommerce_coupon(discount(ends_at=T))
        assert body["expires"] == "Mon, 02 Mar 2026 12:00:00 GMT"
        assert (body["type"], body["amount"], body["max_uses"]) == ("per_total_discount", "5.00", 1)

    def test_retry_after_reads_either_header(self):
        assert domain.retry_after_s({"retry-after": "3"}) == 3.0
        assert domain.retry_after_s({"x-rate-limit-time-reset-ms": "1500"}) == 1.5
        assert domain.retry_after_s({}) is None
