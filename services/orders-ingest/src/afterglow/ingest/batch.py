"""A batch of stored deliveries applied in sets: one statement per table per batch.

The processing worker (:mod:`afterglow.ingest.processing`) claims a batch, normalizes
it in memory and hands the common deliveries here. One delivery at a time, each
statement of :func:`afterglow.ingest.intake.apply` was a round trip (order upsert,
order read, fact insert, counter bump, the order's number, outbox, status: six or
more per order, 5-10 ms of CPU each through the ORM): the worker drained about a
hundred deliveries a second. Here a set costs, whatever its size:

1. the order book rows it names, read and locked with one query (``FOR UPDATE``);
2. the tenants' ``late_order_days``, one query;
3. the order facts it states, one ``INSERT ... ON CONFLICT DO NOTHING RETURNING``:
   the facts inserted now are exactly those no earlier delivery stated, and each
   goes to its first statement in the set, as one by one;
4. the deliveries applied in memory, in order, as :func:`intake.emit` does, against
   an in-memory copy of the order book (a later delivery of the set sees the
   earlier ones' orders, refunds and facts);
5. the customers' order counters, one upsert adding each customer's orders of the
   set (``RETURNING`` the count after: the set's orders are numbered below it, in
   order);
6. the order book, one upsert of the new and changed orders;
7. the outbox, one insert; 8. the deliveries' outcomes, one update.

Lock order (the REST path, replay and reconciliation take the same, one order at a
time): deliveries (the claim), then orders (existing, in key order), order facts,
customer order counters (in key order), orders (new ones). Two appliers never run at
once (processing's advisory lock); a REST call about an order of the set waits for
it. An order that did not exist when read but was inserted by a concurrent REST call
before the set's upsert is detected (the upsert did not insert it) and the set is
rolled back (:class:`ConcurrentOrder`) and retried, never written over.

Deliveries that must see every earlier write or that read the order book while being
normalized are not taken into a set: an erasure (it deletes and redacts), a
``customers/redact`` (its stored body is replaced) and a tracker's update (its order
is found by the shop's order id). :func:`is_common` says which; the worker applies the
others alone, in order, after writing the set before them.
"""

from __future__ import annotations

import contextlib
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Row
from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.events import CloudEvent, Outbox, derived_event_id, tracing
from afterglow.events import catalog as c
from afterglow.events.context import event_context
from afterglow.ingest import batch_store, domain, intake

DEFAULT_LATE_ORDER_DAYS = 30  # a tenant without the setting (intake.late_order_days)


class ConcurrentOrder(Exception):
    """An order the set took for new was inserted meanwhile by another transaction:
    the set's view of it was wrong, so the set is rolled back and applied again."""


@dataclass(eq=False)
class Delivery:
    """A claimed stored delivery: normalized, or quarantined with the reason."""

    id: str
    tenant_id: str
    platform: str
    topic: str
    dedupe_key: str
    body: bytes
    received_at: datetime
    traceparent: str | None
    normalized: domain.Normalized | None = None
    quarantine_reason: str | None = None

    @classmethod
    def of(cls, row: Row[Any]) -> Delivery:
        d = row._mapping
        return cls(
            id=str(d["id"]),
            tenant_id=str(d["tenant_id"]),
            platform=str(d["platform"]),
            topic=str(d["topic"]),
            dedupe_key=str(d["dedupe_key"]),
            body=bytes(d["body"]),
            received_at=d["received_at"],
            traceparent=d["traceparent"],
        )


def is_common(d: Delivery) -> bool:
    """Whether the delivery can be applied in a set (see the module's docstring)."""
    n = d.normalized
    if n is None:
        # Quarantined (a set records it), or not yet normalized: a tracker's update.
        return d.quarantine_reason is not None
    if n.stored_body is not None or n.forget_emails:
        return False
    return not any(isinstance(e.data, c.CustomerErasureRequested) for e in n.emits)


def delivery_span(d: Delivery) -> contextlib.AbstractContextManager[None]:
    """The webhook's trace goes on: what the delivery causes carries it."""
    if not tracing.enabled():
        return event_context(None, d.traceparent)  # off: no span, its name unbuilt
    return tracing.continued(
        f"apply delivery {d.platform} {d.topic}",
        d.traceparent,
        attributes={"afterglow.delivery.id": d.id, "afterglow.tenant": d.tenant_id},
    )


# --- the order book, in memory ---------------------------------------------------------


@dataclass
class BookOrder:
    """An ``orders`` row as the set sees it, and whether the set must write it."""

    platform_order_id: str
    subject: str
    total_amount: int | None
    currency: str | None
    presentment_amount: int | None
    presentment_currency: str | None
    customer_order_seq: int | None = None
    refunded_amount: int = 0
    placed_at: datetime | None = None
    new: bool = False
    changed: bool = False

    def known(self) -> intake.KnownOrder:
        return intake.known_order_from(self)


Key = tuple[str, str]  # (tenant id, order id) or (tenant id, fact key)


class Book(dict[Key, BookOrder]):
    """The set's orders, read once, then changed in memory in delivery order with the
    rules of the one-by-one statements (intake_store.upsert_order, add_to_refunded,
    set_customer_order_seq)."""

    def upsert(self, tenant_id: str, o: domain.OrderRecord, placed_at: datetime | None) -> None:
        key = (tenant_id, o.order_id)
        old = self.get(key)
        if old is None:
            self[key] = BookOrder(
                platform_order_id=o.platform_order_id,
                subject=o.subject,
                total_amount=o.total.amount if o.total else None,
                currency=o.total.currency if o.total else None,
                presentment_amount=o.presentment.amount if o.presentment else None,
                presentment_currency=o.presentment.currency if o.presentment else None,
                placed_at=placed_at,
                new=True,
            )
        elif placed_at is not None and old.placed_at is None:
            # First seen through a later event: it learns its placing time now.
            old.placed_at, old.changed = placed_at, True

    def known(self, tenant_id: str, order_id: str) -> intake.KnownOrder:
        o = self.get((tenant_id, order_id))
        return o.known() if o is not None else intake.KnownOrder()

    def add_refunded(self, tenant_id: str, refund: c.OrderRefunded) -> None:
        # Counted in the shop's money only (the order total's currency).
        shop = refund.shop_amount or refund.amount
        o = self.get((tenant_id, refund.order_id))
        if o is not None and o.currency == shop.currency:
            o.refunded_amount += shop.amount
            o.changed = True

    def number(self, tenant_id: str, order_id: str, seq: int) -> None:
        o = self.get((tenant_id, order_id))
        if o is not None:
            o.customer_order_seq, o.changed = seq, True

    def rows(self) -> list[dict[str, Any]]:
        """The new and changed orders, in key order (the upsert's lock order)."""
        return [
            {
                "tenant_id": key[0],
                "order_id": key[1],
                "platform_order_id": o.platform_order_id,
                "subject": o.subject,
                "total_amount": o.total_amount,
                "currency": o.currency,
                "presentment_amount": o.presentment_amount,
                "presentment_currency": o.presentment_currency,
                "customer_order_seq": o.customer_order_seq,
                "refunded_amount": o.refunded_amount,
                "placed_at": o.placed_at,
            }
            for key, o in sorted(self.items())
            if o.new or o.changed
        ]


# --- one delivery, in memory -----------------------------------------------------------


@dataclass
class Pending:
    """An event to emit, before its order number is known (order.placed)."""

    data: c.EventData
    subject: str
    event_id: str


@dataclass
class Applied:
    delivery: Delivery
    status: str
    events: list[Pending] = field(default_factory=list)
    subjects: list[str] = field(default_factory=list)


def _event_id(d: Delivery, index: int) -> str:
    return derived_event_id(
        "ingest", d.tenant_id, d.platform, intake.stored_key(d.dedupe_key), str(index)
    )


def _order_keys(d: Delivery) -> set[Key]:
    """The order book rows applying ``d`` reads or writes."""
    n = d.normalized
    if n is None or not n.known_topic:
        return set()
    keys = {(d.tenant_id, n.order.order_id)} if n.order is not None else set()
    for e in n.emits:
        order_id = getattr(e.data, "order_id", None)
        if order_id and (e.subject is None or isinstance(e.data, c.OrderRefunded)):
            keys.add((d.tenant_id, order_id))
    return keys


def _facts(deliveries: Sequence[Delivery]) -> list[dict[str, Any]]:
    """The order facts the set states, each with its first statement (delivery and
    position), sorted by key (the insert's lock order)."""
    first: dict[Key, dict[str, Any]] = {}
    for d in deliveries:
        n = d.normalized
        if n is None or not n.known_topic:
            continue
        for index, e in enumerate(n.emits):
            # Normalized data: the stamps applied later (lateness, refund completion)
            # change no order id or refund id, so no fact key.
            fact = domain.fact_key(e.data)
            if fact is not None and (d.tenant_id, fact) not in first:
                first[(d.tenant_id, fact)] = {
                    "tenant_id": d.tenant_id,
                    "fact_key": fact,
                    "event_id": _event_id(d, index),
                    "delivery_id": d.id,
                    "created_at": d.received_at,
                }
    return [first[k] for k in sorted(first)]


def _apply(
    d: Delivery, book: Book, late_days: dict[str, int], new_facts: set[Key], stated: set[Key]
) -> Applied:
    """What :func:`intake.apply` and :func:`intake.emit` do for one delivery, on the
    in-memory book: ``new_facts`` are the facts no delivery stated before the set,
    ``stated`` those the set has stated so far (updated here)."""
    n = d.normalized
    if n is None:
        return Applied(d, intake.QUARANTINED)
    if not n.known_topic:
        return Applied(d, "archived")
    out = Applied(d, "processed")
    if n.order is not None:
        placed_at = next(
            (
                e.data.placed_at
                for e in n.emits
                if isinstance(e.data, c.OrderPlaced) and e.data.order_id == n.order.order_id
            ),
            None,
        )
        book.upsert(d.tenant_id, n.order, placed_at)
    emits = n.emits
    if any(isinstance(e.data, domain.ORDER_EVENT_TYPES) for e in emits):
        days = late_days.get(d.tenant_id, DEFAULT_LATE_ORDER_DAYS)
        emits = domain.mark_late(emits, d.received_at, days)
    for index, item in enumerate(emits):
        data = domain.stamp_requested_at(item.data, d.received_at)
        subject = item.subject
        order_id = getattr(data, "order_id", None)
        if order_id and (subject is None or isinstance(data, c.OrderRefunded)):
            known = book.known(d.tenant_id, order_id)
            subject = subject or known.subject
            data = domain.complete_refund(data, known.total, known.presentment, known.refunded)
        subject = subject or f"order:{order_id or d.id}"
        out.subjects.append(subject)
        fact = domain.fact_key(data)
        if fact is not None:
            key = (d.tenant_id, fact)
            if key not in new_facts or key in stated:
                continue  # already said by an earlier delivery or reconciliation
            stated.add(key)
            if isinstance(data, c.OrderRefunded):
                book.add_refunded(d.tenant_id, data)
        out.events.append(Pending(data, subject, _event_id(d, index)))
    return out


# --- the set ---------------------------------------------------------------------------


async def apply_set(session: AsyncSession, outbox: Outbox, deliveries: Sequence[Delivery]) -> None:
    """Apply ``deliveries`` (in order, each :func:`is_common`) in the caller's
    transaction: events in the outbox, the order book, facts, counters and each
    delivery's outcome, with one statement per table."""
    if not deliveries:
        return
    keys = sorted(set().union(*(_order_keys(d) for d in deliveries)))
    book = Book()
    for r in await batch_store.lock_orders(session, keys):
        book[(r.tenant_id, r.order_id)] = BookOrder(
            platform_order_id=r.platform_order_id,
            subject=r.subject,
            total_amount=r.total_amount,
            currency=r.currency,
            presentment_amount=r.presentment_amount,
            presentment_currency=r.presentment_currency,
            customer_order_seq=r.customer_order_seq,
            refunded_amount=int(r.refunded_amount or 0),
            placed_at=r.placed_at,
        )
    tenants = sorted(
        {
            d.tenant_id
            for d in deliveries
            if d.normalized is not None
            and any(isinstance(e.data, domain.ORDER_EVENT_TYPES) for e in d.normalized.emits)
        }
    )
    late_days = await batch_store.late_order_days(session, tenants)
    new_facts = await batch_store.claim_facts(session, _facts(deliveries))
    stated: set[Key] = set()
    applied = [_apply(d, book, late_days, new_facts, stated) for d in deliveries]
    await _number_orders(session, book, applied)
    rows = book.rows()
    inserted = await batch_store.write_orders(session, rows)
    new = {key for key, o in book.items() if o.new}
    if new != inserted:
        raise ConcurrentOrder("an order of the set was inserted by another transaction")
    events: list[CloudEvent[Any]] = []
    for a in applied:
        with delivery_span(a.delivery):  # the events carry the webhook's trace
            events.extend(
                CloudEvent.new(
                    p.data,
                    tenant_id=a.delivery.tenant_id,
                    subject=p.subject,
                    source=intake.SOURCE,
                    id=p.event_id,
                    time=a.delivery.received_at,
                )
                for p in a.events
            )
    await outbox.add(session, *events)
    await batch_store.finish_deliveries(session, [_outcome(a) for a in applied])


async def _number_orders(session: AsyncSession, book: Book, applied: list[Applied]) -> None:
    """Each order.placed's number among its customer's orders: the counters bumped by
    the set's orders of each customer with one upsert, the set's orders numbered
    below the count after it, in order (as one bump per order would have)."""
    placed = [
        (a.delivery.tenant_id, p)
        for a in applied
        for p in a.events
        if isinstance(p.data, c.OrderPlaced)
    ]
    if not placed:
        return
    per_customer = Counter((t, p.subject) for t, p in placed)
    after = await batch_store.bump_order_counts(
        session, [(t, s, n) for (t, s), n in sorted(per_customer.items())]
    )
    seen: Counter[tuple[str, str]] = Counter()
    for tenant_id, p in placed:
        key = (tenant_id, p.subject)
        seen[key] += 1
        seq = after[key] - per_customer[key] + seen[key]
        assert isinstance(p.data, c.OrderPlaced)
        numbered = domain.with_order_count(p.data, seq)
        p.data = numbered
        book.number(tenant_id, numbered.order_id, seq)


def _outcome(a: Applied) -> tuple[str, str, list[str] | None, list[str] | None, str | None]:
    d = a.delivery
    if a.status == intake.QUARANTINED:
        return (d.id, a.status, None, None, (d.quarantine_reason or "")[:1000])
    if a.status == "archived":
        return (d.id, a.status, [], [], None)
    return (d.id, a.status, [p.event_id for p in a.events], sorted(set(a.subjects)), None)
