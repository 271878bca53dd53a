"""GET /v1/customers/{id}/export: every journey and messaging row of one customer of the
calling tenant, put in by real events (orders, a delivery, an unsubscribe, an erasure) and
the real messaging API, on the suite's orchestrator."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import httpx

from afterglow.events import catalog as c
from afterglow.events.testing import eventually

from ..conftest import Orchestrator, new_customer

TABLES = {
    "customer_profiles",
    "journey_instances",
    "journey_transitions",
    "journey_timers",
    "goal_conversions",
    "message_contacts",
    "message_orders",
    "messages",
    "message_decisions",
}
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
Records = dict[str, list[dict[str, Any]]]


def placed(orch: Orchestrator, order_id: str, email: str, hours: int = 0) -> c.OrderPlaced:
    """An order of 30.00 EUR for two mugs by someone called Ana, ``hours`` from now."""
    return c.OrderPlaced(
        order_id=order_id,
        order_number=f"#{order_id}",
        platform="api",
        placed_at=orch.clock.now() + timedelta(hours=hours),
        customer=c.CustomerInfo(
            email=email,
            phone="+4915100000001",
            first_name="Ana",
            timezone="Europe/Berlin",
            accepts_marketing=True,
        ),
        total=c.Money(amount=3000, currency="EUR"),
        line_items=[
            c.LineItem(
                sku="MUG-1",
                title="Mug",
                quantity=2,
                unit_price=c.Money(amount=1500, currency="EUR"),
            )
        ],
    )


async def export(orch: Orchestrator, customer: str, h: dict[str, str]) -> httpx.Response:
    return await orch.client.get(f"/v1/customers/{customer}/export", headers=h)


async def records_until(
    orch: Orchestrator, customer: str, h: dict[str, str], check: Callable[[Records], bool]
) -> Records:
    async def probe() -> Records:
        r = await export(orch, customer, h)
        assert r.status_code == 200, r.text
        records: Records = r.json()["records"]
        return records

    return await eventually(probe, check, timeout=30)


async def exporter(orch: Orchestrator, tenant: str) -> dict[str, str]:
    """A key that exports and, to put data in, requests messages and sets up messaging."""
    return await orch.headers(tenant, ["customers:export", "messages:write"])


async def set_up_messaging(orch: Orchestrator, h: dict[str, str]) -> None:
    """Tenant-level rows that must never show in a customer's export: the endpoint with
    its signing secret (nothing listens there) and the shop's settings."""
    r = await orch.client.put(
        "/v1/messaging/endpoint", json={"url": "http://127.0.0.1:9/", "secret": SECRET}, headers=h
    )
    assert r.status_code == 200, r.text
    r = await orch.client.put("/v1/messaging/settings", json={"shop_name": "Lumen"}, headers=h)
    assert r.status_code == 200, r.text


async def request_reward(orch: Orchestrator, customer: str, h: dict[str, str]) -> str:
    request_id = f"reward-{uuid.uuid4().hex[:8]}"
    body = {
        "customer_id": customer,
        "request_id": request_id,
        "kind": "reward_code",
        "category": "transactional",
        "variables": {"reward_code": "THANKS10"},
    }
    r = await orch.client.post("/v1/messages", json=body, headers=h)
    assert r.status_code == 202, r.text
    return request_id


def settled(messages: int) -> Callable[[Records], bool]:
    """Both consumers (engine, messaging) and the message requests are through."""

    def check(rec: Records) -> bool:
        decided = {d["message_id"] for d in rec["message_decisions"]}
        return (
            len(rec["messages"]) == messages
            and decided == {m["id"] for m in rec["messages"]}
            and bool(rec["message_contacts"])
            and bool(rec["customer_profiles"])
        )

    return check


class TestExport:
    async def test_exports_every_table_of_this_customer_and_tenant_only(
        self, orch: Orchestrator, tenant_id: str
    ) -> None:
        other_tenant = f"t-{uuid.uuid4().hex[:12]}"
        h, h_other = await exporter(orch, tenant_id), await exporter(orch, other_tenant)
        await set_up_messaging(orch, h)
        a, b = new_customer(), new_customer()
        a1, a2 = f"{a}-1", f"{a}-2"
        await orch.publish(tenant_id, a, placed(orch, a1, "ana@example.com"))
        # A repeat order an hour later: a goal conversion, and it supersedes the first journey.
        await orch.publish(tenant_id, a, placed(orch, a2, "ana@example.com", hours=1))
        delivered = orch.clock.now() + timedelta(hours=2)
        await orch.publish(
            tenant_id, a, c.OrderDelivered(order_id=a2, delivered_at=delivered, reported_by="api")
        )
        await orch.publish(
            tenant_id, a, c.CustomerUnsubscribed(unsubscribed_at=delivered, channel="sms")
        )
        reward = await request_reward(orch, a, h)
        await orch.publish(tenant_id, b, placed(orch, f"{b}-1", "bea@example.com"))
        await orch.publish(other_tenant, a, placed(orch, f"{a}-x", "ana@other.example"))

        def a_done(rec: Records) -> bool:
            contacts = rec["message_contacts"]
            return (
                settled(3)(rec)
                and bool(rec["goal_conversions"])
                and any(t["state"] == "pending" for t in rec["journey_timers"])
                and bool(contacts and contacts[0]["sms_unsubscribed_at"])
                and len(rec["message_orders"]) == 2
            )

        rec = await records_until(orch, a, h, a_done)
        await records_until(orch, b, h, settled(1))
        await records_until(orch, a, h_other, settled(1))
        r = await export(orch, a, h)
        assert r.status_code == 200, r.text
        body = r.json()
        assert (body["service"], body["tenant_id"], body["customer_id"]) == (
            "journey-orchestrator",
            tenant_id,
            a,
        )
        rec = body["records"]
        assert set(rec) == TABLES
        for table, rows in rec.items():
            for row in rows:
                assert row.get("tenant_id", tenant_id) == tenant_id, table
                assert row.get("customer_id", a) == a, table

        [profile] = rec["customer_profiles"]
        assert (profile["orders_count"], profile["total_spent"], profile["currency"]) == (
            2,
            6000,
            "EUR",
        )
        assert profile["timezone"] == "Europe/Berlin"

        by_order = {i["order_id"]: i for i in rec["journey_instances"]}
        assert set(by_order) == {a1, a2}
        first, second = by_order[a1], by_order[a2]
        assert (first["journey"], first["status"], second["status"]) == (
            "default",
            "exited",
            "running",
        )
        assert first["state"]["exit_reason"] == "superseded by a new order"
        assert second["anchors"]["afterglow.order.delivered.v1"] == delivered.isoformat()

        history = rec["journey_transitions"]
        assert {t["instance_id"] for t in history} == {first["id"], second["id"]}
        assert ("exit", "superseded by a new order") in {(t["kind"], t["reason"]) for t in history}
        assert [t["id"] for t in history] == sorted(t["id"] for t in history)

        pending = [t for t in rec["journey_timers"] if t["state"] == "pending"]
        assert pending and {t["instance_id"] for t in pending} == {second["id"]}
        assert pending[0]["payload"] == {"journey": "default", "version": 1}

        [goal] = rec["goal_conversions"]
        assert (goal["instance_id"], goal["journey"], goal["version"]) == (
            first["id"],
            "default",
            1,
        )

        [contact] = rec["message_contacts"]
        assert (contact["email"], contact["phone"], contact["first_name"]) == (
            "ana@example.com",
            "+4915100000001",
            "Ana",
        )
        assert contact["accepts_marketing"] is True and contact["email_unsubscribed_at"] is None
        assert contact["sms_unsubscribed_at"] == delivered.isoformat()
        assert (contact["orders_count"], contact["total_spent_minor"]) == (2, 6000)

        orders = {o["order_id"]: o for o in rec["message_orders"]}
        assert set(orders) == {a1, a2}
        assert orders[a1]["order_number"] == f"#{a1}" and orders[a1]["total_minor"] == 3000
        assert orders[a1]["items"] == [{"title": "Mug", "quantity": 2, "sku": "MUG-1"}]

        messages = {m["request_id"]: m for m in rec["messages"]}
        assert sorted(m["kind"] for m in messages.values()) == [
            "reward_code",
            "thank_you",
            "welcome",
        ]
        assert messages[reward]["variables"] == {"reward_code": "THANKS10"}
        assert '"THANKS10"' in messages[reward]["request_value"]  # the request, as received
        assert messages[reward]["request_key"] == f"{tenant_id}:{a}"
        decisions = rec["message_decisions"]
        assert {d["message_id"] for d in decisions} == {m["id"] for m in messages.values()}
        for m in messages.values():
            first_decision = next(d for d in decisions if d["message_id"] == m["id"])
            assert first_decision["decision"] == "queued"
        assert [d["id"] for d in decisions] == sorted(d["id"] for d in decisions)

        # Nobody else's rows: not B's of this tenant, not A's of the other tenant (whose own
        # export shows they exist), and nothing of the tenant's messaging setup.
        for absent in (b, "bea@example.com", other_tenant, "ana@other.example", f"{a}-x"):
            assert absent not in r.text
        theirs = (await export(orch, a, h_other)).json()
        assert theirs["records"]["message_contacts"][0]["email"] == "ana@other.example"
        assert "ana@example.com" not in str(theirs)
        for tenant_level in (SECRET, "endpoint_secret", "endpoint_url", "127.0.0.1", "Lumen"):
            assert tenant_level not in r.text

    async def test_an_unknown_customer_has_every_table_empty(
        self, orch: Orchestrator, tenant_id: str
    ) -> None:
        h = await orch.headers(tenant_id, ["*"])  # a "*" key carries customers:export
        r = await export(orch, "nobody-here", h)
        assert r.status_code == 200, r.text
        assert r.json()["customer_id"] == "nobody-here"
        assert r.json()["records"] == {table: [] for table in TABLES}

    async def test_needs_a_key_with_the_export_scope(
        self, orch: Orchestrator, tenant_id: str
    ) -> None:
        readers = await orch.headers(tenant_id, ["journeys:read", "messages:read"])
        r = await export(orch, new_customer(), readers)
        assert r.status_code == 403
        assert r.json()["error"]["code"] == "forbidden"
        assert "customers:export" in r.json()["error"]["message"]
        r = await export(orch, new_customer(), {})
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"

    async def test_after_erasure_only_what_erasure_keeps_is_exported(
        self, orch: Orchestrator, tenant_id: str
    ) -> None:
        # Erasure here keeps the customer's id (no pseudonym): contact details, orders and
        # message variables go; counts, the journey history and consent marks stay, and
        # they are still the customer's, so the export shows them and nothing more.
        h = await exporter(orch, tenant_id)
        a, b = new_customer(), new_customer()
        await orch.publish(tenant_id, a, placed(orch, f"{a}-1", "ana@example.com"))
        await orch.publish(
            tenant_id,
            a,
            c.CustomerUnsubscribed(unsubscribed_at=orch.clock.now(), channel="email"),
        )
        await request_reward(orch, a, h)
        await orch.publish(tenant_id, b, placed(orch, f"{b}-1", "bea@example.com"))
        await records_until(orch, a, h, settled(2))
        await records_until(orch, b, h, settled(1))

        await orch.publish(tenant_id, a, c.CustomerErasureRequested(requested_at=orch.clock.now()))

        def erased(rec: Records) -> bool:
            contact, profile = rec["message_contacts"][0], rec["customer_profiles"][0]
            return bool(contact["erased_at"]) and profile["timezone"] is None

        rec = await records_until(orch, a, h, erased)
        [contact] = rec["message_contacts"]
        assert (contact["email"], contact["phone"], contact["first_name"]) == (None, None, None)
        assert contact["email_unsubscribed_at"] is not None  # a refusal outlives the erasure
        assert rec["message_orders"] == []
        assert len(rec["messages"]) == 2
        for m in rec["messages"]:
            assert (m["variables"], m["request_value"]) == ({}, "{}")
        [profile] = rec["customer_profiles"]
        assert (profile["orders_count"], profile["consent"]) == (1, False)
        [instance] = rec["journey_instances"]
        assert (instance["status"], instance["order_id"], instance["anchors"]) == (
            "exited",
            None,
            {},
        )
        assert instance["state"]["exit_reason"] == "erasure requested"
        assert rec["journey_transitions"][-1]["reason"] == "erasure requested"
        r = await export(orch, a, h)
        for gone in ("ana@example.com", "+4915100000001", "Ana", "THANKS10", "Mug", f"{a}-1"):
            assert gone not in r.text
        # B, in the same tenant, keeps everything.
        theirs = (await export(orch, b, h)).json()["records"]
        assert theirs["message_contacts"][0]["email"] == "bea@example.com"
        assert len(theirs["message_orders"]) == 1
