"""Order-book metrics against hand-computed figures: four customers, eight orders, one
of them before the period, and another tenant's order that must not count."""

from __future__ import annotations

from datetime import date

import httpx

from ..ingest_support import api_key, register

# (customer, order id, placed_at, total in cents)
BOOK = [
    ("d", "o-d1", "2025-12-15T10:00:00Z", 4000),  # before the period: D's cohort is December
    ("a", "o-a1", "2026-01-05T09:00:00Z", 10000),
    ("b", "o-b1", "2026-01-20T23:30:00Z", 20000),
    ("c", "o-c1", "2026-02-03T08:00:00Z", 3000),
    ("a", "o-a2", "2026-02-10T12:00:00Z", 5000),
    ("c", "o-c2", "2026-02-25T12:00:00Z", 7000),
    ("d", "o-d2", "2026-03-01T00:00:00Z", 6000),
    ("a", "o-a3", "2026-03-20T18:00:00Z", 2000),
]


async def place(client: httpx.AsyncClient, key: str, customer: str, oid: str, at: str, total: int):
    r = await client.post(
        "/v1/orders",
        headers={"Authorization": f"Bearer {key}", "Idempotency-Key": oid},
        json={
            "type": "order.placed",
            "customer_id": customer,
            "data": {
                "order_id": oid,
                "platform": "api",
                "placed_at": at,
                "customer": {},
                "total": {"amount": total, "currency": "USD"},
            },
        },
    )
    assert r.status_code == 201, r.text


async def metrics(client: httpx.AsyncClient, key: str, **params: str) -> httpx.Response:
    return await client.get(
        "/v1/metrics/orders", params=params, headers={"Authorization": f"Bearer {key}"}
    )


class TestOrderMetrics:
    async def test_figures_match_the_hand_computed_book(self, client, tenant_id):
        await register(client, tenant_id)
        writer = await api_key(client, tenant_id, "orders:write")
        reader = await api_key(client, tenant_id, "orders:read")
        for customer, oid, at, total in BOOK:
            await place(client, writer, customer, oid, at, total)
        other = f"{tenant_id}-x"
        await register(client, other)
        await place(
            client, await api_key(client, other, "orders:write"), "a", "o-x", BOOK[1][2], 99
        )

        r = await metrics(client, reader, **{"from": "2026-01-01", "to": "2026-03-31"})
        assert r.status_code == 200, r.text
        m = r.json()
        assert (m["from"], m["to"]) == ("2026-01-01", "2026-03-31")
        assert m["orders"] == 7  # D's December order is outside
        assert m["customers"] == 4
        assert m["new_customers"] == 3  # D's first order predates the period
        assert m["repeat_customers"] == 3  # A (3 orders), C (2), D (2 counting December)
        assert m["repeat_purchase_rate"] == 0.75
        assert m["revenue"] == [{"currency": "USD", "amount": 53000}]
        assert m["days"][:2] == [
            {"day": "2026-01-05", "orders": 1, "customers": 1},
            {"day": "2026-01-20", "orders": 1, "customers": 1},
        ]
        assert len(m["days"]) == 7
        jan, feb = m["cohorts"]
        assert jan == {
            "month": "2026-01-01",
            "customers": 2,  # A and B
            "active": [2, 1, 1],  # A came back in February and in March
            # (10000 + 5000 + 2000 + 20000) / 2 over the first three months
            "revenue_per_customer": {"3": 18500, "6": None, "12": None},
        }
        assert feb == {
            "month": "2026-02-01",
            "customers": 1,
            "active": [1, 0],  # C's two orders were both in February
            "revenue_per_customer": {"3": None, "6": None, "12": None},
        }

    async def test_a_shorter_period_counts_only_its_days(self, client, tenant_id):
        await register(client, tenant_id)
        writer = await api_key(client, tenant_id, "orders:write")
        reader = await api_key(client, tenant_id, "orders:read")
        for customer, oid, at, total in BOOK:
            await place(client, writer, customer, oid, at, total)
        r = await metrics(client, reader, **{"from": "2026-02-01", "to": "2026-02-28"})
        m = r.json()
        assert (m["orders"], m["customers"], m["new_customers"]) == (3, 2, 1)
        # A had January's order, C two in February: both repeat by February's end.
        assert (m["repeat_customers"], m["repeat_purchase_rate"]) == (2, 1.0)
        assert [c["month"] for c in m["cohorts"]] == ["2026-02-01"]

    async def test_a_reversed_period_is_a_clear_error(self, client, tenant_id):
        await register(client, tenant_id)
        reader = await api_key(client, tenant_id, "orders:read")
        r = await metrics(client, reader, **{"from": "2026-03-01", "to": "2026-02-01"})
        assert r.status_code == 422
        assert r.json()["error"]["field"] == "to"

    async def test_a_key_without_orders_read_is_refused(self, client, tenant_id):
        await register(client, tenant_id)
        writer = await api_key(client, tenant_id, "orders:write")
        r = await metrics(client, writer, **{"from": "2026-01-01", "to": "2026-01-31"})
        assert r.status_code == 403

    def test_an_empty_period_has_no_rate(self):
        from afterglow.ingest.metrics import pivot_cohorts

        assert pivot_cohorts([], date(2026, 1, 31)) == []
