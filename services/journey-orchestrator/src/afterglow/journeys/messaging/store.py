"""Database helpers shared by the messaging consumer, routes and dispatcher. They flush,
never commit: the entrypoint owns the transaction."""

from __future__ import annotations

import hashlib
from collections.abc import Iterable
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Text, any_, bindparam, case, delete, func, select, text, tuple_, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.events import CloudEvent, Outbox, derived_event_id
from afterglow.events.batch import (
    as_columns,
    joined_to_keys,
    key_params,
    locked_by_keys,
    unnest_insert,
    unnest_keys,
)
from afterglow.events.catalog import CustomerUnsubscribed, OrderPlaced
from afterglow.events.money import format_money
from afterglow.journeys.messaging.channels.sms_text import e164
from afterglow.journeys.messaging.models import (
    Message,
    MessageContact,
    MessageDecision,
    MessageOrder,
    MessageSuppression,
    MessageTemplate,
    MessagingChannel,
    MessagingTenantSettings,
)
from afterglow.journeys.messaging.policy import ContactFacts, PolicySettings, parse_hhmm
from afterglow.journeys.messaging.templates import Template, default_template

SOURCE = "afterglow.journeys.messaging"
# The dispatcher LISTENs here; every INSERT into journeys.messages NOTIFYs it (migration
# 0007_message_notify), and so does anything that makes a waiting message due now.
NOTIFY_CHANNEL = "afterglow_messages_journeys"


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


def contact_facts(
    row: MessageContact | None, suppressed: dict[str, str] | None = None
) -> ContactFacts | None:
    if row is None:
        return None
    return ContactFacts(
        suppressed=suppressed or {},
        email=row.email,
        phone=row.phone,
        timezone=row.timezone,
        accepts_marketing=row.accepts_marketing,
        email_unsubscribed=row.email_unsubscribed_at is not None,
        sms_unsubscribed=row.sms_unsubscribed_at is not None,
        erased=row.erased_at is not None,
    )


TemplateKey = tuple[str, str, str]  # (tenant, template name, channel)

# What a claim reads of its tenants, built once with the tenants bound as one array:
# an ``in_()`` list was coerced and built anew by SQLAlchemy at every claim (about a
# tenth of a claim's CPU).
_claim_tenants = bindparam("tenant_ids", type_=ARRAY(Text))
_TEMPLATES_OF = select(MessageTemplate).where(MessageTemplate.tenant_id == any_(_claim_tenants))
_SETTINGS_OF = select(MessagingTenantSettings).where(
    MessagingTenantSettings.tenant_id == any_(_claim_tenants)
)
_CHANNELS_OF = (
    select(MessagingChannel)
    .where(MessagingChannel.tenant_id == any_(_claim_tenants))
    .order_by(MessagingChannel.tenant_id, MessagingChannel.channel)
    .with_for_update()
)


async def tenant_template_rows(
    session: AsyncSession, tenant_ids: set[str]
) -> dict[TemplateKey, MessageTemplate]:
    """Every template override of the claim's tenants, one query (a tenant has a
    handful): a claim of a hundred messages looked each one up, a round trip each even
    when there was none and the default applied."""
    if not tenant_ids:
        return {}
    rows = (await session.execute(_TEMPLATES_OF, {"tenant_ids": sorted(tenant_ids)})).scalars()
    return {(r.tenant_id, r.name, r.channel): r for r in rows}


async def find_template(
    session: AsyncSession, tenant_id: str, name: str, channel: str
) -> Template | None:
    """The tenant's saved ``name`` for ``channel``, else the default (one message)."""
    row = await session.get(MessageTemplate, (tenant_id, name, channel))
    saved = {} if row is None else {(tenant_id, name, channel): row}
    return claimed_template(saved, tenant_id, name, channel)


def claimed_template(
    overrides: dict[TemplateKey, MessageTemplate], tenant_id: str, name: str, channel: str
) -> Template | None:
    """The tenant's override of ``name`` for ``channel`` among ``overrides`` (read by
    :func:`tenant_template_rows`), else the default."""
    row = overrides.get((tenant_id, name, channel))
    if row is not None:
        return Template(channel=row.channel, text=row.text, subject=row.subject, html=row.html)
    return default_template(name, channel)


async def tenant_settings_rows(
    session: AsyncSession, tenant_ids: set[str]
) -> dict[str, MessagingTenantSettings]:
    """The claim's tenants' messaging settings, one query."""
    if not tenant_ids:
        return {}
    rows = (await session.execute(_SETTINGS_OF, {"tenant_ids": sorted(tenant_ids)})).scalars()
    return {r.tenant_id: r for r in rows}


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


async def customers_with_phone(session: AsyncSession, tenant_id: str, phone: str) -> list[str]:
    """The tenant's contacts that carry this E.164 number (an SMS reply names only it)."""
    rows = await session.execute(
        select(MessageContact.customer_id).where(
            MessageContact.tenant_id == tenant_id, MessageContact.phone == phone
        )
    )
    return list(rows.scalars())


async def resubscribe_sms(session: AsyncSession, tenant_id: str, phone: str, at: datetime) -> int:
    """An SMS START from this number: its contacts take texts again (the consent is the
    reply itself). Email is untouched."""
    result = await session.execute(
        update(MessageContact)
        .where(
            MessageContact.tenant_id == tenant_id,
            MessageContact.phone == phone,
            MessageContact.sms_unsubscribed_at.is_not(None),
        )
        .values(sms_unsubscribed_at=None, updated_at=at)
    )
    return int(result.rowcount or 0)  # type: ignore[attr-defined]


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


# The contact book, kept from order.placed a batch at a time (handlers.orders_placed):
# one statement per table, whatever the batch holds.

ContactKey = tuple[str, str]  # (tenant_id, customer_id)
CONTACT_FIELDS = ("email", "phone", "first_name", "locale", "timezone", "accepts_marketing")


def _contact_lock_key(tenant_id: str, customer_id: str) -> str:
    return f"msg-contact:{tenant_id}:{customer_id}"


async def lock_contact(session: AsyncSession, tenant_id: str, customer_id: str) -> None:
    """Serialise a customer's contact arriving with the dispatcher deferring one of their
    messages for want of it (held to commit). Without it the two crossed: the dispatcher
    read no contact, the consumer stored one and woke nothing (the message was not yet
    deferred), then the deferral committed and the message waited the whole recheck.
    With it, whichever commits second sees what the first did."""
    await lock_contacts(session, [(tenant_id, customer_id)])


async def lock_contacts(session: AsyncSession, keys: Iterable[ContactKey]) -> None:
    """:func:`lock_contact` for a batch: one statement, the keys taken in sorted order,
    so that two batches locking overlapping customers never wait on each other in a
    cycle."""
    wanted = sorted({_contact_lock_key(t, c) for t, c in keys})
    if wanted:
        await session.execute(
            text(
                "SELECT count(pg_advisory_xact_lock(hashtext(k)))"
                " FROM (SELECT unnest(CAST(:keys AS text[])) AS k ORDER BY 1) AS sorted_keys"
            ),
            {"keys": wanted},
        )


async def fresh_contact(
    session: AsyncSession, tenant_id: str, customer_id: str
) -> MessageContact | None:
    """The contact as committed now, not as this session first loaded it."""
    return (
        await session.execute(
            select(MessageContact)
            .where(MessageContact.tenant_id == tenant_id, MessageContact.customer_id == customer_id)
            .execution_options(populate_existing=True)
        )
    ).scalar_one_or_none()


_CONTACT_COLUMNS = ("tenant_id", "customer_id", "updated_at", *CONTACT_FIELDS)
_new_contacts = unnest_insert(MessageContact.__table__, _CONTACT_COLUMNS)
# One statement for any number of contacts (compiled and prepared once).
_UPSERT_CONTACTS = _new_contacts.on_conflict_do_update(
    index_elements=["tenant_id", "customer_id"],
    set_={
        **{
            f: func.coalesce(_new_contacts.excluded[f], getattr(MessageContact, f))
            for f in CONTACT_FIELDS
        },
        "updated_at": _new_contacts.excluded.updated_at,
        # A new order after an erasure is new data given anew: clear the erasure mark.
        "erased_at": None,
    },
)


async def upsert_contacts(
    session: AsyncSession, contacts: dict[ContactKey, dict[str, object]], at: datetime
) -> None:
    """Store what a batch says of its customers: ``contacts`` maps each to the fields it
    gave (None: not said). A field not said keeps the stored value."""
    if not contacts:
        return
    rows = [
        {
            "tenant_id": tenant_id,
            "customer_id": customer_id,
            "updated_at": at,
            **{f: fields.get(f) for f in CONTACT_FIELDS},
        }
        for (tenant_id, customer_id), fields in sorted(contacts.items())
    ]
    await session.execute(_UPSERT_CONTACTS, as_columns(rows, _CONTACT_COLUMNS))


_waking = unnest_keys("w", tenant_id=Text, customer_id=Text)
# One statement: the UPDATE, and the NOTIFY only when it woke something.
_woken = (
    update(Message)
    .where(
        Message.tenant_id == _waking.c.tenant_id,
        Message.customer_id == _waking.c.customer_id,
        Message.status == "deferred",
        Message.reason == "waiting_for_contact",
        Message.next_attempt_at > bindparam("now"),
    )
    .values(next_attempt_at=bindparam("now"))
    .returning(Message.id)
    .cte("woken")
)
_WAKE_WAITING = select(func.pg_notify(NOTIFY_CHANNEL, "")).where(select(_woken.c.id).exists())


async def wake_waiting_for_contacts(
    session: AsyncSession, keys: Iterable[ContactKey], now: datetime
) -> None:
    """Contacts just arrived: their customers' messages deferred for want of one fall
    due now, and the dispatcher is woken on commit. Orders and message requests travel
    on different topics, so the welcome requested for an order often overtakes the order
    that carries the address; without this it waited for the contact recheck (30 s)."""
    wanted = sorted(set(keys))
    if not wanted:
        return
    await session.execute(
        _WAKE_WAITING,
        {
            "w_tenant_id": [k[0] for k in wanted],
            "w_customer_id": [k[1] for k in wanted],
            "now": now,
        },
    )


_ORDER_COLUMNS = (
    "tenant_id",
    "order_id",
    "customer_id",
    "order_number",
    "total_minor",
    "currency",
    "placed_at",
    "items",
)
_INSERT_ORDERS = (
    unnest_insert(MessageOrder.__table__, _ORDER_COLUMNS, json_text=("items",))
    .on_conflict_do_nothing()
    .returning(MessageOrder.tenant_id, MessageOrder.order_id)
)
_CONTACTS_FOR_UPDATE = locked_by_keys(
    MessageContact, unnest_keys("c", tenant_id=Text, customer_id=Text)
).execution_options(populate_existing=True)


async def record_orders(
    session: AsyncSession, orders: list[tuple[ContactKey, OrderPlaced]]
) -> None:
    """Keep what templates show of a batch's orders, and count each once into its
    customer's totals (a redelivered or repeated order.placed changes nothing): one
    insert, one read of the contacts it counts into, their updates flushed together."""
    if not orders:
        return
    rows: dict[tuple[str, str], dict[str, Any]] = {}
    for (tenant_id, customer_id), order in orders:
        rows.setdefault(
            (tenant_id, order.order_id),
            {
                "tenant_id": tenant_id,
                "order_id": order.order_id,
                "customer_id": customer_id,
                "order_number": order.order_number,
                "total_minor": order.total.amount,
                "currency": order.total.currency,
                "placed_at": order.placed_at,
                "items": [
                    {"title": li.title, "quantity": li.quantity, "sku": li.sku}
                    for li in order.line_items
                ],
            },
        )
    inserted = {
        (tenant_id, order_id)
        for tenant_id, order_id in await session.execute(
            _INSERT_ORDERS, as_columns(list(rows.values()), _ORDER_COLUMNS, json_text=("items",))
        )
    }
    if not inserted:
        return
    counted = [
        (key, order)
        for key, order in orders
        if (key[0], order.order_id) in inserted
        and rows[(key[0], order.order_id)]["customer_id"] == key[1]
    ]
    keys = sorted({key for key, _ in counted})
    contacts = {
        (c.tenant_id, c.customer_id): c
        for c in (
            await session.execute(
                _CONTACTS_FOR_UPDATE,
                {"c_tenant_id": [k[0] for k in keys], "c_customer_id": [k[1] for k in keys]},
            )
        ).scalars()
    }
    seen: set[tuple[str, str]] = set()
    for key, order in counted:  # in event order: the first order's currency is kept
        if (key[0], order.order_id) in seen:
            continue  # the same order twice in one batch counts once
        seen.add((key[0], order.order_id))
        contact = contacts.get(key)
        if contact is None:
            continue  # upsert_contacts runs first; only an erased-and-gone contact
        contact.orders_count = (contact.orders_count or 0) + 1
        if contact.currency in (None, order.total.currency):
            contact.currency = order.total.currency
            contact.total_spent_minor = (contact.total_spent_minor or 0) + order.total.amount


_MESSAGE_COLUMNS = (
    "id",
    "tenant_id",
    "customer_id",
    "request_id",
    "kind",
    "template",
    "category",
    "priority",
    "channel",
    "variables",
    "order_id",
    "not_before",
    "status",
    "reason",
    "attempts",
    "next_attempt_at",
    "created_at",
    "updated_at",
    "request_key",
    "request_value",
    "request_headers",
)
_MESSAGE_JSON = ("variables", "request_headers")
_INSERT_MESSAGES = (
    unnest_insert(Message.__table__, _MESSAGE_COLUMNS, json_text=_MESSAGE_JSON)
    .on_conflict_do_nothing(constraint="uq_messages_tenant_request")
    .returning(Message.id)
)


async def insert_messages(session: AsyncSession, rows: list[dict[str, Any]]) -> set[str]:
    """Queue a batch of requested messages; the ids inserted (a request id repeated, per
    tenant, inserts nothing)."""
    if not rows:
        return set()
    columns = as_columns(rows, _MESSAGE_COLUMNS, json_text=_MESSAGE_JSON)
    return set((await session.execute(_INSERT_MESSAGES, columns)).scalars())


async def record_all(
    session: AsyncSession, decisions: list[tuple[str, str, datetime, str, str | None]]
) -> None:
    """:func:`record` for a batch: (tenant_id, message_id, at, decision, reason)."""
    session.add_all(
        MessageDecision(tenant_id=t, message_id=m, at=at, decision=d, reason=r)
        for t, m, at, d, r in decisions
    )


_order_keys = unnest_keys("o", tenant_id=Text, order_id=Text)
_ORDERS = select(MessageOrder).join(
    _order_keys,
    (MessageOrder.tenant_id == _order_keys.c.tenant_id)
    & (MessageOrder.order_id == _order_keys.c.order_id),
)


async def orders_for_templates(
    session: AsyncSession, keys: set[tuple[str, str]]
) -> dict[tuple[str, str], dict[str, Any]]:
    """(tenant, order id) -> ``order`` as templates see it, for a claim's messages in
    one query; an order messaging never saw is absent."""
    if not keys:
        return {}
    ordered = sorted(keys)
    rows = (
        await session.execute(
            _ORDERS,
            {"o_tenant_id": [k[0] for k in ordered], "o_order_id": [k[1] for k in ordered]},
        )
    ).scalars()
    return {(r.tenant_id, r.order_id): order_for_template(r) for r in rows}


def order_for_template(row: MessageOrder) -> dict[str, Any]:
    """``order`` as templates see it."""
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
    await scrub_suppression_details(session, tenant_id, customer_id)
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


# --- channels and suppressed addresses ---------------------------------------------------


def address_key(channel: str, address: str | None) -> str | None:
    """How an address is keyed in suppressions: the SHA-256 of the lower-case email or
    the E.164 phone (as events carry ``email_hash``), so the list keeps working after an
    erasure without keeping the address itself."""
    if not address:
        return None
    normal = address.strip().lower() if channel == "email" else e164(address.strip())
    return hashlib.sha256(normal.encode()).hexdigest() if normal else None


# A claim's contacts and their suppressed addresses, joined against its keys as
# arrays: one statement text for any claim size. A row-wise (a, b) IN (...) list was
# built anew by SQLAlchemy at every claim (~11% of a claim's CPU) and was a new
# statement for PostgreSQL at every size.
_CONTACTS = joined_to_keys(MessageContact, unnest_keys("ck", tenant_id=Text, customer_id=Text))
_SUPPRESSIONS = joined_to_keys(
    MessageSuppression,
    unnest_keys("ak", tenant_id=Text, channel=Text, address_hash=Text),
    MessageSuppression.tenant_id,
    MessageSuppression.channel,
    MessageSuppression.address_hash,
    MessageSuppression.reason,
)


async def load_contacts(session: AsyncSession, keys: set[tuple[str, str]]) -> list[MessageContact]:
    """One query for a batch's contacts; later ``session.get`` calls find them loaded."""
    if not keys:
        return []
    params = key_params("ck", ("tenant_id", "customer_id"), sorted(keys))
    return list((await session.execute(_CONTACTS, params)).scalars())


async def suppressions_for(
    session: AsyncSession, contacts: list[MessageContact]
) -> dict[tuple[str, str], dict[str, str]]:
    """(tenant, customer) -> {channel: reason} for the contacts' suppressed addresses."""
    wanted: dict[tuple[str, str, str], list[tuple[str, str]]] = {}
    for c in contacts:
        for channel, raw in (("email", c.email), ("sms", c.phone)):
            address = address_key(channel, raw)
            if address:
                wanted.setdefault((c.tenant_id, channel, address), []).append(
                    (c.tenant_id, c.customer_id)
                )
    out: dict[tuple[str, str], dict[str, str]] = {}
    if not wanted:
        return out
    rows = await session.execute(
        _SUPPRESSIONS, key_params("ak", ("tenant_id", "channel", "address_hash"), sorted(wanted))
    )
    for tenant_id, channel, address, reason in rows:
        for key in wanted[(tenant_id, channel, address)]:
            out.setdefault(key, {})[channel] = reason
    return out


async def channel_rows(
    session: AsyncSession, tenant_ids: set[str]
) -> dict[tuple[str, str], MessagingChannel]:
    """The batch's channel settings, locked in tenant order: the rate limit's token
    bucket is taken in this transaction, so replicas share one budget per channel."""
    if not tenant_ids:
        return {}
    rows = (await session.execute(_CHANNELS_OF, {"tenant_ids": sorted(tenant_ids)})).scalars()
    return {(r.tenant_id, r.channel): r for r in rows}


# Stronger first: a complaint never downgrades a hard bounce into "marketing only".
REASON_RANK = {"hard_bounce": 3, "complaint": 2, "sms_stop": 1}


async def suppress(
    session: AsyncSession,
    tenant_id: str,
    channel: str,
    entries: list[tuple[str, str, str | None]],
    source: str,
    at: datetime,
) -> int:
    """Suppress addresses (``entries``: raw address, reason, detail) in one statement;
    repeating it is harmless. Returns how many entries had a usable address."""
    rows: dict[str, dict[str, Any]] = {}
    for raw, reason, detail in entries:
        address = address_key(channel, raw)
        if address is None:
            continue
        known = rows.get(address)
        if known is None or REASON_RANK[reason] > REASON_RANK[known["reason"]]:
            rows[address] = {
                "tenant_id": tenant_id,
                "channel": channel,
                "address_hash": address,
                "reason": reason,
                "source": source,
                "detail": detail,
                "created_at": at,
            }
    if not rows:
        return 0
    stmt = pg_insert(MessageSuppression).values(list(rows.values()))
    rank = case(*((MessageSuppression.reason == r, n) for r, n in REASON_RANK.items()), else_=0)
    new_rank = case(*((stmt.excluded.reason == r, n) for r, n in REASON_RANK.items()), else_=0)
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=["tenant_id", "channel", "address_hash"],
            set_={
                "reason": stmt.excluded.reason,
                "source": stmt.excluded.source,
                "detail": stmt.excluded.detail,
            },
            where=new_rank > rank,
        )
    )
    return len(rows)


async def unsuppress(
    session: AsyncSession, tenant_id: str, channel: str, raw: str, reason: str
) -> bool:
    """Lift one kind of suppression (an SMS START lifts its STOP, never a hard bounce)."""
    address = address_key(channel, raw)
    if address is None:
        return False
    result = await session.execute(
        delete(MessageSuppression).where(
            MessageSuppression.tenant_id == tenant_id,
            MessageSuppression.channel == channel,
            MessageSuppression.address_hash == address,
            MessageSuppression.reason == reason,
        )
    )
    return bool(getattr(result, "rowcount", 0))


async def complaint_rate(session: AsyncSession, tenant_id: str, since: datetime) -> tuple[int, int]:
    """(complaints, emails sent) since ``since``: the ratio mailbox providers watch
    (Gmail wants it under 0.3 %)."""
    complaints = await session.scalar(
        select(func.count()).where(
            MessageSuppression.tenant_id == tenant_id,
            MessageSuppression.reason == "complaint",
            MessageSuppression.created_at >= since,
        )
    )
    sent = await session.scalar(
        select(func.count()).where(
            Message.tenant_id == tenant_id,
            Message.channel == "email",
            Message.status == "sent",
            Message.sent_at >= since,
        )
    )
    return int(complaints or 0), int(sent or 0)


async def scrub_suppression_details(
    session: AsyncSession, tenant_id: str, customer_id: str | None
) -> None:
    """Before an erasure wipes the contacts: their suppressions stay (a bounce or a STOP
    must keep working) but lose the provider's detail, which may quote the address."""
    scrub = update(MessageSuppression).where(MessageSuppression.tenant_id == tenant_id)
    if customer_id is not None:
        contact = await session.get(MessageContact, (tenant_id, customer_id))
        keys = [
            (channel, key)
            for channel, raw in (
                ("email", contact and contact.email),
                ("sms", contact and contact.phone),
            )
            if (key := address_key(channel, raw))
        ]
        if not keys:
            return
        scrub = scrub.where(
            tuple_(MessageSuppression.channel, MessageSuppression.address_hash).in_(keys)
        )
    await session.execute(scrub.values(detail=None))


# --- what the routes read and write ------------------------------------------------------


async def tenant_templates(session: AsyncSession, tenant_id: str) -> list[MessageTemplate]:
    """The tenant's own templates (every name and channel), in one query."""
    rows = await session.execute(
        select(MessageTemplate).where(MessageTemplate.tenant_id == tenant_id)
    )
    return list(rows.scalars())


async def save_template(
    session: AsyncSession, tenant_id: str, name: str, template: Template, at: datetime
) -> None:
    """Create or overwrite the tenant's template ``name`` for ``template.channel``."""
    row = await session.get(MessageTemplate, (tenant_id, name, template.channel))
    if row is None:
        row = MessageTemplate(
            tenant_id=tenant_id, name=name, channel=template.channel, updated_at=at
        )
        session.add(row)
    row.subject, row.html, row.text, row.updated_at = (
        template.subject,
        template.html,
        template.text,
        at,
    )


async def delete_template(session: AsyncSession, tenant_id: str, name: str, channel: str) -> bool:
    """Drop the tenant's template (the default applies again); whether there was one."""
    row = await session.get(MessageTemplate, (tenant_id, name, channel))
    if row is not None:
        await session.delete(row)
    return row is not None


async def settings_for_update(
    session: AsyncSession, tenant_id: str, at: datetime
) -> MessagingTenantSettings:
    """The tenant's settings row, locked to this transaction; created with the defaults
    when the tenant has none (two first writes then wait for each other at the insert)."""
    row = await session.get(MessagingTenantSettings, tenant_id, with_for_update=True)
    if row is None:
        row = MessagingTenantSettings(
            tenant_id=tenant_id,
            quiet_hours_start="21:00",
            quiet_hours_end="08:00",
            frequency_cap=3,
            frequency_window_days=7,
            default_channel="email",
            default_timezone="UTC",
            updated_at=at,
        )
        session.add(row)
    return row


async def customer_messages(
    session: AsyncSession, tenant_id: str, customer_id: str, limit: int
) -> list[Message]:
    """The customer's message log, newest first."""
    rows = await session.execute(
        select(Message)
        .where(Message.tenant_id == tenant_id, Message.customer_id == customer_id)
        .order_by(Message.created_at.desc(), Message.id)
        .limit(limit)
    )
    return list(rows.scalars())


async def decisions_of(
    session: AsyncSession, tenant_id: str, message_ids: list[str]
) -> dict[str, list[MessageDecision]]:
    """message id -> its decisions in the order they were taken, for a page of messages
    in one query (every id is a key, with no decision an empty list)."""
    out: dict[str, list[MessageDecision]] = {i: [] for i in message_ids}
    if not message_ids:
        return out
    rows = await session.execute(
        select(MessageDecision)
        .where(
            MessageDecision.tenant_id == tenant_id,
            MessageDecision.message_id.in_(message_ids),
        )
        .order_by(MessageDecision.id)
    )
    for d in rows.scalars():
        out[d.message_id].append(d)
    return out


async def failed_messages(session: AsyncSession, tenant_id: str, limit: int) -> list[Message]:
    """The tenant's messages that failed for good, newest first."""
    rows = await session.scalars(
        select(Message)
        .where(Message.tenant_id == tenant_id, Message.status == "failed")
        .order_by(Message.updated_at.desc(), Message.id)
        .limit(limit)
    )
    return list(rows)


async def message_for_update(
    session: AsyncSession, tenant_id: str, message_id: str
) -> Message | None:
    """One of the tenant's messages, locked: a redelivery and the dispatcher (or a
    second click) do not both change it."""
    rows = await session.scalars(
        select(Message)
        .where(Message.tenant_id == tenant_id, Message.id == message_id)
        .with_for_update()
    )
    return rows.first()


async def tenant_channel(
    session: AsyncSession, tenant_id: str, channel: str, *, for_update: bool = False
) -> MessagingChannel | None:
    """The tenant's settings of one channel kind (None: the signed webhook)."""
    return await session.get(MessagingChannel, (tenant_id, channel), with_for_update=for_update)


def add_channel(session: AsyncSession, tenant_id: str, channel: str) -> MessagingChannel:
    """A new channel row for the tenant, inserted at the next flush (the caller sets its
    provider and config first); its rate bucket starts full."""
    row = MessagingChannel(tenant_id=tenant_id, channel=channel, tokens=0.0)
    session.add(row)
    return row


async def tenant_channels(session: AsyncSession, tenant_id: str) -> dict[str, MessagingChannel]:
    """channel kind -> the tenant's settings of it (a kind without a row is absent)."""
    rows = await session.execute(
        select(MessagingChannel).where(MessagingChannel.tenant_id == tenant_id)
    )
    return {r.channel: r for r in rows.scalars()}


async def delete_channel(session: AsyncSession, tenant_id: str, channel: str) -> None:
    """Back to the signed webhook for this channel kind."""
    row = await session.get(MessagingChannel, (tenant_id, channel))
    if row is not None:
        await session.delete(row)


# --- the dispatcher's claim and settle --------------------------------------------------

# A message waiting its turn: what a claim takes once its next_attempt_at is due.
PENDING = ("queued", "deferred")


async def claim_due_messages(
    session: AsyncSession, now: datetime, limit: int, full_tenants: list[str]
) -> list[Message]:
    """Lock up to ``limit`` due, pending messages, the earliest due first, leaving out
    the tenants whose send slots are all taken; rows another replica's claim holds are
    skipped, not waited for (any number of dispatchers share the work)."""
    query = select(Message).where(Message.status.in_(PENDING), Message.next_attempt_at <= now)
    if full_tenants:
        query = query.where(Message.tenant_id.not_in(full_tenants))
    return list(
        (
            await session.execute(
                query.order_by(Message.next_attempt_at)
                .limit(limit)
                .with_for_update(skip_locked=True)
            )
        )
        .scalars()
        .all()
    )


async def lock_marketing_cap(session: AsyncSession, tenant_id: str, customer_id: str) -> None:
    """Serialise one customer's frequency-cap checks (held to commit): without it two
    dispatchers both saw "2 of 3" and sent two more."""
    await session.execute(
        text("SELECT pg_advisory_xact_lock(hashtext(:k))"),
        {"k": f"msg-cap:{tenant_id}:{customer_id}"},
    )


async def marketing_counted(
    session: AsyncSession, tenant_id: str, customer_id: str, other_than: str, since: datetime
) -> list[datetime]:
    """When the customer's other marketing messages (pending or sent) counted against
    the cap, since ``since``: what the policy's frequency cap judges by."""
    return list(
        (
            await session.execute(
                select(Message.counted_at).where(
                    Message.tenant_id == tenant_id,
                    Message.customer_id == customer_id,
                    Message.category == "marketing",
                    Message.id != other_than,
                    Message.status.in_(("queued", "deferred", "sent")),
                    Message.counted_at > since,
                )
            )
        ).scalars()
    )


# Sends the provider accepted, settled together in one statement: each message (still
# on the lease that sent it: queued, same attempt) becomes sent, and its two decisions
# are recorded in order. The ORM way (lock and load it, flush the change, insert the
# decisions) took four round trips a message; one transaction per message still cost
# its BEGIN and COMMIT round trips and a connection each, most of a settle's CPU.
# The rows are locked in id order first, so two writes over common rows (another
# settle, an erasure) wait for each other instead of locking in a cycle.
_SETTLE_SENT = text(
    f"WITH sent AS ("  # noqa: S608 - table names from the models
    f" SELECT * FROM unnest(CAST(:id AS text[]), CAST(:attempt AS integer[]),"
    f"                      CAST(:at AS timestamptz[]), CAST(:reason AS text[]))"
    f"   AS k(id, attempt, at, reason)),"
    f" locked AS MATERIALIZED ("
    f" SELECT m.id FROM {Message.__table__.fullname} m JOIN sent k ON m.id = k.id"
    f"  ORDER BY m.id FOR UPDATE OF m),"
    f" settled AS ("
    f" UPDATE {Message.__table__.fullname} m"
    f"    SET status = 'sent', reason = NULL, sent_at = k.at, updated_at = k.at"
    f"   FROM sent k"
    f"  WHERE m.id = k.id AND m.id IN (SELECT id FROM locked)"
    f"    AND m.status = 'queued' AND m.attempts = k.attempt"
    f" RETURNING m.tenant_id, m.id, k.at, k.reason)"
    f" INSERT INTO {MessageDecision.__table__.fullname}"
    f" (tenant_id, message_id, at, decision, reason)"
    f" SELECT s.tenant_id, s.id, s.at, d.decision, CASE WHEN d.n = 2 THEN s.reason END"
    f"   FROM settled s, (VALUES (1, 'sent'), (2, 'delivered')) AS d(n, decision)"
    f"  ORDER BY s.id, d.n"
)

# (message id, attempt, at, the provider's reason): one send the provider accepted.
SentSend = tuple[str, int, datetime, str | None]


async def settle_sent(session: AsyncSession, sends: list[SentSend]) -> None:
    """Mark messages sent by the sends of their attempts; nothing for one whose lease
    is no longer its own (erased meanwhile, or a later lease took over)."""
    if not sends:
        return
    ids, attempts, ats, reasons = (list(c) for c in zip(*sends, strict=True))
    await session.execute(
        _SETTLE_SENT, {"id": ids, "attempt": attempts, "at": ats, "reason": reasons}
    )


async def message_to_settle(session: AsyncSession, message_id: str) -> Message | None:
    """The message a send ended for, locked: its outcome and a redelivery (or a later
    lease) do not both change it."""
    return await session.get(Message, message_id, with_for_update=True)
