"""A run of order.placed events is applied in sets (Handlers.orders_placed): the outcome
is the one of applying the same events one by one, in order (Handlers.order_placed, one
transaction each, the path before the set path).

The batch goes through the consumer runtime's own transaction
(:func:`afterglow.events.batch.apply_in_one_transaction` with the ledger group's
handlers), so "in one batch" is certain rather than left to how the broker groups
records. The same events (same ids) are applied to two tenants, one per path, and every
row and outbox event the two paths wrote is compared, less the tenant and the random ids
of lots and entries."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from afterglow.events import CloudEvent
from afterglow.events.batch import apply_in_one_transaction, inbox_claim
from afterglow.events.catalog import (
    ANONYMOUS_SUBJECT_PREFIX,
    Money,
    OrderFulfilled,
    OrderPlaced,
)
from afterglow.loyalty.handlers import CONSUMERS, Handlers
from afterglow.loyalty.models import Account, EntryRow, LotRow, OrderRow

from ..loyalty_support import Loyalty
from .test_order_rules import set_rules

# Not the live consumer's inbox name: a batch applied here is one it never sees.
CONSUMER = "tests.placed-in-sets"


def placed(loyalty: Loyalty, order_id: str, total: int, **kw: Any) -> OrderPlaced:
    fields: dict[str, Any] = {
        "order_id": order_id,
        "platform": "api",
        "placed_at": loyalty.clock.now(),
        "customer": {},
        "total": Money(amount=total, currency="USD"),
    }
    return OrderPlaced(**{**fields, **kw})


def script(loyalty: Loyalty) -> list[tuple[str, Any]]:
    """(customer, data): one batch, in partition order."""
    now = loyalty.clock.now()
    anonymous = f"{ANONYMOUS_SUBJECT_PREFIX}shopify:4242"
    twice = placed(loyalty, "a-2", 30_000, customer_orders_count=2)
    return [
        # Customer a: a first order (bonus), then a second that lifts the spend to
        # silver (a tier change and a tier-up message), then a third earned at silver's
        # multiplier; the second announced again under another event id.
        ("a", placed(loyalty, "a-1", 30_000, customer_orders_count=1)),
        ("b", placed(loyalty, "b-1", 12_345, customer_orders_count=1)),
        ("a", twice),
        ("a", twice),
        ("a", placed(loyalty, "a-3", 10_000, customer_orders_count=3)),
        (anonymous, placed(loyalty, "anon-1", 9_000)),
        # A past order: never a first order, no tier-up message.
        (
            "h",
            placed(
                loyalty,
                "h-1",
                70_000,
                customer_orders_count=1,
                historical=True,
                placed_at=now - timedelta(days=40),
            ),
        ),
        # No amount in the program's currency and no rate: unpriced, noted in the ledger.
        (
            "e",
            OrderPlaced(
                order_id="e-1",
                platform="api",
                placed_at=now,
                customer={},
                total=Money(amount=8_000, currency="EUR"),
                customer_orders_count=1,
            ),
        ),
        # An event of another type between two runs: it sees the first run's writes.
        ("b", OrderFulfilled(order_id="b-1", fulfilled_at=now)),
        ("b", placed(loyalty, "b-2", 40_000, customer_orders_count=2)),
        ("b", placed(loyalty, "b-1", 12_345, customer_orders_count=1)),  # seen in run 1
        ("i", placed(loyalty, "i-1", 5_000, customer_orders_count=1, earn_points=False)),
        # No count from ingest: the account's own count of earlier orders decides, and
        # the first of the run counts for the second.
        ("n", placed(loyalty, "n-1", 2_000)),
        ("n", placed(loyalty, "n-2", 2_000)),
    ]


async def apply_batch(loyalty: Loyalty, events: list[CloudEvent[Any]]) -> None:
    handlers = CONSUMERS[0].handlers(loyalty.runtime)
    claim = inbox_claim(loyalty.runtime.tables.inbox)
    async with loyalty.runtime.sessionmaker.begin() as s:
        await apply_in_one_transaction(s, claim, CONSUMER, [(e, handlers[e.type]) for e in events])


async def apply_one_by_one(loyalty: Loyalty, events: list[CloudEvent[Any]]) -> None:
    h = Handlers(loyalty.runtime)
    by_type = {OrderPlaced: h.order_placed, OrderFulfilled: h.order_fulfilled}
    seen: set[str] = set()
    for e in events:
        if e.id in seen:
            continue  # the inbox applies an event id once
        seen.add(e.id)
        async with loyalty.runtime.sessionmaker.begin() as s:
            await by_type[type(e.data)](s, e)


async def state(loyalty: Loyalty, tenant: str) -> dict[str, Any]:
    """Every row the ledger holds for ``tenant``, in a comparable form."""
    async with loyalty.runtime.sessionmaker() as s:
        accounts = [
            (
                a.customer_id,
                a.available,
                a.pending,
                a.lifetime_earned,
                a.tier,
                a.tier_review_at,
                a.orders_count,
            )
            for a in await s.scalars(
                select(Account).where(Account.tenant_id == tenant).order_by(Account.customer_id)
            )
        ]
        orders = [
            {c.key: getattr(o, c.key) for c in OrderRow.__table__.columns if c.key != "tenant_id"}
            for o in await s.scalars(
                select(OrderRow).where(OrderRow.tenant_id == tenant).order_by(OrderRow.order_id)
            )
        ]
        lots = [
            (
                lot.customer_id,
                lot.source,
                lot.source_id,
                lot.order_id,
                lot.points,
                lot.state,
                lot.remaining,
                lot.available_at,
                lot.rule_snapshot,
            )
            for lot in await s.scalars(
                select(LotRow)
                .where(LotRow.tenant_id == tenant)
                .order_by(LotRow.customer_id, LotRow.source_id, LotRow.source)
            )
        ]
        entries = [
            (
                e.customer_id,
                e.kind,
                e.pending_delta,
                e.available_delta,
                e.order_id,
                e.reason,
                e.rule_snapshot,
            )
            for e in await s.scalars(
                select(EntryRow).where(EntryRow.tenant_id == tenant).order_by(EntryRow.seq)
            )
        ]
        t = loyalty.runtime.tables.outbox
        rows = await s.execute(
            select(t.c.event_type, t.c.key, t.c.value)
            .where(t.c.key.startswith(f"{tenant}:"))
            .order_by(t.c.id)
        )
        events = []
        for kind, key, value in rows:
            # The record's value is the event's data; its key is tenant:customer.
            data = {k: v for k, v in json.loads(value).items() if k != "entry_id"}
            if kind == "afterglow.message.requested.v1":
                data["request_id"] = "<derived from the tenant>"
            events.append((kind, key.removeprefix(f"{tenant}:"), data))
    return {
        "accounts": accounts,
        "orders": orders,
        "lots": lots,
        "entries": entries,
        "events": events,
    }


class TestOrdersPlacedInSets:
    async def test_a_batch_gives_the_state_one_by_one_gives(self, loyalty: Loyalty):
        steps = script(loyalty)
        ids = [str(uuid.uuid4()) for _ in steps]
        ids[3] = str(uuid.uuid4())  # the repeat of a-2: another event id
        sets, single = f"t-{uuid.uuid4().hex[:12]}", f"t-{uuid.uuid4().hex[:12]}"
        for tenant in (sets, single):
            await set_rules(loyalty, tenant)  # the defaults: spend tiers, silver at 500.00

        def events(tenant: str) -> list[CloudEvent[Any]]:
            return [
                loyalty.event(data, tenant, customer, id=i)
                for (customer, data), i in zip(steps, ids, strict=True)
            ]

        await apply_batch(loyalty, events(sets))
        await apply_one_by_one(loyalty, events(single))
        got, want = await state(loyalty, sets), await state(loyalty, single)
        assert got == want

        # And by hand, so that both paths cannot be wrong alike.
        accounts = {a[0]: a for a in got["accounts"]}
        assert set(accounts) == {"a", "b", "e", "h", "i", "n"}  # none for the anonymous order
        # a: 1500 + 100 (first order) + 1500, then silver: 10_000 x 5 / 100 x 1.25 = 625.
        assert accounts["a"][1:5] == (0, 3_725, 3_725, "silver")
        assert accounts["a"][6] == 3  # the repeat of a-2 counted once
        # b: b-1's 617 + 100 stay pending after its fulfilment (the return window runs
        # from it); b-2 earns at bronze, then the spend (523.45) makes b silver.
        assert accounts["b"][1:5] == (0, 617 + 100 + 2_000, 2_717, "silver")
        assert accounts["h"][1:5] == (0, 3_500, 3_500, "silver")  # no first-order bonus
        assert accounts["e"][1:5] == (0, 100, 100, "bronze")  # unpriced: the bonus only
        assert accounts["i"][1:5] == (0, 0, 0, "bronze")  # imported without points
        assert accounts["n"][1:5] == (0, 100 + 100 + 100, 300, "bronze")  # one bonus
        kinds = [e[1] for e in got["entries"] if e[0] == "e"]
        assert kinds == ["unpriced", "earn_pending"]
        tier_ups = [e for e in got["events"] if e[0] == "afterglow.message.requested.v1"]
        assert sorted(e[1] for e in tier_ups) == ["a", "b"]  # none for h's past order

    async def test_a_repeated_batch_changes_nothing(self, loyalty: Loyalty):
        tenant = f"t-{uuid.uuid4().hex[:12]}"
        await set_rules(loyalty, tenant)
        batch = [loyalty.event(data, tenant, customer) for customer, data in script(loyalty)]
        await apply_batch(loyalty, batch)
        before = await state(loyalty, tenant)
        assert before["accounts"] and before["lots"] and before["events"]
        # The same events redelivered are skipped by the inbox; the same orders under new
        # event ids are orders already recorded: no count, lot, entry or event again.
        await apply_batch(loyalty, batch)
        await apply_batch(loyalty, [loyalty.event(e.data, tenant, e.subject) for e in batch])
        assert await state(loyalty, tenant) == before
