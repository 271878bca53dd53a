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


class IdempotencyKey(Base):
    __tablename__ = "idempotency_keys"

    tenant_id: Mapped[str] = mapped_column(Text, primary_key=True)
    key: Mapped[str] = mapped_column(Text, primary_key=True)
    route: Mapped[str] = mapped_column(Text)
    body_hash: Mapped[str] = mapped_column(Text)
    status_code: Mapped[int] = mapped_column(Integer)
    response: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(DateTime(timezone=True))


tables = event_tables(Base.metadata)
api_keys = api_keys_table(Base.metadata)
