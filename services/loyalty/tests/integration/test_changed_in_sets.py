"""A run of order.fulfilled, order.delivered, order.refunded and order.cancelled events
is applied in sets (Handlers.orders_changed): the outcome is the one of applying the
same events one by one, in order (their per-event handlers, one transaction each).

As in test_placed_in_sets: the batch goes through the consumer runtime's own
transaction with the ledger group's handlers, the same events (same ids) are applied to
two tenants, one per path, and every row and outbox event is compared, less the tenant
and the random ids of lots and entries."""

from __future__ import annotations

import uuid
from datetime import timedelta
from decimal import Decimal
from typing import Any

from sqlalchemy import event, select

from afterglow.events import CloudEvent
from afterglow.events.batch import apply_in_one_transaction, inbox_claim
from afterglow.events.catalog import (
    Money,
    OrderCancelled,
    OrderDelivered,
    OrderFulfilled,
    OrderPlaced,
    OrderRefunded,
)
from afterglow.loyalty.domain import Tier
from afterglow.loyalty.handlers import CONSUMERS, Handlers
from afterglow.loyalty.models import LotRow

from ..loyalty_support import Loyalty
from .test_order_rules import refund, set_rules
from .test_placed_in_sets import CONSUMER, apply_batch, placed, state

Step = tuple[str, Any]  # (customer, event data)


def fulfilled(loyalty: Loyalty, order_id: str, days_ago: int = 0, **kw: Any) -> OrderFulfilled:
    at = loyalty.clock.now() - timedelta(days=days_ago)
    return OrderFulfilled(order_id=order_id, fulfilled_at=at, **kw)


def delivered(loyalty: Loyalty, order_id: str) -> OrderDelivered:
    return OrderDelivered(order_id=order_id, delivered_at=loyalty.clock.now(), reported_by="api")


def cancelled(loyalty: Loyalty, order_id: str) -> OrderCancelled:
    return OrderCancelled(order_id=order_id, cancelled_at=loyalty.clock.now())


def refunded(
    loyalty: Loyalty, order_id: str, refund_id: str, amount: int, full: bool = False
) -> OrderRefunded:
    return refund(order_id, refund_id, amount, full=full, at=loyalty.clock.now())


def earning_at_placed(loyalty: Loyalty) -> tuple[list[Step], list[Step]]:
    """The default program (earns when placed, spend tiers, 30-day return window):
    (before, batch). ``before`` is applied alike to both tenants, one event at a time."""
    now = loyalty.clock.now()
    before = [
        ("a", placed(loyalty, "a-1", 30_000, customer_orders_count=1)),
        ("c", placed(loyalty, "c-1", 10_000, customer_orders_count=1)),
        ("e", placed(loyalty, "e-1", 10_000, customer_orders_count=2)),
        # f: two orders whose points are spendable (500 + 200), then all of them spent
        # (both_paths, by an adjustment): f-1's full refund finds nothing left in its
        # lot or the others, and becomes a debt.
        ("f", placed(loyalty, "f-1", 10_000, customer_orders_count=2)),
        ("f", placed(loyalty, "f-2", 4_000, customer_orders_count=3)),
        ("f", fulfilled(loyalty, "f-1", days_ago=31)),
        ("f", fulfilled(loyalty, "f-2", days_ago=31)),
        # g: silver on 70,000 of spend; the oldest order, then the other, cancelled.
        ("g", placed(loyalty, "g-0", 10_000, placed_at=now - timedelta(days=20))),
        ("g", placed(loyalty, "g-1", 60_000, placed_at=now - timedelta(days=10))),
        ("h", placed(loyalty, "h-1", 10_000, customer_orders_count=4)),
    ]
    batch = [
        # a: released (fulfilled 31 days ago), the delivery changes nothing (fulfilment
        # wins), then a third refunded: a third of each lot taken back from the
        # available points; the same refund again takes nothing more.
        ("a", fulfilled(loyalty, "a-1", days_ago=31)),
        ("a", delivered(loyalty, "a-1")),
        ("a", refunded(loyalty, "a-1", "ra-1", 10_000)),
        ("a", refunded(loyalty, "a-1", "ra-1", 10_000)),
        # b: fulfilled before it is placed (nothing), placed, then fulfilled again (the
        # pending clock starts), in three runs of one batch.
        ("b", fulfilled(loyalty, "b-1")),
        ("b", placed(loyalty, "b-1", 20_000, customer_orders_count=1)),
        ("b", fulfilled(loyalty, "b-1")),
        ("b", fulfilled(loyalty, "b-1")),
        # c: fulfilled, cancelled (all its points void), then delivered: nothing.
        ("c", fulfilled(loyalty, "c-1")),
        ("c", cancelled(loyalty, "c-1")),
        ("c", delivered(loyalty, "c-1")),
        ("c", cancelled(loyalty, "c-1")),
        # d: an order never placed here.
        ("d", fulfilled(loyalty, "d-1")),
        ("d", refunded(loyalty, "d-1", "rd-1", 1_000)),
        # e: a partial refund in a currency the order does not state: flagged once.
        ("e", in_euros(loyalty, "e-1", "re-1", 2_000)),
        ("e", in_euros(loyalty, "e-1", "re-1", 2_000)),
        # f: a debt of f-1's 500, then f-2 refunded in half: 100 more.
        ("f", refunded(loyalty, "f-1", "rf-1", 10_000, full=True)),
        ("f", refunded(loyalty, "f-2", "rf-2", 2_000)),
        # g: down to bronze in two steps; when the tier is next reviewed moves with it.
        ("g", cancelled(loyalty, "g-0")),
        ("g", cancelled(loyalty, "g-1")),
        # h: a past fulfilment: released no earlier than now.
        ("h", fulfilled(loyalty, "h-1", days_ago=400, historical=True)),
    ]
    return before, batch


def in_euros(loyalty: Loyalty, order_id: str, refund_id: str, amount: int) -> OrderRefunded:
    return OrderRefunded(
        order_id=order_id,
        refund_id=refund_id,
        refunded_at=loyalty.clock.now(),
        amount=Money(amount=amount, currency="EUR"),
        full=False,
    )


def earning_at_delivery(loyalty: Loyalty) -> tuple[list[Step], list[Step]]:
    """A program that earns on delivery, tiers on points (silver at 1,000 x1.5): a tier
    crossed in the middle of the run sets the multiplier of the next order it earns."""
    before = [
        ("p", placed(loyalty, "p-1", 10_000, customer_orders_count=1)),
        ("p", placed(loyalty, "p-2", 20_000, customer_orders_count=2)),
        ("p", placed(loyalty, "p-3", 10_000, customer_orders_count=3)),
        ("q", placed(loyalty, "q-1", 10_000, customer_orders_count=1)),
        ("r", placed(loyalty, "r-1", 10_000, customer_orders_count=1)),
    ]
    batch = [
        # p: 500 + 100 (bronze), 1,000 (bronze; now 1,600: silver), 750 (silver), then
        # p-2 cancelled (its pending points void: 1,350, still silver), p-1 refunded in
        # full (750: back to bronze).
        ("p", delivered(loyalty, "p-1")),
        ("p", fulfilled(loyalty, "p-2")),
        ("p", delivered(loyalty, "p-2")),
        ("p", delivered(loyalty, "p-3")),
        ("p", cancelled(loyalty, "p-2")),
        ("p", refunded(loyalty, "p-1", "rp-1", 10_000, full=True)),
        # q: half refunded before it earns: earns on the rest, and the bonus.
        ("q", refunded(loyalty, "q-1", "rq-1", 5_000)),
        ("q", fulfilled(loyalty, "q-1")),
        ("q", delivered(loyalty, "q-1")),
        # r: cancelled before delivery: never earns.
        ("r", cancelled(loyalty, "r-1")),
        ("r", delivered(loyalty, "r-1")),
    ]
    return before, batch


POINTS_TIERS = {
    "earning_statuses": ["delivered"],
    "tier_basis": "points",
    "tiers": [
        Tier(name="bronze", threshold=0),
        Tier(name="silver", threshold=1_000, multiplier=Decimal("1.5")),
    ],
}


async def apply_one_by_one(loyalty: Loyalty, events: list[CloudEvent[Any]]) -> None:
    h = Handlers(loyalty.runtime)
    by_type = {
        OrderPlaced: h.order_placed,
        OrderFulfilled: h.order_fulfilled,
        OrderDelivered: h.order_delivered,
        OrderRefunded: h.order_refunded,
        OrderCancelled: h.order_cancelled,
    }
    for e in events:
        async with loyalty.runtime.sessionmaker.begin() as s:
            await by_type[type(e.data)](s, e)


async def full_state(loyalty: Loyalty, tenant: str) -> dict[str, Any]:
    """test_placed_in_sets' state, and what a clawback and a release change on a lot."""
    got = await state(loyalty, tenant)
    async with loyalty.runtime.sessionmaker() as s:
        got["lot_changes"] = [
            (lot.customer_id, lot.source, lot.source_id, lot.clawed, lot.expires_at)
            for lot in await s.scalars(
                select(LotRow)
                .where(LotRow.tenant_id == tenant)
                .order_by(LotRow.customer_id, LotRow.source_id, LotRow.source)
            )
        ]
    return got


async def both_paths(
    loyalty: Loyalty, before: list[Step], batch: list[Step], **rules: Any
) -> tuple[str, dict[str, Any], dict[str, Any], list[Step]]:
    """Apply ``before`` one by one to two tenants, then ``batch`` as one batch to the
    first and one by one to the second: (first tenant, its state, the second's)."""
    sets, single = f"t-{uuid.uuid4().hex[:12]}", f"t-{uuid.uuid4().hex[:12]}"
    ids = [str(uuid.uuid4()) for _ in before + batch]
    for tenant in (sets, single):
        await set_rules(loyalty, tenant, **rules)
        events = [
            loyalty.event(data, tenant, customer, id=i)
            for (customer, data), i in zip(before + batch, ids, strict=True)
        ]
        await apply_one_by_one(loyalty, events[: len(before)])
        if "f" in {c for c, _ in before}:
            # Spend all of f's 700 available points.
            r = await loyalty.client.post(
                "/v1/accounts/f/adjustments",
                json={"points": -700, "reason": "spent"},
                headers=await loyalty.key(tenant),
            )
            assert r.status_code == 201, r.text
        if tenant == sets:
            await apply_batch(loyalty, events[len(before) :])
        else:
            await apply_one_by_one(loyalty, events[len(before) :])
    return sets, await full_state(loyalty, sets), await full_state(loyalty, single), batch


async def repeated(loyalty: Loyalty, tenant: str, batch: list[Step]) -> dict[str, Any]:
    """The same batch again, as events with new ids (a business event re-sent): the
    state it leaves."""
    await apply_batch(loyalty, [loyalty.event(data, tenant, c) for c, data in batch])
    return await full_state(loyalty, tenant)


def accounts(got: dict[str, Any]) -> dict[str, tuple[Any, ...]]:
    """customer: (available, pending, lifetime earned, tier)"""
    return {a[0]: a[1:5] for a in got["accounts"]}


class TestOrdersChangedInSets:
    async def test_earning_when_placed_a_batch_gives_the_state_one_by_one_gives(
        self, loyalty: Loyalty
    ):
        tenant, got, want, batch = await both_paths(loyalty, *earning_at_placed(loyalty))
        assert got == want

        # And by hand, so that both paths cannot be wrong alike.
        acc = accounts(got)
        # a: 1,500 + 100 released, then a third of each lot back: 500 + 33.
        assert acc["a"][:2] == (1_600 - 533, 0)
        assert acc["b"][:2] == (0, 1_000 + 100)  # pending: the return window runs
        assert acc["c"][:2] == (0, 0)  # voided
        assert "d" not in acc
        kinds = [e[1] for e in got["entries"] if e[0] == "e"]
        assert kinds == ["earn_pending", "unpriced"]  # flagged once
        # f: 500 + 200 released, 700 spent; f-1's 500 back: its lot had 0 left, so
        # f-2's 0 and a debt of 500; then half of f-2's 200: a debt of 600.
        assert acc["f"][:2] == (-600, 0)
        assert acc["g"][3] == "bronze"
        assert [a[5] for a in got["accounts"] if a[0] == "g"] == [None]  # nothing to review
        tiers = [
            (e[2]["from_tier"], e[2]["to_tier"])
            for e in got["events"]
            if e[0] == "afterglow.tier.changed.v1" and e[1] == "g"
        ]
        assert tiers == [("bronze", "silver"), ("silver", "bronze")]
        assert acc["h"][:2] == (500, 0)  # a past order: released at once

        assert await repeated(loyalty, tenant, batch) == got

    async def test_earning_on_delivery_a_batch_gives_the_state_one_by_one_gives(
        self, loyalty: Loyalty
    ):
        tenant, got, want, batch = await both_paths(
            loyalty, *earning_at_delivery(loyalty), **POINTS_TIERS
        )
        assert got == want

        acc = accounts(got)
        # p: 600 + 1,000 + 750 (at silver), p-2's 1,000 void, p-1's 600 taken back.
        assert acc["p"] == (0, 750, 2_350, "bronze")
        tiers = [e[2]["to_tier"] for e in got["events"] if e[0] == "afterglow.tier.changed.v1"]
        assert tiers == ["silver", "bronze"]
        assert acc["q"][:2] == (0, 250 + 100)  # earned on the 50.00 left, and the bonus
        assert acc["r"] == (0, 0, 0, "bronze")

        assert await repeated(loyalty, tenant, batch) == got


class TestOrdersOfARun:
    async def test_are_written_by_one_statement_whatever_their_number(self, loyalty: Loyalty):
        """Twenty orders fulfilled in one batch: their rows are written by one UPDATE, not
        one execution per order (left to the session's flush, they were an executemany
        of twenty one-row UPDATEs, each planned and run apart by PostgreSQL)."""
        tenant = f"t-{uuid.uuid4().hex[:12]}"
        await set_rules(loyalty, tenant)
        orders = [(f"c{i}", f"o-{i}") for i in range(20)]
        await apply_batch(
            loyalty, [loyalty.event(placed(loyalty, o, 10_000), tenant, c) for c, o in orders]
        )
        fulfilments = [loyalty.event(fulfilled(loyalty, o), tenant, c) for c, o in orders]

        assert await order_updates(loyalty, fulfilments) == [(False, 1)]
        rows = {o["order_id"]: o for o in (await state(loyalty, tenant))["orders"]}
        assert all(rows[o]["fulfilled_at"] == loyalty.clock.now() for _, o in orders)

        # The same fulfilments announced again (new event ids): nothing to write.
        again = [loyalty.event(fulfilled(loyalty, o), tenant, c) for c, o in orders]
        assert await order_updates(loyalty, again) == []


async def order_updates(loyalty: Loyalty, events: list[CloudEvent[Any]]) -> list[tuple[bool, int]]:
    """Apply ``events`` as one batch; the UPDATEs of loyalty.orders it sent, each as
    (an executemany?, its rows)."""
    updates: list[tuple[bool, int]] = []

    def record(conn: Any, cursor: Any, statement: str, params: Any, ctx: Any, many: bool):
        if statement.lstrip().startswith("UPDATE loyalty.orders"):
            updates.append((many, len(params) if many else 1))

    handlers = CONSUMERS[0].handlers(loyalty.runtime)
    claim = inbox_claim(loyalty.runtime.tables.inbox)
    async with loyalty.runtime.sessionmaker.begin() as s:
        conn = (await s.connection()).sync_connection
        assert conn is not None
        event.listen(conn, "before_cursor_execute", record)
        try:
            await apply_in_one_transaction(
                s, claim, CONSUMER, [(e, handlers[e.type]) for e in events]
            )
        finally:
            event.remove(conn, "before_cursor_execute", record)
    return updates
