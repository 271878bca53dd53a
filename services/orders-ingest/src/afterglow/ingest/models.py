"""Tables of the ``ingest`` schema."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    Text,
    UniqueConstraint,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from afterglow.events import event_tables
from afterglow.kit.auth import api_keys_table
from afterglow.kit.db import service_metadata
from afterglow.kit.secretbox import SealedText

SCHEMA = "ingest"


class Base(DeclarativeBase):
    # Spelled out (not kit.db.declarative_base()) so that mypy sees a class.
    metadata = service_metadata(SCHEMA)


class Tenant(Base):
    __tablename__ = "tenants"

    tenant_id: Mapped[str] = mapped_column(Text, primary_key=True)
    name: Mapped[str] = mapped_column(Text)
    # What identifies the tenant in a webhook whose URL does not carry it.
    shopify_shop_domain: Mapped[str | None] = mapped_column(Text, unique=True)
    woocommerce_store_url: Mapped[str | None] = mapped_column(Text)
    bigcommerce_store_hash: Mapped[str | None] = mapped_column(Text)
    # A live event about an order placed more than this many days before it arrived is
    # historical (recorded and counted; no journey, survey or message). 0: never.
    late_order_days: Mapped[int] = mapped_column(Integer, default=30, server_default="30")
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True), server_default=func.now())


class WebhookSecret(Base):
    """A platform's signing secret: HMAC needs it whole, so it is sealed, not hashed."""

    __tablename__ = "webhook_secrets"
    __table_args__ = (Index("ix_webhook_secrets_tenant_platform", "tenant_id", "platform"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(Text)
    platform: Mapped[str] = mapped_column(Text)
    secret: Mapped[str] = mapped_column(SealedText("ingest.webhook_secrets.secret"))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    # NULL: current. Set by a rotation to the end of the grace period.
    expires_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class PlatformConnection(Base):
    """Credentials for a platform's API (reconciliation, BigCommerce fetch) and the
    reconciliation watermark."""

    __tablename__ = "platform_connections"

    tenant_id: Mapped[str] = mapped_column(Text, primary_key=True)
    platform: Mapped[str] = mapped_column(Text, primary_key=True)
    api_base_url: Mapped[str] = mapped_column(Text)
    access_token: Mapped[str] = mapped_column(
        SealedText("ingest.platform_connections.access_token")
    )
    watermark: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_run_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)


class Delivery(Base):
    """Every accepted delivery, raw, stored before it is acknowledged."""

    __tablename__ = "deliveries"
    __table_args__ = (
        UniqueConstraint("tenant_id", "platform", "dedupe_key", name="uq_deliveries_dedupe"),
        Index("ix_deliveries_tenant_received", "tenant_id", "received_at"),
        # The fetch worker's poll: only the few deliveries still waiting are indexed.
        Index(
            "ix_deliveries_fetch_due",
            "next_attempt_at",
            postgresql_where=text("status = 'fetch_pending'"),
        ),
        # The processing worker's claim, oldest first: only deliveries not yet applied.
        Index(
            "ix_deliveries_received",
            "received_at",
            "id",
            postgresql_where=text("status = 'received'"),
        ),
    )

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(Text)
    platform: Mapped[str] = mapped_column(Text)
    topic: Mapped[str] = mapped_column(Text)
    dedupe_key: Mapped[str] = mapped_column(Text)
    # received: stored by a webhook receiver, not yet normalized (the processing
    # worker's queue); processed: events emitted (maybe none); archived: unknown topic,
    # kept for replay; quarantined: not normalizable (last_error says why);
    # fetch_pending: BigCommerce, waiting for the fetch worker; failed: the fetch gave up
    # (last_error says why).
    status: Mapped[str] = mapped_column(Text)
    received_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    headers: Mapped[dict[str, Any]] = mapped_column(JSONB)
    body: Mapped[bytes] = mapped_column(LargeBinary)
    event_ids: Mapped[list[str]] = mapped_column(ARRAY(Text), default=list)
    # The customers (event subjects) this delivery spoke about: a data access request
    # finds a customer's raw payloads by it (the outbox keeps event keys for a day only).
    subjects: Mapped[list[str]] = mapped_column(ARRAY(Text), default=list)
    replays: Mapped[int] = mapped_column(Integer, default=0)
    # The fetch worker's bookkeeping (BigCommerce): attempts made, when the next is due
    # (or the claim's lease ends), and the last failure.
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    # The W3C trace context of the request that delivered it: the processing worker
    # continues that trace, so the events it emits join the webhook's trace.
    traceparent: Mapped[str | None] = mapped_column(Text)


class OrderFact(Base):
    """One fact about an order (placed, fulfilled, refund r1...) emitted once, whichever
    source told us first: webhook, reconciliation or REST."""

    __tablename__ = "order_facts"

    tenant_id: Mapped[str] = mapped_column(Text, primary_key=True)
    fact_key: Mapped[str] = mapped_column(Text, primary_key=True)
    event_id: Mapped[str] = mapped_column(Text)
    delivery_id: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class Order(Base):
    """What later webhooks (fulfilment, refund, tracking) need but do not carry."""

    __tablename__ = "orders"
    __table_args__ = (
        Index("ix_orders_platform_id", "tenant_id", "platform_order_id"),
        Index("ix_orders_placed_at", "tenant_id", "placed_at"),
    )

    tenant_id: Mapped[str] = mapped_column(Text, primary_key=True)
    order_id: Mapped[str] = mapped_column(Text, primary_key=True)
    platform_order_id: Mapped[str] = mapped_column(Text)
    subject: Mapped[str] = mapped_column(Text)
    total_amount: Mapped[int | None] = mapped_column(BigInteger)
    currency: Mapped[str | None] = mapped_column(Text)
    # The total in the customer's currency when it differs (a refund stated in it is
    # related to the shop total through this).
    presentment_amount: Mapped[int | None] = mapped_column(BigInteger)
    presentment_currency: Mapped[str | None] = mapped_column(Text)
    # This order's place in its customer's orders (1 = the first we saw), taken from
    # CustomerOrderCount when its order.placed was first emitted; a replay re-emits it.
    customer_order_seq: Mapped[int | None] = mapped_column(Integer)

    # The sum of the refunds emitted so far (minor units of the order total's currency,
    # the shop's): refunds that together reach the total make the last one a full refund.
    refunded_amount: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    # When the order was placed (its order.placed's placed_at): the order-book metrics
    # (metrics.py) group by it. None for orders stored before it was kept.
    placed_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))


class CustomerOrderCount(Base):
    """The order book's count per customer: orders placed that ingest has emitted.

    A counter row, bumped with one upsert (``ON CONFLICT DO UPDATE ... RETURNING``): the
    row lock makes a concurrent order of the same customer wait and count after this
    one, where ``SELECT count(*)`` in two READ COMMITTED transactions would see one
    order each and call both the first."""

    __tablename__ = "customer_order_counts"

    tenant_id: Mapped[str] = mapped_column(Text, primary_key=True)
    subject: Mapped[str] = mapped_column(Text, primary_key=True)
    orders: Mapped[int] = mapped_column(Integer)


class CustomerLink(Base):
    """Who an email or phone belongs to, as the tenant's orders showed it: the link a
    helpdesk ticket (which knows only its requester's email or phone) is resolved by to
    the customer a journey is keyed by (the platform's customer id).

    ``value_hash`` is the full sha256 of the normalized email or phone, as in
    ``CustomerInfo``. ``email`` is kept (sealed) only so that an escalation can name the
    ticket's requester to the helpdesk; an erasure deletes the row."""

    __tablename__ = "customer_links"
    __table_args__ = (Index("ix_customer_links_subject", "tenant_id", "subject"),)

    tenant_id: Mapped[str] = mapped_column(Text, primary_key=True)
    kind: Mapped[str] = mapped_column(Text, primary_key=True)  # email | phone
    value_hash: Mapped[str] = mapped_column(Text, primary_key=True)
    subject: Mapped[str] = mapped_column(Text)
    email: Mapped[str | None] = mapped_column(SealedText("ingest.customer_links.email"))
    seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class TicketCustomer(Base):
    """Whom a helpdesk ticket was resolved to, decided on its first event and kept: its
    later events go to the same customer (and partition), even if an order reveals a
    better link meanwhile. ``resolved_by`` says how (escalation, external_id, email,
    phone, customer_id) or ``unresolved``, with ``reason`` saying why."""

    __tablename__ = "ticket_customers"

    tenant_id: Mapped[str] = mapped_column(Text, primary_key=True)
    ticket_id: Mapped[str] = mapped_column(Text, primary_key=True)
    subject: Mapped[str] = mapped_column(Text)
    resolved_by: Mapped[str] = mapped_column(Text)
    reason: Mapped[str | None] = mapped_column(Text)
    first_seen_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class HelpdeskConnection(Base):
    """Where a tenant's escalations open tickets: Zendesk (``username`` is the agent's
    email, ``secret`` the API token), Gorgias (``username`` and API key) or a generic
    receiver (``secret`` signs a Standard Webhook)."""

    __tablename__ = "helpdesk_connections"

    tenant_id: Mapped[str] = mapped_column(Text, primary_key=True)
    kind: Mapped[str] = mapped_column(Text)  # zendesk | gorgias | webhook
    api_base_url: Mapped[str] = mapped_column(Text)
    username: Mapped[str | None] = mapped_column(Text)
    secret: Mapped[str] = mapped_column(SealedText("ingest.helpdesk_connections.secret"))


class Escalation(Base):
    """A detractor's ``support.escalation_requested``, to become one helpdesk ticket.

    pending: waiting for the worker (``next_attempt_at``); created: the helpdesk has it
    (``ticket_ref``); failed: gave up or permanently refused (``last_error``)."""

    __tablename__ = "escalations"
    __table_args__ = (
        Index(
            "ix_escalations_due",
            "next_attempt_at",
            postgresql_where=text("status = 'pending'"),
        ),
    )

    tenant_id: Mapped[str] = mapped_column(Text, primary_key=True)
    escalation_id: Mapped[str] = mapped_column(Text, primary_key=True)  # the event id
    subject: Mapped[str] = mapped_column(Text)
    reason: Mapped[str] = mapped_column(Text)
    priority: Mapped[str] = mapped_column(Text)
    order_id: Mapped[str | None] = mapped_column(Text)
    survey_id: Mapped[str | None] = mapped_column(Text)
    score: Mapped[int | None] = mapped_column(Integer)
    comment: Mapped[str | None] = mapped_column(Text)
    requested_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    status: Mapped[str] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    helpdesk: Mapped[str | None] = mapped_column(Text)
    ticket_ref: Mapped[str | None] = mapped_column(Text)
    last_error: Mapped[str | None] = mapped_column(Text)


class IdempotencyKey(Base):
    __tablename__ = "idempotency_keys"

    tenant_id: Mapped[str] = mapped_column(Text, primary_key=True)
    key: Mapped[str] = mapped_column(Text, primary_key=True)
    route: Mapped[str] = mapped_column(Text)
    body_hash: Mapped[str] = mapped_column(Text)
    status_code: Mapped[int] = mapped_column(Integer)
    response: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


class ShopDiscount(Base):
    """A reward code in a tenant's shop, and the platform action it waits for.

    ``state``: creating (the create call is due at ``next_attempt_at``, or leased until
    it), active (exists in the shop), used (an order spent it), disabling (the disable
    call is due), disabled, failed (never created; ``last_error`` says why). The code is
    the key: a repeated request finds this row, a retried create first looks the code
    up in the shop (discounts.platforms), so no shop ever holds it twice."""

    __tablename__ = "shop_discounts"
    __table_args__ = (
        # The worker's claim: only rows with a platform call due are indexed.
        Index(
            "ix_shop_discounts_due",
            "next_attempt_at",
            postgresql_where=text("state IN ('creating', 'disabling')"),
        ),
        # Expiry: active codes past their end are disabled in the shop.
        Index("ix_shop_discounts_ends", "ends_at", postgresql_where=text("state = 'active'")),
        Index("ix_shop_discounts_tenant_updated", "tenant_id", "updated_at"),
    )

    tenant_id: Mapped[str] = mapped_column(Text, primary_key=True)
    code: Mapped[str] = mapped_column(Text, primary_key=True)  # upper case
    customer_id: Mapped[str] = mapped_column(Text)  # the event subject
    issuer: Mapped[str] = mapped_column(Text)  # the requesting service (event source)
    reference: Mapped[str] = mapped_column(Text)
    title: Mapped[str] = mapped_column(Text)
    value_kind: Mapped[str] = mapped_column(Text)
    amount_minor: Mapped[int | None] = mapped_column(BigInteger)
    currency: Mapped[str | None] = mapped_column(Text)
    percent: Mapped[int | None] = mapped_column(Integer)
    starts_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    ends_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    # The message.requested data released when the code exists (then cleared).
    announce: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    state: Mapped[str] = mapped_column(Text)
    platform: Mapped[str | None] = mapped_column(Text)
    platform_discount_id: Mapped[str | None] = mapped_column(Text)
    # Set by a revoke that arrives while the code is still being created: the worker
    # disables it as soon as it exists, and never announces it.
    revoke_reason: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    last_error: Mapped[str | None] = mapped_column(Text)
    used_order_id: Mapped[str | None] = mapped_column(Text)
    used_at: Mapped[datetime | None] = mapped_column(DateTime(timezone=True))
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))
    updated_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


tables = event_tables(Base.metadata)
api_keys = api_keys_table(Base.metadata)
