"""Database helpers shared by the messaging consumer, routes and dispatcher. They flush,
never commit: the entrypoint owns the transaction."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import delete, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.events import CloudEvent, Outbox, derived_event_id
from afterglow.events.catalog import CustomerUnsubscribed, OrderPlaced
from afterglow.events.money import format_money
from afterglow.journeys.messaging.models import (
    Message,
    MessageContact,
    MessageDecision,
    MessageOrder,
    MessageTemplate,
    MessagingTenantSettings,
)
from afterglow.journeys.messaging.policy import ContactFacts, PolicySettings, parse_hhmm
from afterglow.journeys.messaging.templates import Template, default_template

SOURCE = "afterglow.journeys.messaging"


async def tenant_settings(session: AsyncSession, tenant_id: str) -> MessagingTenantSettings | None:
    return await session.get(MessagingTenantSettings, tenant_id)


def policy_settings(
    row: MessagingTenantSettings | None, contact_wait_s: float, contact_recheck_s: float
) -> PolicySettings:
    base = PolicySettings(
        contact_wait=timedelta(seconds=contact_wait_s),
        contact_recheck=timedelta(seconds=contact_recheck_s),
    )
    if row is None:
        return base
    return PolicySettings(
        quiet_start=parse_hhmm(row.quiet_hours_start),
        quiet_end=parse_hhmm(row.quiet_hours_end),
        cap=row.frequency_cap,
        window=timedelta(days=row.frequency_window_days),
        default_channel=row.default_channel,
        default_timezone=row.default_timezone,
        contact_wait=base.contact_wait,
        contact_recheck=base.contact_recheck,
    )


def contact_facts(row: MessageContact | None) -> ContactFacts | None:
    if row is None:
        return None
    return ContactFacts(
        email=row.email,
        phone=row.phone,
        timezone=row.timezone,
        accepts_marketing=row.accepts_marketing,
        email_unsubscribed=row.email_unsubscribed_at is not None,
        sms_unsubscribed=row.sms_unsubscribed_at is not None,
        erased=row.erased_at is not None,
    )


async def find_template(
    session: AsyncSession, tenant_id: str, name: str, channel: str
) -> Template | None:
    row = await session.get(MessageTemplate, (tenant_id, name, channel))
    if row is not None:
        return Template(channel=row.channel, text=row.text, subject=row.subject, html=row.html)
    return default_template(name, channel)


async def record(
    session: AsyncSession,
    tenant_id: str,
    message_id: str,
    at: datetime,
    decision: str,
    reason: str | None,
) -> None:
    session.add(
        MessageDecision(
            tenant_id=tenant_id, message_id=message_id, at=at, decision=decision, reason=reason
        )
    )


async def unsubscribe(
    session: AsyncSession,
    outbox: Outbox,
    *,
    tenant_id: str,
    customer_id: str,
    channel: str,
    at: datetime,
    emit: bool,
) -> bool:
    """Mark a contact unsubscribed on a channel (``all``: both). Returns whether anything
    changed; when ``emit``, announces it as customer.unsubscribed in the same transaction."""
    values: dict[str, datetime] = {}
    if channel in ("email", "all"):
        values["email_unsubscribed_at"] = at
    if channel in ("sms", "all"):
        values["sms_unsubscribed_at"] = at
    # Unsubscribed before we saw an order: the contact is created bare, so a later order
    # cannot send marketing to someone who already said no. Insert-or-nothing, then lock:
    # the order's own upsert (another topic, another consumer) may be creating it now.
    await session.execute(
        pg_insert(MessageContact)
        .values(tenant_id=tenant_id, customer_id=customer_id, updated_at=at)
        .on_conflict_do_nothing()
    )
    existing = await session.get(
        MessageContact, (tenant_id, customer_id), with_for_update=True, populate_existing=True
    )
    assert existing is not None  # inserted above or already there, and now locked
    changed = any(getattr(existing, k) is None for k in values)
    for k, v in values.items():
        if getattr(existing, k) is None:
            setattr(existing, k, v)
    existing.updated_at = at
    await session.flush()
    if changed and emit:
        event = CloudEvent.new(
            CustomerUnsubscribed(unsubscribed_at=at, channel=channel),
            tenant_id=tenant_id,
            subject=customer_id,
            source=SOURCE,
            # Stable: a repeated click on the same link is the same event.
            id=derived_event_id("unsubscribe", tenant_id, customer_id, channel),
        )
        await outbox.add(session, event)
    return changed


async def upsert_contact(
    session: AsyncSession, tenant_id: str, customer_id: str, at: datetime, **fields: object
) -> None:
    present = {k: v for k, v in fields.items() if v is not None}
    stmt = pg_insert(MessageContact).values(
        tenant_id=tenant_id, customer_id=customer_id, updated_at=at, **present
    )
    stmt = stmt.on_conflict_do_update(
        index_elements=["tenant_id", "customer_id"],
        # A new order after an erasure is new data given anew: clear the erasure mark.
        set_={**{k: stmt.excluded[k] for k in present}, "updated_at": at, "erased_at": None},
    )
    await session.execute(stmt)


async def record_order(
    session: AsyncSession, tenant_id: str, customer_id: str, order: OrderPlaced
) -> None:
    """Keep what templates show of an order, and count it once into the customer's
    totals (a redelivered or repeated order.placed changes nothing)."""
    inserted = await session.scalar(
        pg_insert(MessageOrder)
        .values(
            tenant_id=tenant_id,
            order_id=order.order_id,
            customer_id=customer_id,
            order_number=order.order_number,
            total_minor=order.total.amount,
            currency=order.total.currency,
            placed_at=order.placed_at,
            items=[
                {"title": li.title, "quantity": li.quantity, "sku": li.sku}
                for li in order.line_items
            ],
        )
        .on_conflict_do_nothing()
        .returning(MessageOrder.order_id)
    )
    if inserted is None:
        return
    contact = await session.get(MessageContact, (tenant_id, customer_id), with_for_update=True)
    if contact is None:
        return  # upsert_contact runs first; only an erased-and-gone contact lands here
    contact.orders_count = (contact.orders_count or 0) + 1
    if contact.currency in (None, order.total.currency):
        contact.currency = order.total.currency
        contact.total_spent_minor = (contact.total_spent_minor or 0) + order.total.amount


async def order_for_template(
    session: AsyncSession, tenant_id: str, order_id: str | None
) -> dict[str, Any] | None:
    """``order`` as templates see it, or None when the message is about no known order."""
    if not order_id:
        return None
    row = await session.get(MessageOrder, (tenant_id, order_id))
    if row is None:
        return None
    return {
        "id": row.order_id,
        "number": row.order_number or row.order_id,
        "total": format_money(row.total_minor, row.currency),
        "total_minor": row.total_minor,
        "currency": row.currency,
        "placed_at": row.placed_at.isoformat(),
        # "lines", not "items": Jinja would find the dict's items() method first
        "lines": row.items,
    }


def customer_for_template(contact: MessageContact) -> dict[str, Any]:
    return {
        "first_name": contact.first_name,
        "email": contact.email,
        "phone": contact.phone,
        "orders_count": contact.orders_count or 0,
        "total_spent": format_money(contact.total_spent_minor or 0, contact.currency)
        if contact.currency
        else None,
    }


async def erase(
    session: AsyncSession, tenant_id: str, customer_id: str | None, at: datetime
) -> None:
    """Wipe personal data (one customer, or every customer of the tenant when None).
    Unsubscribe marks stay: they record a refusal, and forgetting them would let the
    next order re-enable marketing. Pending messages are suppressed, their variables wiped."""
    contacts = update(MessageContact).where(MessageContact.tenant_id == tenant_id)
    messages = update(Message).where(Message.tenant_id == tenant_id)
    orders = delete(MessageOrder).where(MessageOrder.tenant_id == tenant_id)
    if customer_id is not None:
        contacts = contacts.where(MessageContact.customer_id == customer_id)
        messages = messages.where(Message.customer_id == customer_id)
        orders = orders.where(MessageOrder.customer_id == customer_id)
    # What they bought says who they are: the order rows go (the counts stay, as totals).
    await session.execute(orders)
    await session.execute(
        contacts.values(
            email=None,
            phone=None,
            first_name=None,
            locale=None,
            timezone=None,
            erased_at=at,
            updated_at=at,
        )
    )
    pending = list(
        (
            await session.execute(
                select(Message.id).where(
                    Message.tenant_id == tenant_id,
                    Message.status.in_(("queued", "deferred")),
                    *([Message.customer_id == customer_id] if customer_id else []),
                )
            )
        ).scalars()
    )
    await session.execute(
        messages.where(Message.status.in_(("queued", "deferred"))).values(
            status="suppressed", reason="erased", updated_at=at
        )
    )
    # The order id too: the order rows are gone, its id in the log would still say it.
    await session.execute(
        messages.values(variables={}, request_value=b"{}", order_id=None, updated_at=at)
    )
    for message_id in pending:
        await record(session, tenant_id, message_id, at, "suppressed", "erased")
