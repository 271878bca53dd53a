"""Tables of the loyalty schema. Every row carries tenant_id; every query filters by it."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Any

from sqlalchemy import (
    BigInteger,
    Date,
    DateTime,
    Index,
    Integer,
    Numeric,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from afterglow.events import event_tables
from afterglow.kit.auth import api_keys_table
from afterglow.kit.db import service_metadata

SCHEMA = "loyalty"


class Base(DeclarativeBase):
    metadata = service_metadata(SCHEMA)


TZ = DateTime(timezone=True)


class ProgramRulesRow(Base):
    __tablename__ = "program_rules"
    tenant_id: Mapped[str] = mapped_column(Text, primary_key=True)
    rules: Mapped[dict[str, Any]] = mapped_column(JSONB)
    version: Mapped[int] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(TZ)


class Account(Base):
    """Cached balances: updated in the same transaction as the entries they sum."""

    __tablename__ = "accounts"
    tenant_id: Mapped[str] = mapped_column(Text, primary_key=True)
    customer_id: Mapped[str] = mapped_column(Text, primary_key=True)
    available: Mapped[int] = mapped_column(BigInteger, default=0)  # signed: < 0 is a debt
    pending: Mapped[int] = mapped_column(BigInteger, default=0)
    lifetime_earned: Mapped[int] = mapped_column(BigInteger, default=0)
    tier: Mapped[str | None] = mapped_column(Text)
    # When the rolling window may next drop the tier (the oldest contribution ages out).
    tier_review_at: Mapped[datetime | None] = mapped_column(TZ)
    orders_count: Mapped[int] = mapped_column(Integer, default=0)
    erased: Mapped[bool] = mapped_column(default=False)
    created_at: Mapped[datetime] = mapped_column(TZ)
    updated_at: Mapped[datetime] = mapped_column(TZ)
    __table_args__ = (
        Index(
            "ix_accounts_tier_review",
            "tier_review_at",
            postgresql_where=text("tier_review_at IS NOT NULL"),
        ),
    )


class LotRow(Base):
    __tablename__ = "lots"
    id: Mapped[str] = mapped_column(Text, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(Text)
    customer_id: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(Text)
    source_id: Mapped[str] = mapped_column(Text)
    order_id: Mapped[str | None] = mapped_column(Text)
    points: Mapped[int] = mapped_column(BigInteger)
    clawed: Mapped[int] = mapped_column(BigInteger, default=0)
    remaining: Mapped[int] = mapped_column(BigInteger, default=0)
    state: Mapped[str] = mapped_column(Text)
    earned_at: Mapped[datetime] = mapped_column(TZ)
    available_at: Mapped[datetime | None] = mapped_column(TZ)
    expires_at: Mapped[datetime | None] = mapped_column(TZ)
    notify_at: Mapped[datetime | None] = mapped_column(TZ)
    expiry_notified_at: Mapped[datetime | None] = mapped_column(TZ)
    rule_snapshot: Mapped[dict[str, Any]] = mapped_column(JSONB, default=dict)
    __table_args__ = (
        # One lot per cause: a survey pays once, a referral once, an order once.
        UniqueConstraint("tenant_id", "source", "source_id", name="uq_lots_source"),
        Index("ix_lots_account", "tenant_id", "customer_id", "state"),
        Index("ix_lots_due", "available_at", postgresql_where=text("state = 'pending'")),
        Index(
            "ix_lots_expiry",
            "expires_at",
            postgresql_where=text("state = 'available' AND remaining > 0"),
        ),
    )


class EntryRow(Base):
    """The append-only ledger. Never updated except to pseudonymize the customer."""

    __tablename__ = "entries"
    seq: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    id: Mapped[str] = mapped_column(Text, unique=True)
    tenant_id: Mapped[str] = mapped_column(Text)
    customer_id: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(Text)
    pending_delta: Mapped[int] = mapped_column(BigInteger)
    available_delta: Mapped[int] = mapped_column(BigInteger)
    lot_id: Mapped[str | None] = mapped_column(Text)
    order_id: Mapped[str | None] = mapped_column(Text)
    reason: Mapped[str | None] = mapped_column(Text)
    actor: Mapped[str | None] = mapped_column(Text)
    ref: Mapped[str | None] = mapped_column(Text)
    rule_snapshot: Mapped[dict[str, Any] | None] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(TZ)
    __table_args__ = (Index("ix_entries_account", "tenant_id", "customer_id", "seq"),)


class OrderRow(Base):
    __tablename__ = "orders"
    tenant_id: Mapped[str] = mapped_column(Text, primary_key=True)
    order_id: Mapped[str] = mapped_column(Text, primary_key=True)
    customer_id: Mapped[str] = mapped_column(Text)
    total_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(Text)
    placed_at: Mapped[datetime] = mapped_column(TZ)
    fulfilled_at: Mapped[datetime | None] = mapped_column(TZ)
    delivered_at: Mapped[datetime | None] = mapped_column(TZ)
    refunded_minor: Mapped[int] = mapped_column(BigInteger, default=0)
    refund_ids: Mapped[list[str]] = mapped_column(ARRAY(Text), default=list)
    fully_refunded: Mapped[bool] = mapped_column(default=False)
    cancelled: Mapped[bool] = mapped_column(default=False)
    earned: Mapped[bool] = mapped_column(default=False)
    first_order: Mapped[bool] = mapped_column(default=False)
    # ``total_minor``/``currency``: the order's total in the currency it was priced from
    # (shop money, unless the customer's currency is the program's). ``other_*``: its
    # total in the other currency it states, if any: a refund stated in that one (Shopify
    # refunds in the customer's currency) is related to ``total_minor`` through it.
    other_minor: Mapped[int | None] = mapped_column(BigInteger)
    other_currency: Mapped[str | None] = mapped_column(Text)
    # Its price in the program's currency (``value_currency``) when it was placed:
    # minor units per minor unit of ``currency``, and the tenant's rate and its date
    # when one was used. fx_factor NULL: unpriced (no rate), ``unpriced_reason`` says so;
    # such an order earns no points and no tier spend.
    value_currency: Mapped[str | None] = mapped_column(Text)
    # 16 places: a rate's 10 decimal places shifted by up to 3 minor-unit digits (KWD),
    # stored exactly, so SQL (tier spend) and Python (points) convert alike.
    fx_factor: Mapped[Decimal | None] = mapped_column(Numeric(36, 16))
    fx_rate: Mapped[Decimal | None] = mapped_column(Numeric(24, 10))
    fx_as_of: Mapped[date | None] = mapped_column(Date)
    unpriced_reason: Mapped[str | None] = mapped_column(Text)
    __table_args__ = (Index("ix_orders_customer", "tenant_id", "customer_id", "placed_at"),)


class ExchangeRateRow(Base):
    """A tenant's rate from ``currency`` into a program currency (``quote``): 1 currency
    = rate quote, as of a date. Kept by the tenant (no feed): loyalty converts an order
    only at a rate the merchant chose, and says so when it has none."""

    __tablename__ = "exchange_rates"
    tenant_id: Mapped[str] = mapped_column(Text, primary_key=True)
    currency: Mapped[str] = mapped_column(Text, primary_key=True)
    quote: Mapped[str] = mapped_column(Text, primary_key=True)
    rate: Mapped[Decimal] = mapped_column(Numeric(24, 10))
    as_of: Mapped[date] = mapped_column(Date)
    updated_at: Mapped[datetime] = mapped_column(TZ)


class Redemption(Base):
    __tablename__ = "redemptions"
    id: Mapped[str] = mapped_column(Text, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(Text)
    customer_id: Mapped[str] = mapped_column(Text)
    idempotency_key: Mapped[str] = mapped_column(Text)
    request_hash: Mapped[str] = mapped_column(Text)
    reward_id: Mapped[str] = mapped_column(Text)
    points: Mapped[int] = mapped_column(BigInteger)
    code: Mapped[str] = mapped_column(Text)
    response: Mapped[dict[str, Any]] = mapped_column(JSONB)
    created_at: Mapped[datetime] = mapped_column(TZ)
    __table_args__ = (
        UniqueConstraint("tenant_id", "customer_id", "idempotency_key", name="uq_redemptions_key"),
        UniqueConstraint("tenant_id", "code", name="uq_redemptions_code"),
    )


tables = event_tables(Base.metadata)
api_keys = api_keys_table(Base.metadata)
