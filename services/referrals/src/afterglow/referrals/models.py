"""Tables of the ``referrals`` schema. Every row carries ``tenant_id``."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    CheckConstraint,
    DateTime,
    Index,
    Integer,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from afterglow.events import event_tables
from afterglow.kit.auth import api_keys_table
from afterglow.kit.db import service_metadata
from afterglow.referrals.domain import (
    ATTRIBUTION_WINDOW_DAYS,
    PERCENT_OFF,
    RETURN_WINDOW_DAYS,
    REWARD_VALID_DAYS,
)

SCHEMA = "referrals"


class Base(DeclarativeBase):
    # A class statement rather than kit's declarative_base(): mypy needs a real type.
    metadata = service_metadata(SCHEMA)


TS = DateTime(timezone=True)


class Code(Base):
    """One code per advocate per tenant, both enforced by unique constraints."""

    __tablename__ = "codes"
    __table_args__ = (
        UniqueConstraint("tenant_id", "code", name="uq_codes_tenant_code"),
        UniqueConstraint("tenant_id", "advocate_customer_id", name="uq_codes_tenant_advocate"),
    )

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(Text)
    advocate_customer_id: Mapped[str] = mapped_column(Text)
    code: Mapped[str] = mapped_column(Text)
    source: Mapped[str] = mapped_column(Text)  # invited | api
    issued_at: Mapped[datetime] = mapped_column(TS)
    # Start of the attribution window; a later invitation moves it forward.
    invited_at: Mapped[datetime] = mapped_column(TS)
    invitations: Mapped[int] = mapped_column(Integer, server_default=text("1"))
    # Set when the invitation message was requested, so it is requested once per code.
    invite_requested_at: Mapped[datetime | None] = mapped_column(TS)
    # Set when the advocate is erased: the row stays (metrics count it), the code no
    # longer attributes or resolves.
    deactivated_at: Mapped[datetime | None] = mapped_column(TS)


class Order(Base):
    """Every order seen, so that "new customer" and self-referral can be decided, and
    what happened to it since, so that an attribution made later (the API) starts from
    the order's real state.

    Only hashes are kept; an erasure request nulls them, replaces the customer id with
    a pseudonym and keeps the row (counts)."""

    __tablename__ = "orders"
    __table_args__ = (
        Index("ix_orders_customer", "tenant_id", "customer_id", "placed_at"),
        Index("ix_orders_email_hash", "tenant_id", "email_hash"),
    )

    tenant_id: Mapped[str] = mapped_column(Text, primary_key=True)
    order_id: Mapped[str] = mapped_column(Text, primary_key=True)
    customer_id: Mapped[str] = mapped_column(Text)
    placed_at: Mapped[datetime] = mapped_column(TS)
    total_amount: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(Text)
    email_hash: Mapped[str | None] = mapped_column(Text)
    phone_hash: Mapped[str | None] = mapped_column(Text)
    shipping_address_hash: Mapped[str | None] = mapped_column(Text)
    erased_at: Mapped[datetime | None] = mapped_column(TS)
    # First fulfilment, or delivery when no fulfilment was reported: starts the window.
    fulfilled_at: Mapped[datetime | None] = mapped_column(TS)
    refunded_amount: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))
    # Set once refunds are full (flagged so, or adding up to the total).
    refunded_at: Mapped[datetime | None] = mapped_column(TS)
    cancelled_at: Mapped[datetime | None] = mapped_column(TS)


class Referral(Base):
    """One attributed order: pending -> confirmed, or held (review), or rejected."""

    __tablename__ = "referrals"
    __table_args__ = (
        # One conversion per order, whatever repeats the order event.
        UniqueConstraint("tenant_id", "order_id", name="uq_referrals_tenant_order"),
        Index("ix_referrals_advocate", "tenant_id", "advocate_customer_id", "placed_at"),
        Index("ix_referrals_code", "tenant_id", "code_id", "placed_at"),
        # The review queue (review_queue.py): a tenant's few held referrals.
        Index(
            "ix_referrals_held",
            "tenant_id",
            "placed_at",
            postgresql_where=text("state = 'held'"),
        ),
        Index(
            "ix_referrals_due",
            "confirm_due_at",
            postgresql_where=text("state = 'pending' AND confirm_due_at IS NOT NULL"),
        ),
    )

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(Text)
    code_id: Mapped[str] = mapped_column(Text)
    code: Mapped[str] = mapped_column(Text)
    advocate_customer_id: Mapped[str] = mapped_column(Text)
    referee_customer_id: Mapped[str] = mapped_column(Text)
    order_id: Mapped[str] = mapped_column(Text)
    order_total: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(Text)
    placed_at: Mapped[datetime] = mapped_column(TS)
    via: Mapped[str] = mapped_column(Text)  # referral_code | discount_code | api
    state: Mapped[str] = mapped_column(Text)  # pending | held | confirmed | rejected
    reason: Mapped[str | None] = mapped_column(Text)
    detail: Mapped[str | None] = mapped_column(Text)
    referee_reward_code: Mapped[str | None] = mapped_column(Text)
    attributed_at: Mapped[datetime] = mapped_column(TS)
    fulfilled_at: Mapped[datetime | None] = mapped_column(TS)
    confirm_due_at: Mapped[datetime | None] = mapped_column(TS)
    decided_at: Mapped[datetime | None] = mapped_column(TS)
    refunded_amount: Mapped[int] = mapped_column(BigInteger, server_default=text("0"))


def _between(column: str, bounds: tuple[int, int]) -> CheckConstraint:
    return CheckConstraint(f"{column} BETWEEN {bounds[0]} AND {bounds[1]}", name=f"{column}_range")


# A reward row the code would have to guess about (a percentage without its percent, an
# amount without its currency) cannot be stored: the discount request built from it
# would fail on every conversion.
REFEREE_REWARD_COMPLETE = (
    "(referee_reward_kind IS NULL AND referee_percent_off IS NULL AND referee_amount IS NULL"
    " AND referee_currency IS NULL AND referee_valid_days IS NULL)"
    " OR (referee_reward_kind = 'percentage' AND referee_percent_off IS NOT NULL"
    " AND referee_amount IS NULL AND referee_currency IS NULL)"
    " OR (referee_reward_kind = 'fixed_amount' AND referee_amount > 0"
    " AND referee_currency IS NOT NULL AND referee_percent_off IS NULL)"
)


class TenantSettings(Base):
    """A tenant's own settings; a null column means the service's default applies, so a
    tenant that never chose a value follows a change of the default."""

    __tablename__ = "tenant_settings"
    __table_args__ = (
        _between("return_window_days", RETURN_WINDOW_DAYS),
        _between("attribution_window_days", ATTRIBUTION_WINDOW_DAYS),
        _between("referee_percent_off", PERCENT_OFF),
        _between("referee_valid_days", REWARD_VALID_DAYS),
        CheckConstraint(REFEREE_REWARD_COMPLETE, name="referee_reward_complete"),
    )

    tenant_id: Mapped[str] = mapped_column(Text, primary_key=True)
    share_base_url: Mapped[str | None] = mapped_column(Text)
    return_window_days: Mapped[int | None] = mapped_column(Integer)
    attribution_window_days: Mapped[int | None] = mapped_column(Integer)
    # The referee's reward, set (or cleared) as a whole; a null kind: the default reward.
    referee_reward_kind: Mapped[str | None] = mapped_column(Text)
    referee_percent_off: Mapped[int | None] = mapped_column(Integer)
    referee_amount: Mapped[int | None] = mapped_column(BigInteger)  # minor units
    referee_currency: Mapped[str | None] = mapped_column(Text)
    referee_valid_days: Mapped[int | None] = mapped_column(Integer)
    updated_at: Mapped[datetime] = mapped_column(TS)


tables = event_tables(Base.metadata)
api_keys = api_keys_table(Base.metadata)
