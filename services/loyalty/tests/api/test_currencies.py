"""Money in the program's currency, through the broker and the API on the real stack:
an order in another currency is converted at the tenant's rate, or recorded unpriced
and flagged; tiers, spend and liability never add up amounts in different currencies."""

from __future__ import annotations

from typing import Any

from afterglow.events.catalog import Money, OrderPlaced, OrderRefunded
from afterglow.events.testing import eventually

from ..loyalty_support import Loyalty, new_id

# The finding: a Polish shop's order of 2,119.29 PLN, paid in EUR by the customer.
PLN_TOTAL = 211_929
EUR_TOTAL = 49_700


def pln_order(
    loyalty: Loyalty, order_id: str, *, count: int = 2, presentment: Money | None = None
) -> OrderPlaced:
    return OrderPlaced(
        order_id=order_id,
        platform="shopify",
        placed_at=loyalty.clock.now(),
        customer={},
        total=Money(amount=PLN_TOTAL, currency="PLN"),
        shop_total=Money(amount=PLN_TOTAL, currency="PLN"),
        presentment_total=presentment or Money(amount=EUR_TOTAL, currency="EUR"),
        customer_orders_count=count,  # 2: not a first order, no bonus in the figures
    )


async def put_rate(
    loyalty: Loyalty, tenant: str, currency: str, rate: str, as_of: str = "2026-03-01"
) -> Any:
    return await loyalty.client.put(
        f"/v1/exchange-rates/{currency}",
        json={"rate": rate, "as_of": as_of},
        headers=await loyalty.key(tenant),
    )


class TestConversion:
    async def test_an_order_in_another_currency_earns_on_its_converted_value(
        self, loyalty: Loyalty, tenant_id
    ):
        r = await put_rate(loyalty, tenant_id, "PLN", "0.25")
        assert r.status_code == 200, r.text
        assert (r.json()["quote"], r.json()["rate"], r.json()["as_of"]) == (
            "USD",
            "0.2500000000",
            "2026-03-01",
        )
        c = new_id("c")
        await loyalty.publish(loyalty.event(pln_order(loyalty, new_id("o")), tenant_id, c))
        # 2,119.29 PLN x 0.25 = 529.8225 USD -> 529.82 USD (half up, to the cent);
        # 5 points per USD -> 2,649.1 -> 2,649 (the program rounds down). Read as USD,
        # the same order earned 10,596.
        acc = await loyalty.wait_account(tenant_id, c, lambda a: a["pending"] > 0)
        assert acc["pending"] == 2_649
        assert acc["currency"] == "USD" and acc["unpriced_orders"] == []
        assert acc["tier_progress"]["qualifying"] == 52_982
        assert acc["tier_progress"]["currency"] == "USD"

    async def test_an_amount_stated_in_the_program_currency_needs_no_rate(
        self, loyalty: Loyalty, tenant_id
    ):
        c = new_id("c")
        order = pln_order(loyalty, new_id("o"), presentment=Money(amount=53_000, currency="USD"))
        await loyalty.publish(loyalty.event(order, tenant_id, c))
        acc = await loyalty.wait_account(tenant_id, c, lambda a: a["pending"] > 0)
        assert acc["pending"] == 2_650  # 530.00 USD as the customer paid it

    async def test_a_rate_for_the_customers_currency_prices_the_order(
        self, loyalty: Loyalty, tenant_id
    ):
        assert (await put_rate(loyalty, tenant_id, "EUR", "1.08")).status_code == 200
        c = new_id("c")
        await loyalty.publish(loyalty.event(pln_order(loyalty, new_id("o")), tenant_id, c))
        acc = await loyalty.wait_account(tenant_id, c, lambda a: a["pending"] > 0)
        assert acc["pending"] == 2_683  # 497.00 EUR x 1.08 = 536.76 USD -> 2,683.8 -> 2,683


class TestUnpriced:
    async def test_without_a_rate_the_order_earns_nothing_and_is_flagged(
        self, loyalty: Loyalty, tenant_id
    ):
        c, order_id = new_id("c"), new_id("o")
        await loyalty.publish(loyalty.event(pln_order(loyalty, order_id), tenant_id, c))
        acc = await loyalty.wait_account(tenant_id, c, lambda a: a["unpriced_orders"])
        assert (acc["pending"], acc["available"], acc["lifetime_earned"]) == (0, 0, 0)
        [flagged] = acc["unpriced_orders"]
        assert flagged["order_id"] == order_id
        assert flagged["total"] == {"amount": PLN_TOTAL, "currency": "PLN"}
        assert "no exchange rate" in flagged["reason"] and "USD" in flagged["reason"]
        assert acc["tier_progress"]["qualifying"] == 0
        # The ledger says so too, with the order and the reason.
        r = await loyalty.client.get(
            f"/v1/accounts/{c}/history", headers=await loyalty.key(tenant_id)
        )
        unpriced = [e for e in r.json()["entries"] if e["kind"] == "unpriced"]
        assert [(e["order_id"], e["pending_delta"], e["available_delta"]) for e in unpriced] == [
            (order_id, 0, 0)
        ]
        assert "PLN" in unpriced[0]["reason"]

    async def test_an_unpriced_first_order_still_gets_the_first_order_bonus(
        self, loyalty: Loyalty, tenant_id
    ):
        """The bonus is points, not money: it needs no price."""
        c = new_id("c")
        await loyalty.publish(loyalty.event(pln_order(loyalty, new_id("o"), count=1), tenant_id, c))
        acc = await loyalty.wait_account(tenant_id, c, lambda a: a["pending"] > 0)
        assert acc["pending"] == 100 and len(acc["unpriced_orders"]) == 1


class TestPerCurrency:
    async def test_tiers_and_liability_never_add_up_currencies(self, loyalty: Loyalty, tenant_id):
        headers = await loyalty.key(tenant_id)
        assert (await put_rate(loyalty, tenant_id, "PLN", "0.25")).status_code == 200
        shopper, other = new_id("c"), new_id("c")
        usd = OrderPlaced(
            order_id=new_id("o"),
            platform="api",
            placed_at=loyalty.clock.now(),
            customer={},
            total=Money(amount=30_000, currency="USD"),
            customer_orders_count=2,
        )
        await loyalty.publish(loyalty.event(usd, tenant_id, shopper))
        await loyalty.wait_account(tenant_id, shopper, lambda a: a["pending"] == 1_500)
        await loyalty.publish(loyalty.event(pln_order(loyalty, new_id("o")), tenant_id, shopper))
        # 300.00 USD + 529.82 USD = 829.82 USD of spend: silver (500 USD), not gold.
        # Summed as numbers (30,000 + 211,929) it would have been gold.
        acc = await loyalty.wait_account(
            tenant_id, shopper, lambda a: a["pending"] == 1_500 + 2_649
        )
        assert acc["tier_progress"]["qualifying"] == 82_982
        assert acc["tier"] == "silver"
        # The rate is gone when the other customer orders: unpriced, no spend, no points.
        r = await loyalty.client.delete("/v1/exchange-rates/PLN", headers=headers)
        assert r.status_code == 204
        await loyalty.publish(loyalty.event(pln_order(loyalty, new_id("o")), tenant_id, other))
        acc = await loyalty.wait_account(tenant_id, other, lambda a: a["unpriced_orders"])
        assert (acc["tier"], acc["tier_progress"]["qualifying"]) == ("bronze", 0)

        m = (await loyalty.client.get("/v1/metrics", headers=headers)).json()
        assert m["orders_by_currency"] == [
            {"currency": "PLN", "orders": 2, "total_minor": 2 * PLN_TOTAL, "unpriced_orders": 1},
            {"currency": "USD", "orders": 1, "total_minor": 30_000, "unpriced_orders": 0},
        ]
        assert m["unpriced_orders"] == 1
        assert m["points_pending"] == 1_500 + 2_649
        assert m["outstanding_liability"]["currency"] == "USD"

    async def test_a_refund_in_the_customers_currency_claws_back_its_share(
        self, loyalty: Loyalty, tenant_id
    ):
        assert (await put_rate(loyalty, tenant_id, "PLN", "0.25")).status_code == 200
        c, order_id = new_id("c"), new_id("o")
        await loyalty.publish(loyalty.event(pln_order(loyalty, order_id), tenant_id, c))
        await loyalty.wait_account(tenant_id, c, lambda a: a["pending"] == 2_649)
        # Half the order, refunded in EUR (as Shopify refunds): half the points back,
        # never 248.50 read against 2,119.29.
        refund = OrderRefunded(
            order_id=order_id,
            refund_id="r1",
            refunded_at=loyalty.clock.now(),
            amount=Money(amount=EUR_TOTAL // 2, currency="EUR"),
            full=False,
        )
        await loyalty.publish(loyalty.event(refund, tenant_id, c))
        acc = await loyalty.wait_account(tenant_id, c, lambda a: a["pending"] < 2_649)
        shop_refunded = (EUR_TOTAL // 2) * PLN_TOTAL // EUR_TOTAL
        assert acc["pending"] == 2_649 - 2_649 * shop_refunded // PLN_TOTAL
        assert acc["tier_progress"]["qualifying"] == round((PLN_TOTAL - shop_refunded) * 0.25)

    async def test_a_refund_in_an_unrelated_currency_is_flagged_not_guessed(
        self, loyalty: Loyalty, tenant_id
    ):
        assert (await put_rate(loyalty, tenant_id, "PLN", "0.25")).status_code == 200
        c, order_id = new_id("c"), new_id("o")
        await loyalty.publish(loyalty.event(pln_order(loyalty, order_id), tenant_id, c))
        await loyalty.wait_account(tenant_id, c, lambda a: a["pending"] == 2_649)
        refund = OrderRefunded(
            order_id=order_id,
            refund_id="r-gbp",
            refunded_at=loyalty.clock.now(),
            amount=Money(amount=1_000, currency="GBP"),
            full=False,
        )
        await loyalty.publish(loyalty.event(refund, tenant_id, c))
        headers = await loyalty.key(tenant_id)

        async def unpriced_entries() -> list[dict[str, Any]]:
            r = await loyalty.client.get(f"/v1/accounts/{c}/history", headers=headers)
            return [e for e in r.json()["entries"] if e["kind"] == "unpriced"]

        [entry] = await eventually(unpriced_entries, bool, timeout=60)
        assert "r-gbp" in entry["reason"] and "GBP" in entry["reason"]
        assert (await loyalty.account(tenant_id, c))["pending"] == 2_649


class TestExchangeRatesApi:
    async def test_rates_are_listed_replaced_and_deleted(self, loyalty: Loyalty, tenant_id):
        headers = await loyalty.key(tenant_id)
        assert (await put_rate(loyalty, tenant_id, "PLN", "0.25")).status_code == 200
        assert (await put_rate(loyalty, tenant_id, "PLN", "0.26", "2026-03-02")).status_code == 200
        body = (await loyalty.client.get("/v1/exchange-rates", headers=headers)).json()
        assert body["program_currency"] == "USD"
        assert [(r["currency"], r["rate"], r["as_of"]) for r in body["rates"]] == [
            ("PLN", "0.2600000000", "2026-03-02")
        ]
        assert (
            await loyalty.client.delete("/v1/exchange-rates/PLN", headers=headers)
        ).status_code == 204
        r = await loyalty.client.delete("/v1/exchange-rates/PLN", headers=headers)
        assert r.status_code == 404 and r.json()["error"]["field"] == "currency"

    async def test_bad_rates_are_refused_with_the_field(self, loyalty: Loyalty, tenant_id):
        r = await put_rate(loyalty, tenant_id, "USD", "1")
        assert r.status_code == 422 and r.json()["error"]["field"] == "currency"
        r = await put_rate(loyalty, tenant_id, "pln", "0.25")
        assert r.status_code == 422
        r = await put_rate(loyalty, tenant_id, "PLN", "0")
        assert r.status_code == 422 and "rate" in r.json()["error"]["field"]
        r = await put_rate(loyalty, tenant_id, "PLN", "0.25", "yesterday")
        assert r.status_code == 422 and "as_of" in r.json()["error"]["field"]
        body = (
            await loyalty.client.get("/v1/exchange-rates", headers=await loyalty.key(tenant_id))
        ).json()
        assert body["rates"] == []

    async def test_reading_needs_the_read_scope_and_writing_the_write_scope(
        self, loyalty: Loyalty, tenant_id
    ):
        reader = await loyalty.key(tenant_id, ["loyalty:read"])
        r = await loyalty.client.put(
            "/v1/exchange-rates/PLN", json={"rate": "0.25", "as_of": "2026-03-01"}, headers=reader
        )
        assert r.status_code == 403
        assert (await loyalty.client.get("/v1/exchange-rates", headers=reader)).status_code == 200
