"""Messaging's own consumer group (``journeys.messaging``): requests to send, and the
contact book (addresses, time zone, consent) kept from orders, unsubscribes and erasures."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.events import CloudEvent, ConsumerGroup, on, on_batch, to_record
from afterglow.events.batch import event_span
from afterglow.events.catalog import (
    CustomerErasureRequested,
    CustomerUnsubscribed,
    MessageRequested,
    OrderPlaced,
    is_anonymous_subject,
)
from afterglow.events.envelope import url_uuid5
from afterglow.journeys.messaging import store
from afterglow.kit.app import Runtime


async def messages_requested(
    runtime: Runtime, session: AsyncSession, events: list[CloudEvent[MessageRequested]]
) -> None:
    await accept_requests(session, events, runtime.clock.now())


async def orders_placed(
    runtime: Runtime, session: AsyncSession, events: list[CloudEvent[OrderPlaced]]
) -> None:
    """Keep a batch's contacts and orders: one statement per table for the batch."""
    known = [e for e in events if not is_anonymous_subject(e.subject)]  # no customer
    if not known:
        return
    now = runtime.clock.now()
    # What the batch says of each customer; a later order's field wins, a field an
    # order leaves out keeps what an earlier one (or the book) said.
    contacts: dict[store.ContactKey, dict[str, object]] = {}
    for e in known:
        c = e.data.customer
        said = {
            "email": c.email,
            "phone": c.phone,
            "first_name": c.first_name,
            "locale": c.locale,
            "timezone": c.timezone,
            "accepts_marketing": c.accepts_marketing,
        }
        contacts.setdefault((e.tenantid, e.subject), {}).update(
            {k: v for k, v in said.items() if v is not None}
        )
    # Held to commit; the wake below then sees any deferral the dispatcher committed.
    await store.lock_contacts(session, contacts)
    await store.upsert_contacts(session, contacts, now)
    await store.wake_waiting_for_contacts(session, contacts, now)
    await store.record_orders(session, [((e.tenantid, e.subject), e.data) for e in known])


async def unsubscribed(
    runtime: Runtime, session: AsyncSession, event: CloudEvent[CustomerUnsubscribed]
) -> None:
    data = event.data
    await store.unsubscribe(
        session,
        runtime.outbox,
        tenant_id=event.tenantid,
        customer_id=event.subject,
        channel=data.channel,
        at=data.unsubscribed_at,
        emit=False,  # it is already the event
    )


async def erasure(
    runtime: Runtime, session: AsyncSession, event: CloudEvent[CustomerErasureRequested]
) -> None:
    customer = None if event.data.scope == "tenant" else event.subject
    await store.erase(session, event.tenantid, customer, runtime.clock.now())


def _runtime(runtime: Runtime) -> Runtime:
    return runtime


MESSAGING = ConsumerGroup(
    "messaging",
    on_batch(MessageRequested, messages_requested),
    on_batch(OrderPlaced, orders_placed),
    on(CustomerUnsubscribed, unsubscribed),
    on(CustomerErasureRequested, erasure),
    context=_runtime,
)
CONSUMERS = (MESSAGING,)


async def accept_requests(
    session: AsyncSession, events: list[CloudEvent[MessageRequested]], now: datetime
) -> set[str]:
    """Queue a batch of requested messages; a repeated request id (per tenant) is a
    no-op. Policy is applied when a message falls due, not here: consent and caps must be
    judged at send time, which may be days later. The ids newly queued."""
    rows: dict[str, dict[str, Any]] = {}
    for event in events:
        # A span per request in its own trace (the batch is one span linked to all):
        # the send that follows continues that trace, and shows where it was queued.
        with event_span(event):
            data: MessageRequested = event.data
            message_id = url_uuid5(f"afterglow:message:{event.tenantid}:{data.request_id}")
            if message_id in rows:
                continue  # the same request twice in one batch: the first one
            record = to_record(event)
            waits = data.not_before is not None and data.not_before > now
            rows[message_id] = dict(
                id=message_id,
                tenant_id=event.tenantid,
                customer_id=event.subject,
                request_id=data.request_id,
                kind=data.kind,
                template=data.template or data.kind,
                category=data.category,
                priority=data.priority,
                channel=data.channel,
                variables=data.variables,
                order_id=data.order_id,
                not_before=data.not_before,
                status="deferred" if waits else "queued",
                reason="not_before" if waits else None,
                attempts=0,
                next_attempt_at=data.not_before if waits else now,
                created_at=now,
                updated_at=now,
                request_key=record.key,
                request_value=record.value,
                request_headers=[[k, v.decode()] for k, v in record.headers],
            )
    inserted = await store.insert_messages(session, list(rows.values()))
    await store.record_all(
        session,
        [
            (row["tenant_id"], message_id, now, row["status"], row["reason"])
            for message_id, row in rows.items()
            if message_id in inserted
        ],
    )
    return inserted
