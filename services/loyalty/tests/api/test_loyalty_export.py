"""GET /v1/customers/{id}/export: a customer's loyalty rows, through the real API and
topics, on the real stack."""

from __future__ import annotations

import json
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import func, select

from afterglow.events.catalog import CustomerErasureRequested
from afterglow.events.privacy import pseudonym
from afterglow.events.testing import eventually
from afterglow.kit.auth import KEY_PREFIX, hash_key
from afterglow.kit.export import EXPORT_SCOPE
from afterglow.loyalty.models import EntryRow

from ..loyalty_support import START, Loyalty, new_id

TABLES = {"accounts", "orders", "lots", "entries", "redemptions"}


def url(customer: str) -> str:
    return f"/v1/customers/{customer}/export"


def key_id(headers: dict[str, str]) -> str:
    """The id inside a bearer key ``agk_<id>_<secret>``: what the ledger records as actor."""
    return headers["Authorization"].removeprefix(f"Bearer {KEY_PREFIX}").split("_")[0]


async def export(loyalty: Loyalty, tenant: str, customer: str) -> dict[str, Any]:
    r = await loyalty.client.get(url(customer), headers=await loyalty.key(tenant, [EXPORT_SCOPE]))
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


async def place_order(
    loyalty: Loyalty, tenant: str, customer: str, order_id: str, total: int, count: int
) -> None:
    order = loyalty.order(order_id, total, customer_orders_count=count)
    await loyalty.publish(loyalty.event(order, tenant, customer))


async def adjust(loyalty: Loyalty, tenant: str, customer: str, points: int, reason: str) -> str:
    h = await loyalty.key(tenant)
    r = await loyalty.client.post(
        f"/v1/accounts/{customer}/adjustments",
        json={"points": points, "reason": reason},
        headers=h,
    )
    assert r.status_code == 201, r.text
    return key_id(h)


async def redeem(loyalty: Loyalty, tenant: str, customer: str, reward: str) -> dict[str, Any]:
    r = await loyalty.client.post(
        f"/v1/accounts/{customer}/redemptions",
        json={"reward_id": reward},
        headers={**await loyalty.key(tenant), "Idempotency-Key": "export-1"},
    )
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


class TestExport:
    async def test_export_holds_the_customers_rows_of_this_tenant_only(
        self, loyalty: Loyalty, tenant_id
    ):
        a, b, other = new_id("c"), new_id("c"), new_id("t")
        # The same order id and customer id in another tenant: only the tenant tells them apart.
        await place_order(loyalty, tenant_id, a, "o-1", 10_000, count=1)
        await place_order(loyalty, tenant_id, b, "o-2", 20_000, count=4)
        await place_order(loyalty, other, a, "o-1", 30_000, count=2)
        await loyalty.wait_account(tenant_id, a, lambda acc: acc["pending"] == 600)
        await loyalty.wait_account(tenant_id, b, lambda acc: acc["pending"] == 1_000)
        await loyalty.wait_account(other, a, lambda acc: acc["pending"] == 1_500)
        loyalty.clock.advance(timedelta(hours=1))  # later rows sort after the order's
        actor = await adjust(loyalty, tenant_id, a, 800, "goodwill: parcel was late")
        await adjust(loyalty, tenant_id, b, 400, "b only")
        await adjust(loyalty, other, a, 600, "other tenant")
        mine = await redeem(loyalty, tenant_id, a, "five-off")
        theirs = [
            await redeem(loyalty, tenant_id, b, "free-shipping"),
            await redeem(loyalty, other, a, "five-off"),
        ]

        body = await export(loyalty, tenant_id, a)
        assert (body["service"], body["tenant_id"], body["customer_id"]) == (
            "loyalty",
            tenant_id,
            a,
        )
        records = body["records"]
        assert set(records) == TABLES
        for table, rows in records.items():
            assert rows, table
            assert {(r["tenant_id"], r["customer_id"]) for r in rows} == {(tenant_id, a)}, table

        [account] = records["accounts"]
        assert (account["available"], account["pending"], account["orders_count"]) == (300, 600, 1)
        assert account["erased"] is False

        [order] = records["orders"]
        assert (order["order_id"], order["total_minor"], order["currency"]) == (
            "o-1",
            10_000,
            "USD",
        )
        assert (order["first_order"], order["earned"], order["refund_ids"]) == (True, True, [])
        assert datetime.fromisoformat(order["placed_at"]) == START

        lots = records["lots"]
        assert sorted((lot["source"], lot["points"], lot["state"]) for lot in lots[:2]) == [
            ("first_order", 100, "pending"),
            ("order", 500, "pending"),
        ]
        assert {lot["order_id"] for lot in lots[:2]} == {"o-1"}
        assert (lots[2]["source"], lots[2]["points"], lots[2]["remaining"]) == ("adjust", 800, 300)
        assert datetime.fromisoformat(lots[2]["earned_at"]) == START + timedelta(hours=1)

        entries = records["entries"]
        assert [e["kind"] for e in entries] == ["earn_pending", "earn_pending", "adjust", "redeem"]
        assert sorted(e["pending_delta"] for e in entries[:2]) == [100, 500]
        assert (entries[2]["available_delta"], entries[2]["reason"]) == (
            800,
            "goodwill: parcel was late",
        )
        assert entries[2]["actor"] == f"key:{actor}"
        assert (entries[3]["available_delta"], entries[3]["ref"]) == (-500, mine["redemption_id"])

        [redemption] = records["redemptions"]
        assert redemption["id"] == mine["redemption_id"]
        assert (redemption["reward_id"], redemption["points"]) == ("five-off", 500)
        assert redemption["code"] == redemption["response"]["code"] == mine["code"]
        assert redemption["idempotency_key"] == "export-1"

        text = json.dumps(records)
        assert b not in text and "o-2" not in text and "b only" not in text
        assert "other tenant" not in text and other not in text
        for foreign in theirs:
            assert foreign["code"] not in text and foreign["redemption_id"] not in text

    async def test_no_key_material_in_the_export(self, loyalty: Loyalty, tenant_id):
        c = new_id("c")
        await adjust(loyalty, tenant_id, c, 500, "welcome")
        await redeem(loyalty, tenant_id, c, "five-off")
        headers = await loyalty.key(tenant_id, [EXPORT_SCOPE])
        r = await loyalty.client.get(url(c), headers=headers)
        assert r.status_code == 200
        # Platform tables (api_keys with their hashes, outbox, inbox) are not exported,
        # and no secret of the calling key shows up in any row.
        assert set(r.json()["records"]) == TABLES
        key = headers["Authorization"].removeprefix("Bearer ")
        assert key not in r.text and hash_key(key) not in r.text
        assert "key_hash" not in r.text

    async def test_scope_is_required(self, loyalty: Loyalty, tenant_id):
        reader = await loyalty.key(tenant_id, ["loyalty:read", "loyalty:write"])
        r = await loyalty.client.get(url("anyone"), headers=reader)
        assert r.status_code == 403
        assert r.json()["error"]["code"] == "forbidden"
        assert EXPORT_SCOPE in r.json()["error"]["message"]
        r = await loyalty.client.get(url("anyone"))
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "unauthorized"
        r = await loyalty.client.get(url("anyone"), headers=await loyalty.key(tenant_id, ["*"]))
        assert r.status_code == 200

    async def test_unknown_customer_has_every_table_empty(self, loyalty: Loyalty, tenant_id):
        body = await export(loyalty, tenant_id, "never-seen")
        assert body["customer_id"] == "never-seen"
        assert body["records"] == {table: [] for table in TABLES}


class TestExportAfterErasure:
    async def test_erased_customer_exports_nothing(self, loyalty: Loyalty, tenant_id):
        a, b = new_id("c"), new_id("c")
        await place_order(loyalty, tenant_id, a, "o-e", 4_000, count=1)
        await loyalty.wait_account(tenant_id, a, lambda acc: acc["pending"] == 300)
        for customer in (a, b):
            await adjust(loyalty, tenant_id, customer, 500, "note about a person")
        await redeem(loyalty, tenant_id, a, "five-off")
        before = await export(loyalty, tenant_id, a)
        assert all(before["records"][t] for t in TABLES)

        erasure = CustomerErasureRequested(requested_at=loyalty.clock.now())
        await loyalty.publish(loyalty.event(erasure, tenant_id, a))

        async def exported() -> dict[str, Any]:
            records: dict[str, Any] = (await export(loyalty, tenant_id, a))["records"]
            return records

        empty = {table: [] for table in TABLES}
        assert await eventually(exported, lambda r: r == empty, timeout=120) == empty
        # The rows are still there under the alias (aggregates survive erasure), and asking
        # for the alias by name does not hand them out.
        alias = pseudonym(tenant_id, a)
        async with loyalty.runtime.sessionmaker() as s:
            kept = await s.scalar(
                select(func.count()).where(
                    EntryRow.tenant_id == tenant_id, EntryRow.customer_id == alias
                )
            )
        assert kept == 4  # two pending earnings, the adjustment, the redemption
        assert (await export(loyalty, tenant_id, alias))["records"] == empty
        # Another customer of the tenant keeps their export.
        assert (await export(loyalty, tenant_id, b))["records"]["accounts"][0]["available"] == 500
