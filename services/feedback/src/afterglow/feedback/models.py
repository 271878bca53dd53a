"""Tables of the ``feedback`` schema."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Index,
    SmallInteger,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column

from afterglow.events import event_tables
from afterglow.kit.auth import api_keys_table
from afterglow.kit.db import service_metadata


class Base(DeclarativeBase):
    # A class statement (not kit's declarative_base() factory) so mypy sees a real base.
    metadata = service_metadata("feedback")


tables = event_tables(Base.metadata)
api_keys = api_keys_table(Base.metadata)

TS = DateTime(timezone=True)


class TenantSetting(Base):
    """What the pages show (name, brand colour) and how reviews are moderated."""

    __tablename__ = "tenant_settings"
    tenant_id: Mapped[str] = mapped_column(Text, primary_key=True)
    name: Mapped[str | None] = mapped_column(Text)
    brand_color: Mapped[str | None] = mapped_column(Text)
    manual_moderation: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))
    updated_at: Mapped[datetime] = mapped_column(TS)


class Survey(Base):
    __tablename__ = "surveys"
    __table_args__ = (
        UniqueConstraint("tenant_id", "request_id", name="uq_surveys_tenant_request"),
        Index("ix_surveys_tenant_kind_sent", "tenant_id", "kind", "sent_at"),
    )
    id: Mapped[str] = mapped_column(Text, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(Text)
    customer_id: Mapped[str] = mapped_column(Text)
    request_id: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(Text)
    order_id: Mapped[str | None] = mapped_column(Text)
    ticket_id: Mapped[str | None] = mapped_column(Text)
    sent_at: Mapped[datetime] = mapped_column(TS)
    expires_at: Mapped[datetime] = mapped_column(TS)
    reminders_sent: Mapped[int] = mapped_column(SmallInteger, server_default=text("0"))
    first_answered_at: Mapped[datetime | None] = mapped_column(TS)
    last_answered_at: Mapped[datetime | None] = mapped_column(TS)


class SurveyReminder(Base):
    """One row per reminder request, so a re-sent reminder request is not re-sent."""

    __tablename__ = "survey_reminders"
    tenant_id: Mapped[str] = mapped_column(Text, primary_key=True)
    request_id: Mapped[str] = mapped_column(Text, primary_key=True)
    survey_id: Mapped[str] = mapped_column(Text)
    requested_at: Mapped[datetime] = mapped_column(TS)


class Response(Base):
    """Every answer. A changed answer supersedes the earlier row (kept for history);
    metrics read only rows with ``superseded = false``: the last answer per survey."""

    __tablename__ = "responses"
    __table_args__ = (
        Index(
            "ix_responses_metrics",
            "tenant_id",
            "kind",
            "responded_at",
            postgresql_include=["score", "order_id"],
            postgresql_where=text("NOT superseded"),
        ),
        Index("ix_responses_survey", "survey_id"),
        Index(
            "uq_responses_external",
            "tenant_id",
            "external_id",
            unique=True,
            postgresql_where=text("external_id IS NOT NULL"),
        ),
    )
    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(Text)
    survey_id: Mapped[str | None] = mapped_column(Text)
    customer_id: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(Text)
    score: Mapped[int] = mapped_column(SmallInteger)
    comment: Mapped[str | None] = mapped_column(Text)
    order_id: Mapped[str | None] = mapped_column(Text)
    source: Mapped[str] = mapped_column(Text)  # page | api
    external_id: Mapped[str | None] = mapped_column(Text)
    responded_at: Mapped[datetime] = mapped_column(TS)
    superseded: Mapped[bool] = mapped_column(Boolean, server_default=text("false"))


class Order(Base):
    """Orders seen on order.placed: proof of purchase for verified reviews."""

    __tablename__ = "orders"
    tenant_id: Mapped[str] = mapped_column(Text, primary_key=True)
    order_id: Mapped[str] = mapped_column(Text, primary_key=True)
    customer_id: Mapped[str] = mapped_column(Text)
    placed_at: Mapped[datetime] = mapped_column(TS)


class OrderItem(Base):
    __tablename__ = "order_items"
    __table_args__ = (Index("ix_order_items_sku", "tenant_id", "sku", "order_id"),)
    tenant_id: Mapped[str] = mapped_column(Text, primary_key=True)
    order_id: Mapped[str] = mapped_column(Text, primary_key=True)
    line_no: Mapped[int] = mapped_column(SmallInteger, primary_key=True)
    sku: Mapped[str | None] = mapped_column(Text)
    product_id: Mapped[str | None] = mapped_column(Text)
    title: Mapped[str | None] = mapped_column(Text)


class ReferralLink(Base):
    """A promoter's referral link (from referral.code_issued) for the thank-you page."""

    __tablename__ = "referral_links"
    tenant_id: Mapped[str] = mapped_column(Text, primary_key=True)
    customer_id: Mapped[str] = mapped_column(Text, primary_key=True)
    code: Mapped[str] = mapped_column(Text)
    share_url: Mapped[str] = mapped_column(Text)
    issued_at: Mapped[datetime] = mapped_column(TS)


class Review(Base):
    __tablename__ = "reviews"
    __table_args__ = (
        Index("ix_reviews_product", "tenant_id", "sku", "status"),
        Index("ix_reviews_status", "tenant_id", "status", "created_at"),
        Index(
            "uq_reviews_dedupe",
            "tenant_id",
            "dedupe_key",
            unique=True,
            postgresql_where=text("dedupe_key IS NOT NULL"),
        ),
    )
    id: Mapped[str] = mapped_column(Text, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(Text)
    customer_id: Mapped[str] = mapped_column(Text)
    order_id: Mapped[str | None] = mapped_column(Text)
    sku: Mapped[str | None] = mapped_column(Text)
    product_id: Mapped[str | None] = mapped_column(Text)
    rating: Mapped[int] = mapped_column(SmallInteger)
    title: Mapped[str | None] = mapped_column(Text)
    body: Mapped[str | None] = mapped_column(Text)
    status: Mapped[str] = mapped_column(Text)
    moderation_reasons: Mapped[str | None] = mapped_column(Text)
    verified: Mapped[bool] = mapped_column(Boolean)
    source: Mapped[str] = mapped_column(Text)  # page | api
    dedupe_key: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(TS)
    moderated_at: Mapped[datetime | None] = mapped_column(TS)
    published_at: Mapped[datetime | None] = mapped_column(TS)


class SupportTicket(Base):
    """A helpdesk ticket as its events told it (afterglow.feedback.support): the times
    its first-response and resolution metrics come from, and its CSAT survey.

    ``csat_status``: None until the ticket is solved; ``due`` at ``csat_due_at``
    (24 h after the solve, Zendesk's default); then ``sent`` or ``skipped`` with
    ``csat_reason``. Once per ticket: a reopened and solved again ticket asks nothing
    more."""

    __tablename__ = "support_tickets"
    __table_args__ = (
        Index(
            "ix_support_tickets_csat_due",
            "csat_due_at",
            postgresql_where=text("csat_status = 'due'"),
        ),
        Index("ix_support_tickets_opened", "tenant_id", "opened_at"),
    )
    tenant_id: Mapped[str] = mapped_column(Text, primary_key=True)
    ticket_id: Mapped[str] = mapped_column(Text, primary_key=True)
    customer_id: Mapped[str] = mapped_column(Text)
    helpdesk: Mapped[str | None] = mapped_column(Text)
    channel: Mapped[str | None] = mapped_column(Text)
    opened_at: Mapped[datetime | None] = mapped_column(TS)
    first_response_at: Mapped[datetime | None] = mapped_column(TS)
    resolved_at: Mapped[datetime | None] = mapped_column(TS)
    csat_status: Mapped[str | None] = mapped_column(Text)
    csat_due_at: Mapped[datetime | None] = mapped_column(TS)
    csat_reason: Mapped[str | None] = mapped_column(Text)
