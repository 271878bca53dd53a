"""Storing a delivery and emitting its events, in the caller's transaction.

Every source (webhook receivers, reconciliation, REST, replay) ends here, so they share
one de-duplication: a delivery is unique per (tenant, platform, dedupe key), and an
order fact (placed, fulfilled, refund r1...) is emitted once per tenant whichever
source reported it first.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from prometheus_client import Counter
from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.events import CloudEvent, EventTables, Outbox, derived_event_id
from afterglow.events import catalog as c
from afterglow.ingest import domain, identity, intake_store
from afterglow.ingest.platforms import aftership, canonical, shopify, woocommerce, zendesk

SOURCE = "afterglow/orders-ingest"
QUARANTINED = "quarantined"

QUARANTINED_TOTAL = Counter(
    "afterglow_ingest_quarantined_total",
    "Signed deliveries stored but not normalized (status quarantined), by platform",
    ["platform"],
)


@dataclass(frozen=True)
class Emitted:
    """What :func:`emit` put in the outbox, and whom the delivery spoke about."""

    ids: list[str]
    # The event subjects, also of facts an earlier delivery stated first: a data access
    # request finds the customer's raw deliveries by them. Sorted, distinct.
    subjects: list[str]


def merge_subjects(old: list[str], new: list[str]) -> list[str]:
    """A delivery processed again (replay, re-fetch) keeps whom it spoke about before."""
    return sorted({*old, *new})


@dataclass
class Outcome:
    delivery_id: str
    status: str  # processed | archived | duplicate | fetch_pending | quarantined
    event_ids: list[str] = field(default_factory=list)

    def body(self) -> dict[str, Any]:
        return {"delivery_id": self.delivery_id, "status": self.status, "events": self.event_ids}


MAX_DEDUPE_KEY = 200


def stored_key(dedupe_key: str) -> str:
    """The dedupe key as stored: a long one (a webhook id header can hold 8 KiB) is
    replaced by its digest, which the unique index can hold (a btree refuses entries
    past about 2,700 bytes: the insert failed, a 500)."""
    if len(dedupe_key) <= MAX_DEDUPE_KEY:
        return dedupe_key
    return "sha256:" + hashlib.sha256(dedupe_key.encode()).hexdigest()


def delivery_id_for(tenant_id: str, platform: str, dedupe_key: str) -> str:
    # Deterministic: the same delivery arriving twice has the same id.
    return derived_event_id("ingest-delivery", tenant_id, platform, stored_key(dedupe_key))


async def store_delivery(
    session: AsyncSession,
    *,
    tenant_id: str,
    platform: str,
    topic: str,
    dedupe_key: str,
    headers: dict[str, str],
    body: bytes,
    received_at: datetime,
    status: str = "received",
    next_attempt_at: datetime | None = None,
    last_error: str | None = None,
) -> str | None:
    """Insert the raw delivery; None when the same delivery was stored before.

    A concurrent twin blocks on the unique index until the first commits, then finds
    it: two retries racing each other still emit once."""
    did = delivery_id_for(tenant_id, platform, dedupe_key)
    return await intake_store.insert_delivery(
        session,
        {
            "id": did,
            "tenant_id": tenant_id,
            "platform": platform,
            "topic": topic,
            "dedupe_key": stored_key(dedupe_key),
            "status": status,
            "received_at": received_at,
            "headers": headers,
            "body": body,
            "event_ids": [],
            "replays": 0,
            "attempts": 0,
            "next_attempt_at": next_attempt_at,
            "last_error": last_error,
        },
    )


@dataclass(frozen=True)
class KnownOrder:
    """What the order book knows of an order that a later payload does not carry."""

    subject: str | None = None
    total: c.Money | None = None
    presentment: c.Money | None = None
    refunded: int = 0  # shop minor units, the sum of the refunds emitted so far


async def resolve_order(session: AsyncSession, tenant_id: str, order_id: str) -> KnownOrder:
    row = await intake_store.known_order(session, tenant_id, order_id)
    return KnownOrder() if row is None else known_order_from(row)


def known_order_from(row: Any) -> KnownOrder:
    """An order-book row (or a batch's in-memory copy of one: batch.py) as normalizing
    reads it."""
    total = (
        c.Money(amount=row.total_amount, currency=row.currency)
        if row.total_amount is not None and row.currency
        else None
    )
    presentment = (
        c.Money(amount=row.presentment_amount, currency=row.presentment_currency)
        if row.presentment_amount is not None and row.presentment_currency
        else None
    )
    return KnownOrder(row.subject, total, presentment, int(row.refunded_amount or 0))


async def count_customer_order(
    session: AsyncSession, tenant_id: str, subject: str, order_id: str, *, replay: bool
) -> int:
    """This order's number among its customer's orders in the order book (1 = first).

    Called once per order, when its order.placed is first emitted. The count is one
    upsert on the customer's counter row: ``ON CONFLICT DO UPDATE`` locks that row, so
    a concurrent order of the same customer waits for this transaction and counts
    after it (two ``SELECT count(*)`` would each miss the other's uncommitted order and
    both call themselves the first). The number is kept on the order, so a replay
    re-emits the same one instead of counting the order again."""
    if replay:
        seq = await intake_store.customer_order_seq(session, tenant_id, order_id)
        if seq is not None:
            return int(seq)
    seq = await intake_store.bump_customer_order_count(session, tenant_id, subject)
    await intake_store.set_customer_order_seq(session, tenant_id, order_id, seq)
    return int(seq)


async def add_refunded(session: AsyncSession, tenant_id: str, refund: c.OrderRefunded) -> None:
    """Count an emitted refund towards its order's refunded sum, in the shop's money
    (the order total's currency; a refund with no amount in it is not counted)."""
    shop = refund.shop_amount or refund.amount
    await intake_store.add_to_refunded(
        session, tenant_id, refund.order_id, shop.currency, shop.amount
    )


async def late_order_days(session: AsyncSession, tenant_id: str) -> int:
    # Read once per tenant and transaction: the processing worker applies a batch of
    # one shop's deliveries in one transaction, and this was a round trip for each.
    known: dict[str, int] = session.info.setdefault("late_order_days", {})
    if tenant_id not in known:
        days = await intake_store.tenant_late_order_days(session, tenant_id)
        known[tenant_id] = 30 if days is None else int(days)
    return known[tenant_id]


async def order_id_by_platform_id(
    session: AsyncSession, tenant_id: str, platform_order_id: str
) -> str | None:
    return await intake_store.order_id_of_platform_id(session, tenant_id, platform_order_id)


async def emit(
    session: AsyncSession,
    outbox: Outbox,
    tables: EventTables,
    *,
    tenant_id: str,
    delivery_id: str,
    platform: str,
    dedupe_key: str,
    normalized: domain.Normalized,
    received_at: datetime,
    replay: bool = False,
    ids_by_fact: bool = False,
) -> Emitted:
    """Turn normalized output into outbox events; returns their ids and subjects.

    Event ids derive from the delivery and the position, so a replay (or a retried
    transaction) yields the same ids and downstream inboxes drop repeats. On replay
    the fact table is bypassed and already-sent rows are queued again: an operator
    replays on purpose, and the unchanged ids make it harmless downstream.

    ``ids_by_fact`` derives an order event's id from its fact instead of its position:
    for a delivery whose content is fetched again (BigCommerce) and may have changed,
    so that a later fetch's "cancelled" at position 0 is not taken for the first
    fetch's "placed" at position 0."""
    if normalized.order is not None:
        o = normalized.order
        placed_at = next(
            (
                e.data.placed_at
                for e in normalized.emits
                if isinstance(e.data, c.OrderPlaced) and e.data.order_id == o.order_id
            ),
            None,
        )
        # An order first seen through a later event (fulfilled before placed arrived)
        # learns its placing time when order.placed comes.
        await intake_store.upsert_order(
            session,
            {
                "tenant_id": tenant_id,
                "order_id": o.order_id,
                "platform_order_id": o.platform_order_id,
                "subject": o.subject,
                "total_amount": o.total.amount if o.total else None,
                "currency": o.total.currency if o.total else None,
                "presentment_amount": o.presentment.amount if o.presentment else None,
                "presentment_currency": o.presentment.currency if o.presentment else None,
                "placed_at": placed_at,
            },
        )
    events: list[CloudEvent[Any]] = []
    subjects: list[str] = []  # also those of facts already stated by an earlier delivery
    emits = normalized.emits
    if any(isinstance(e.data, domain.ORDER_EVENT_TYPES) for e in emits):
        # A live delivery about an old order (a re-sent webhook, a first sync) is
        # history: recorded and counted, but it starts no journey, survey or bonus.
        # Decided on the delivery's receive time, so a replay decides the same.
        emits = domain.mark_late(emits, received_at, await late_order_days(session, tenant_id))
    for index, item in enumerate(emits):
        data = domain.stamp_requested_at(item.data, received_at)
        subject = item.subject
        order_id = getattr(data, "order_id", None)
        if order_id and (subject is None or isinstance(data, c.OrderRefunded)):
            known = await resolve_order(session, tenant_id, order_id)
            subject = subject or known.subject
            data = domain.complete_refund(data, known.total, known.presentment, known.refunded)
        # An order we never saw (its creation predates us): key it by the order so its
        # events still stay in order on one partition.
        subject = subject or f"order:{order_id or delivery_id}"
        subjects.append(subject)
        fact = domain.fact_key(data)
        part = fact if ids_by_fact and fact is not None else str(index)
        event_id = derived_event_id("ingest", tenant_id, platform, stored_key(dedupe_key), part)
        if fact is not None and not replay:
            inserted = await intake_store.insert_order_fact(
                session,
                tenant_id=tenant_id,
                fact_key=fact,
                event_id=event_id,
                delivery_id=delivery_id,
                created_at=received_at,
            )
            if not inserted:
                continue  # already said by an earlier delivery or reconciliation
            if isinstance(data, c.OrderRefunded):
                await add_refunded(session, tenant_id, data)
        if isinstance(data, c.OrderPlaced):
            # The order book's count, in this transaction: every service's "first
            # order" reads it (catalog.is_first_order).
            seq = await count_customer_order(
                session, tenant_id, subject, data.order_id, replay=replay
            )
            data = domain.with_order_count(data, seq)
        events.append(
            CloudEvent.new(
                data,
                tenant_id=tenant_id,
                subject=subject,
                source=SOURCE,
                id=event_id,
                time=received_at,
            )
        )
    await outbox.add(session, *events)
    ids = [e.id for e in events]
    if replay:
        await requeue_sent(session, tables, ids)
    return Emitted(ids, sorted(set(subjects)))


async def requeue_sent(session: AsyncSession, tables: EventTables, ids: list[str]) -> None:
    """Publish these already-sent outbox rows again (replay): same ids, so downstream
    inboxes drop what they already applied."""
    if not ids:
        return
    await intake_store.requeue_sent_events(session, tables.outbox, ids)


async def accept(
    session: AsyncSession,
    outbox: Outbox,
    tables: EventTables,
    *,
    tenant_id: str,
    platform: str,
    topic: str,
    dedupe_key: str,
    headers: dict[str, str],
    body: bytes,
    normalized: domain.Normalized,
    received_at: datetime,
) -> Outcome:
    """Store a verified, parsed delivery and its events (one transaction: the caller's)."""
    did = await store_delivery(
        session,
        tenant_id=tenant_id,
        platform=platform,
        topic=topic,
        dedupe_key=dedupe_key,
        headers=headers,
        # customers/redact: stored without the contact data it asks us to forget.
        body=normalized.stored_body if normalized.stored_body is not None else body,
        received_at=received_at,
    )
    if did is None:
        return Outcome(delivery_id_for(tenant_id, platform, dedupe_key), "duplicate")
    await identity.link_and_resolve(session, [(tenant_id, normalized)], received_at)
    return await apply(
        session,
        outbox,
        tables,
        tenant_id=tenant_id,
        delivery_id=did,
        platform=platform,
        dedupe_key=dedupe_key,
        normalized=normalized,
        received_at=received_at,
    )


async def apply(
    session: AsyncSession,
    outbox: Outbox,
    tables: EventTables,
    *,
    tenant_id: str,
    delivery_id: str,
    platform: str,
    dedupe_key: str,
    normalized: domain.Normalized,
    received_at: datetime,
) -> Outcome:
    """A stored delivery's events, erasures and final status (the caller's transaction):
    right after storing it (:func:`accept`) or later, from the stored row (the webhook
    receivers' processing worker)."""
    did = delivery_id
    if not normalized.known_topic:
        await finish(session, did, "archived", [])
        return Outcome(did, "archived")
    emitted = await emit(
        session,
        outbox,
        tables,
        tenant_id=tenant_id,
        delivery_id=did,
        platform=platform,
        dedupe_key=dedupe_key,
        normalized=normalized,
        received_at=received_at,
    )
    if any(
        isinstance(e.data, c.CustomerErasureRequested) and e.data.scope == "tenant"
        for e in normalized.emits
    ):
        await forget_tenant_payloads(session, tenant_id, keep=did)
    erased = [
        e.subject
        for e in normalized.emits
        if isinstance(e.data, c.CustomerErasureRequested) and e.data.scope == "customer"
    ]
    if erased or normalized.forget_emails:
        await forget_customer_payloads(
            session, tenant_id, normalized.forget_emails, [s for s in erased if s], keep=did
        )
    await finish(session, did, "processed", emitted.ids, emitted.subjects)
    return Outcome(did, "processed", emitted.ids)


async def quarantine(
    session: AsyncSession,
    *,
    tenant_id: str,
    platform: str,
    topic: str,
    dedupe_key: str,
    headers: dict[str, str],
    body: bytes,
    reason: str,
    received_at: datetime,
) -> Outcome:
    """Store a verified delivery that could not be normalized, with the reason, and
    emit nothing. The sender gets a 2xx (a 4xx or 5xx makes Shopify retry for hours and
    WooCommerce or BigCommerce disable the hook); the operator lists quarantined
    deliveries and replays them once the normalizer is fixed."""
    did = await store_delivery(
        session,
        tenant_id=tenant_id,
        platform=platform,
        topic=topic,
        dedupe_key=dedupe_key,
        headers=headers,
        body=body,
        received_at=received_at,
        status=QUARANTINED,
        last_error=reason[:1000],
    )
    if did is None:
        return Outcome(delivery_id_for(tenant_id, platform, dedupe_key), "duplicate")
    QUARANTINED_TOTAL.labels(platform).inc()
    return Outcome(did, QUARANTINED)


def quarantine_reason(exc: domain.NormalizationError) -> str:
    return f"{exc} (field {exc.field})" if exc.field else str(exc)


async def forget_customer_payloads(
    session: AsyncSession, tenant_id: str, emails: list[str], subjects: list[str], keep: str
) -> None:
    """customers/redact: blank body and headers of the stored raw deliveries about the
    customer: those that spoke about them (their subject) and those that carry their
    email anywhere, quarantined ones included (a scan of one tenant's rows, acceptable
    for a rare request)."""
    await intake_store.redact_customer_deliveries(session, tenant_id, emails, subjects, keep)
    await identity.forget(session, tenant_id, subjects, emails)


async def forget_tenant_payloads(session: AsyncSession, tenant_id: str, keep: str) -> None:
    """shop/redact: the shop's raw deliveries hold its customers' personal data. Bodies
    and headers are blanked (the rows stay, as the record of what was received)."""
    await intake_store.redact_tenant_deliveries(session, tenant_id, keep)
    await intake_store.delete_tenant_order_book(session, tenant_id)
    await identity.forget_tenant(session, tenant_id)


async def finish(
    session: AsyncSession, did: str, status: str, ids: list[str], subjects: Sequence[str] = ()
) -> None:
    await intake_store.set_delivery_outcome(session, did, status, ids, subjects)


# Platforms whose payload names the shop's order id, not ours: normalizing them reads
# the order book (:func:`normalize`), so a batch applies them alone, in order.
READS_ORDER_BOOK = frozenset({"aftership"})


async def normalize(
    session: AsyncSession, tenant_id: str, platform: str, topic: str, payload: dict[str, Any]
) -> domain.Normalized:
    """The platform's normalizer, shared by the receivers and replay. Any failure, a
    payload of the wrong shape included, is a NormalizationError (the caller
    quarantines the delivery); every subject fits an envelope."""
    with domain.normalization_errors():
        out, platform_order_id = _normalize_payload(platform, topic, payload)
        if platform_order_id and out.emits:
            # Trackers know the shop's order id, not ours: find the order we stored.
            order_id = await order_id_by_platform_id(session, tenant_id, platform_order_id)
            order_id = order_id or f"aftership:{platform_order_id}"
            out.emits = [
                domain.Emit(e.data.model_copy(update={"order_id": order_id}), e.subject)
                for e in out.emits
            ]
    return domain.check_subjects(out)


def normalize_offline(platform: str, topic: str, payload: dict[str, Any]) -> domain.Normalized:
    """:func:`normalize` without I/O, for a platform not in :data:`READS_ORDER_BOOK`
    (the processing worker normalizes a whole batch before it reads anything)."""
    assert platform not in READS_ORDER_BOOK, platform
    with domain.normalization_errors():
        out, _ = _normalize_payload(platform, topic, payload)
    return domain.check_subjects(out)


def _normalize_payload(
    platform: str, topic: str, payload: dict[str, Any]
) -> tuple[domain.Normalized, str | None]:
    """The normalized payload, and the shop's order id a tracker names (to be mapped
    to ours), else None."""
    if platform == "shopify":
        return shopify.normalize_shopify(topic, payload), None
    if platform == "woocommerce":
        return woocommerce.normalize_woocommerce(topic, payload), None
    if platform in ("standard", "api"):
        out = canonical.normalize_canonical(
            payload, canonical.ORDER_TYPES | canonical.TICKET_TYPES, platform
        )
        return out, None
    if platform == "zendesk":
        return zendesk.normalize_zendesk(payload), None
    if platform == "aftership":
        return aftership.normalize_aftership(payload)
    return domain.Normalized(known_topic=False), None
