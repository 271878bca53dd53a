"""Stored deliveries applied in sets (one statement per table per batch) give exactly
what the one-by-one statements give: the same order book, facts, counters, outcomes
and outbox events, duplicates and out-of-order deliveries included; a delivery that
cannot be normalized is quarantined alone; a repeated batch changes nothing.

The app runs in the ``api`` role (no processing worker of its own): the webhooks are
stored ``received`` through the real receivers and group commit, and each test runs
the processing rounds itself. The clock is a ManualClock set back to one start for
each tenant, so two tenants' deliveries have the same receive times and their events
can be compared field by field.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from afterglow.devstack.stack import Stack
from afterglow.devstack.testing import running_service
from afterglow.ingest import processing
from afterglow.ingest.app import create_app
from afterglow.ingest.settings import IngestSettings
from afterglow.kit.app import Runtime
from afterglow.kit.clock import ManualClock

from ..hotpath_support import database
from ..ingest_support import b64hmac, dumps, fixture, post_shopify, post_woo, register

START = datetime(2026, 3, 6, 12, 0, tzinfo=UTC)
CLOCK = ManualClock(START)
SEED = 41_000_000


@pytest.fixture(scope="module")
async def app_and_client(
    stack: Stack, settings: IngestSettings
) -> AsyncIterator[tuple[object, httpx.AsyncClient]]:
    api_only = settings.model_copy(update={"service_role": "api"})
    async with running_service(stack, create_app, api_only, clock=CLOCK) as ingest:
        yield ingest.app, ingest.client


def shopify_order(order_id: int, customer_id: int) -> dict[str, Any]:
    order = fixture("shopify_order")
    order["id"] = order_id
    order["customer"]["id"] = customer_id
    order["customer"]["orders_count"] = 0  # the order book's count decides
    return order


def shopify_refund(order_id: int, refund_id: int, amount: str) -> dict[str, Any]:
    refund = fixture("shopify_refund")
    refund["id"], refund["order_id"] = refund_id, order_id
    refund["transactions"][0]["amount"] = amount
    refund["transactions"][0]["order_id"] = order_id
    return refund


def woo_order(order_id: int, **over: Any) -> dict[str, Any]:
    order = fixture("woocommerce_order")
    order["id"] = order_id
    order.update(over)
    return order


# (platform, topic, payload) in the order the shop sent them.
Delivery = tuple[str, str, dict[str, Any]]


def a_shops_day() -> list[Delivery]:
    """Every kind of repeat and disorder the order book must absorb."""
    a, b, c = SEED + 1, SEED + 2, SEED + 3
    fulfilment_before_create = fixture("shopify_fulfillment")
    fulfilment_before_create["order_id"] = b
    return [
        ("shopify", "orders/create", shopify_order(a, 501)),
        ("shopify", "fulfillments/create", fulfilment_before_create),  # before its order
        ("shopify", "orders/create", shopify_order(b, 501)),  # the customer's second
        ("shopify", "orders/paid", shopify_order(a, 501)),  # the same order seen twice
        ("shopify", "refunds/create", shopify_refund(a, SEED + 11, "200.00")),  # partial
        ("shopify", "refunds/create", shopify_refund(a, SEED + 12, "203.00")),  # the rest
        ("shopify", "refunds/create", shopify_refund(a, SEED + 12, "203.00")),  # again
        ("woocommerce", "order.created", woo_order(c)),
        (
            "woocommerce",
            "order.updated",
            woo_order(
                c,
                date_modified_gmt="2026-03-03T10:00:00",
                refunds=[{"id": 9, "total": "-5.00", "reason": "scratch"}],
            ),
        ),
        ("shopify", "orders/create", shopify_order(SEED + 4, 502)),
        ("shopify", "orders/create", shopify_order(b, 501)),  # again, another webhook id
    ]


def rare_ones_in_the_middle() -> list[Delivery]:
    """Deliveries a set does not take (a tracker's update reads the order book to find
    its order; a customer's erasure deletes and redacts), between common ones."""
    a, b = SEED + 201, SEED + 202
    delivered = fixture("aftership_tracking_update")
    delivered["event_id"] = str(uuid.uuid4())
    delivered["msg"]["order_id"] = str(a)
    redact = fixture("shopify_customers_redact")
    redact["customer"]["id"] = 801
    # An email no later delivery carries: a redact also blanks the stored bodies that
    # carry it, those not yet processed included, which one by one then quarantines
    # while a batch normalized them before (as before sets; not what this compares).
    redact["customer"]["email"] = "left-the-shop@example.com"
    return [
        ("shopify", "orders/create", shopify_order(a, 801)),
        ("aftership", "tracking_update", delivered),  # its order is in this batch
        ("shopify", "refunds/create", shopify_refund(a, SEED + 211, "100.00")),
        ("shopify", "customers/redact", redact),
        ("shopify", "orders/create", shopify_order(b, 802)),
        ("shopify", "orders/create", shopify_order(SEED + 203, 801)),
    ]


async def store(
    client: httpx.AsyncClient, tenant_id: str, deliveries: list[Delivery], start: datetime = START
) -> None:
    """Post each delivery as its platform does, one millisecond apart from ``start``."""
    secrets = await _secrets(client, tenant_id)
    CLOCK.set(start)
    for platform, topic, payload in deliveries:
        CLOCK.advance(timedelta(milliseconds=1))
        if platform == "shopify":
            r = await post_shopify(
                client,
                tenant_id,
                secrets["shopify"],
                topic,
                payload,
                webhook_id=str(uuid.uuid4()),
                settle=False,
            )
        elif platform == "woocommerce":
            r = await post_woo(client, tenant_id, secrets["woocommerce"], topic, payload, False)
        else:
            body = dumps(payload)
            r = await client.post(
                f"/webhooks/aftership/{tenant_id}",
                content=body,
                headers={"aftership-hmac-sha256": b64hmac(secrets["aftership"], body)},
            )
        assert r.status_code == 200, r.text
        assert r.json()["status"] in ("received", "duplicate"), r.text


_SECRETS: dict[str, dict[str, str]] = {}


async def _secrets(client: httpx.AsyncClient, tenant_id: str) -> dict[str, str]:
    if tenant_id not in _SECRETS:
        _SECRETS[tenant_id] = await register(client, tenant_id)
    return _SECRETS[tenant_id]


Round = Callable[[Runtime, int], Awaitable[int]]


async def drain(runtime: Runtime, engine: AsyncEngine, tenant_id: str, round_: Round) -> int:
    """Rounds until none of the tenant's deliveries is ``received``; how many ran."""
    for rounds in range(1, 200):
        assert await round_(runtime, 500) != processing.BUSY
        if not await _received(engine, tenant_id):
            return rounds
    raise AssertionError("deliveries still received after 200 rounds")


async def _received(engine: AsyncEngine, tenant_id: str) -> int:
    async with engine.connect() as conn:
        return int(
            (
                await conn.execute(
                    text(
                        "SELECT count(*) FROM ingest.deliveries "
                        "WHERE tenant_id = :t AND status = 'received'"
                    ),
                    {"t": tenant_id},
                )
            ).scalar_one()
        )


async def state(engine: AsyncEngine, tenant_id: str) -> dict[str, Any]:
    """What processing wrote for the tenant, without what differs by tenant alone
    (its id in keys and event ids): order book, counters, facts, outcomes, events."""
    t = {"t": tenant_id}
    async with engine.connect() as conn:

        async def rows(sql: str, **params: Any) -> list[tuple[Any, ...]]:
            return [tuple(r) for r in (await conn.execute(text(sql), {**t, **params})).all()]

        outbox = await rows(
            "SELECT event_type, key, headers, value FROM ingest.outbox "
            "WHERE key LIKE :k AND topic <> 'afterglow.tenants' ORDER BY id",
            k=f"{tenant_id}:%",
        )
        return {
            "orders": await rows(
                "SELECT order_id, platform_order_id, subject, total_amount, currency, "
                "presentment_amount, presentment_currency, customer_order_seq, "
                "refunded_amount, placed_at FROM ingest.orders WHERE tenant_id = :t "
                "ORDER BY order_id"
            ),
            "counts": await rows(
                "SELECT subject, orders FROM ingest.customer_order_counts "
                "WHERE tenant_id = :t ORDER BY subject"
            ),
            "facts": await rows(
                "SELECT fact_key, created_at FROM ingest.order_facts WHERE tenant_id = :t "
                "ORDER BY fact_key"
            ),
            "deliveries": await rows(
                "SELECT topic, status, last_error, subjects, cardinality(event_ids) "
                "FROM ingest.deliveries WHERE tenant_id = :t ORDER BY received_at, id"
            ),
            "events": [_event(tenant_id, *row) for row in outbox],
        }


def _event(tenant_id: str, event_type: str, key: str, headers: Any, value: bytes) -> Any:
    # ce_id derives from the tenant, ce_tenantid is it; the rest must be equal.
    kept = {k: v for k, v in headers if k not in ("ce_id", "ce_tenantid")}
    return (event_type, key.removeprefix(f"{tenant_id}:"), kept, json.loads(bytes(value)))


def placed(s: dict[str, Any]) -> list[tuple[str, int]]:
    """(order id, customer_orders_count) of each order.placed, in outbox order."""
    return [
        (data["order_id"], data["customer_orders_count"])
        for event_type, _, _, data in s["events"]
        if event_type.endswith("order.placed.v1")
    ]


@pytest.fixture
async def engine(stack: Stack) -> AsyncIterator[AsyncEngine]:
    async with database(stack) as e:
        yield e


class TestBatchEqualsOneByOne:
    async def test_one_batch_and_one_by_one_write_the_same_book_and_events(
        self, client, runtime, engine
    ):
        in_sets, one_by_one = f"sets-{uuid.uuid4().hex[:8]}", f"rows-{uuid.uuid4().hex[:8]}"
        await store(client, in_sets, a_shops_day())
        assert await drain(runtime, engine, in_sets, processing.process_received) == 1
        await store(client, one_by_one, a_shops_day())
        await drain(runtime, engine, one_by_one, processing.process_one_by_one)

        batch, rows = await state(engine, in_sets), await state(engine, one_by_one)
        assert batch == rows
        # And what they agree on is what the shop said, each fact once:
        a, b, c = (f"shopify:{SEED + 1}", f"shopify:{SEED + 2}", f"woocommerce:{SEED + 3}")
        assert placed(batch) == [(a, 1), (b, 2), (c, 1), (f"shopify:{SEED + 4}", 1)]
        kinds = [(e[0].split(".")[-2], e[3].get("order_id")) for e in batch["events"]]
        assert kinds.count(("refunded", a)) == 2 and kinds.count(("fulfilled", b)) == 1
        refunds = [e[3] for e in batch["events"] if e[0].endswith("order.refunded.v1")]
        assert [(r["order_id"], r["full"]) for r in refunds] == [(a, False), (a, True), (c, False)]
        # The fulfilment came before its order: keyed by the order, as one by one does.
        fulfilled = next(e for e in batch["events"] if e[0].endswith("order.fulfilled.v1"))
        assert fulfilled[1] == f"order:{b}"
        assert {(o[0], o[8]) for o in batch["orders"]} >= {(a, 40300), (c, 500)}
        assert [d[1] for d in batch["deliveries"]] == ["processed"] * len(batch["deliveries"])

    async def test_deliveries_applied_alone_between_sets_see_what_came_before(
        self, client, runtime, engine
    ):
        in_sets, one_by_one = f"sets-{uuid.uuid4().hex[:8]}", f"rows-{uuid.uuid4().hex[:8]}"
        await store(client, in_sets, rare_ones_in_the_middle())
        assert await drain(runtime, engine, in_sets, processing.process_received) == 1
        await store(client, one_by_one, rare_ones_in_the_middle())
        await drain(runtime, engine, one_by_one, processing.process_one_by_one)

        batch, rows = await state(engine, in_sets), await state(engine, one_by_one)
        assert batch == rows
        types = [e[0].split(".")[-2] for e in batch["events"]]
        assert types == ["placed", "delivered", "refunded", "erasure_requested", "placed", "placed"]
        # The tracker found the order the same batch placed, and so its customer.
        delivered = batch["events"][1]
        assert delivered[1] == "801" and delivered[3]["order_id"] == f"shopify:{SEED + 201}"


class TestPoisonInTheMiddle:
    async def test_it_alone_is_quarantined_and_the_rest_apply_in_order(
        self, client, runtime, engine, tenant_id
    ):
        poison = shopify_order(SEED + 103, 601)
        poison["customer"] = "not an object"
        deliveries: list[Delivery] = [
            ("shopify", "orders/create", shopify_order(SEED + 101, 601)),
            ("shopify", "orders/create", shopify_order(SEED + 102, 601)),
            ("shopify", "orders/create", poison),
            ("shopify", "orders/create", shopify_order(SEED + 104, 601)),
            ("shopify", "orders/create", shopify_order(SEED + 105, 601)),
        ]
        await store(client, tenant_id, deliveries)
        assert await drain(runtime, engine, tenant_id, processing.process_received) == 1

        s = await state(engine, tenant_id)
        statuses = [d[1] for d in s["deliveries"]]
        assert statuses == ["processed", "processed", "quarantined", "processed", "processed"]
        assert s["deliveries"][2][2]  # the reason is recorded
        applied = (101, 102, 104, 105)
        assert placed(s) == [(f"shopify:{SEED + n}", i) for i, n in enumerate(applied, 1)]
        assert s["counts"] == [("601", 4)]


class TestRepeatedBatch:
    async def test_the_same_deliveries_again_change_nothing(
        self, client, runtime, engine, tenant_id
    ):
        await store(client, tenant_id, a_shops_day())
        await drain(runtime, engine, tenant_id, processing.process_received)
        first = await state(engine, tenant_id)
        # A sender retrying every one with a fresh webhook id, an hour later: stored
        # again (WooCommerce's are duplicates: its dedupe key is the order's version).
        await store(client, tenant_id, a_shops_day(), START + timedelta(hours=1))
        await drain(runtime, engine, tenant_id, processing.process_received)
        again = await state(engine, tenant_id)

        assert {k: again[k] for k in ("orders", "counts", "facts", "events")} == {
            k: first[k] for k in ("orders", "counts", "facts", "events")
        }
        repeats = again["deliveries"][len(first["deliveries"]) :]
        assert repeats and {(d[1], d[4]) for d in repeats} == {("processed", 0)}
