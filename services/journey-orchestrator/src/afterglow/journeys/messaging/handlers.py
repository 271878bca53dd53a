"""Messaging's own consumer group (``journeys.messaging``): requests to send, and the
contact book (addresses, time zone, consent) kept from orders, unsubscribes and erasures."""

from __future__ import annotations

import uuid
from typing import Any

from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.events import CloudEvent, ConsumerGroup, on, to_record
from afterglow.events.catalog import (
    CustomerErasureRequested,
    CustomerUnsubscribed,
    MessageRequested,
    OrderPlaced,
    is_anonymous_subject,
)
from afterglow.journeys.messaging import store
from afterglow.journeys.messaging.models import Message
from afterglow.kit.app import Runtime


async def message_requested(
    runtime: Runtime, session: AsyncSession, event: CloudEvent[MessageRequested]
) -> None:
    await accept_request(session, event, runtime.clock.now())


async def order_placed(
    runtime: Runtime, session: AsyncSession, event: CloudEvent[OrderPlaced]
) -> None:
    data = event.data
    if is_anonymous_subject(event.subject):
        return  # an order without a customer: no contact to keep
    c = data.customer
    # Held to commit; the wake below then sees any deferral the dispatcher committed.
    await store.lock_contact(session, event.tenantid, event.subject)
    await store.upsert_contact(
        session,
        event.tenantid,
        event.subject,
        runtime.clock.now(),
        email=c.email,
        phone=c.phone,
        first_name=c.first_name,
        locale=c.locale,
        timezone=c.timezone,
        accepts_marketing=c.accepts_marketing,
    )
    await store.wake_waiting_for_contact(
        session, event.tenantid, event.subject, runtime.clock.now()
    )
    await store.record_order(session, event.tenantid, event.subject, data)


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
    on(MessageRequested, message_requested),
    on(OrderPlaced, order_placed),
    on(CustomerUnsubscribed, unsubscribed),
    on(CustomerErasureRequested, erasure),
    context=_runtime,
)
CONSUMERS = (MESSAGING,)


async def accept_request(
    session: AsyncSession, event: CloudEvent[MessageRequested], now: Any
) -> bool:
    """Queue a requested message; a repeated request id (per tenant) is a no-op.
    Policy is applied when the message falls due, not here: consent and caps must be
    judged at send time, which may be days later."""
    data: MessageRequested = event.data
    record = to_record(event)
    message_id = str(
        uuid.uuid5(uuid.NAMESPACE_URL, f"afterglow:message:{event.tenantid}:{data.request_id}")
    )
    waits = data.not_before is not None and data.not_before > now
    due = data.not_before if waits else now
    stmt = (
        pg_insert(Message)
        .values(
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
            next_attempt_at=due,
            created_at=now,
            updated_at=now,
            request_key=record.key,
            request_value=record.value,
            request_headers=[[k, v.decode()] for k, v in record.headers],
        )
        .on_conflict_do_nothing(constraint="uq_messages_tenant_request")
        .returning(Message.id)
    )
    inserted = (await session.execute(stmt)).scalar_one_or_none()
    if inserted is not None:
        await store.record(
            session,
            event.tenantid,
            message_id,
            now,
            "deferred" if waits else "queued",
            "not_before" if waits else None,
        )
    return inserted is not None
