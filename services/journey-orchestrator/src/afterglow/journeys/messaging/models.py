"""Messaging tables, on the journeys Base. Messaging keeps its own contact book
(``message_contacts``) fed by its own consumer, so it never reads the engine's tables."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Float,
    Index,
    Integer,
    LargeBinary,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column

from afterglow.journeys.models import Base
from afterglow.kit.secretbox import SealedText

TZ = DateTime(timezone=True)


class MessageContact(Base):
    """What messaging needs to reach one customer, and whether it may."""

    __tablename__ = "message_contacts"

    tenant_id: Mapped[str] = mapped_column(Text, primary_key=True)
    customer_id: Mapped[str] = mapped_column(Text, primary_key=True)
    email: Mapped[str | None] = mapped_column(Text)
    phone: Mapped[str | None] = mapped_column(Text)
    first_name: Mapped[str | None] = mapped_column(Text)
    locale: Mapped[str | None] = mapped_column(Text)
    timezone: Mapped[str | None] = mapped_column(Text)
    # From the platform's accepts_marketing; None = never said.
    accepts_marketing: Mapped[bool | None] = mapped_column(Boolean)
    email_unsubscribed_at: Mapped[datetime | None] = mapped_column(TZ)
    sms_unsubscribed_at: Mapped[datetime | None] = mapped_column(TZ)
    erased_at: Mapped[datetime | None] = mapped_column(TZ)
    updated_at: Mapped[datetime] = mapped_column(TZ)
    # What templates show as the customer's history (customer.orders_count, ...).
    orders_count: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # In the currency of their first order; orders in another currency are not added.
    total_spent_minor: Mapped[int] = mapped_column(BigInteger, default=0, server_default="0")
    currency: Mapped[str | None] = mapped_column(Text)


class MessageOrder(Base):
    """The order a message is about, as templates show it (``order.number``, items...).
    Kept from order.placed by messaging's own consumer, like the contact book."""

    __tablename__ = "message_orders"
    __table_args__ = (Index("ix_message_orders_customer", "tenant_id", "customer_id"),)

    tenant_id: Mapped[str] = mapped_column(Text, primary_key=True)
    order_id: Mapped[str] = mapped_column(Text, primary_key=True)
    customer_id: Mapped[str] = mapped_column(Text)
    order_number: Mapped[str | None] = mapped_column(Text)
    total_minor: Mapped[int] = mapped_column(BigInteger)
    currency: Mapped[str] = mapped_column(Text)
    placed_at: Mapped[datetime] = mapped_column(TZ)
    items: Mapped[list[dict[str, Any]]] = mapped_column(JSONB)


class MessageTemplate(Base):
    """A tenant's override of a default template, per template name and channel."""

    __tablename__ = "message_templates"

    tenant_id: Mapped[str] = mapped_column(Text, primary_key=True)
    name: Mapped[str] = mapped_column(Text, primary_key=True)
    channel: Mapped[str] = mapped_column(Text, primary_key=True)
    subject: Mapped[str | None] = mapped_column(Text)
    html: Mapped[str | None] = mapped_column(Text)
    text: Mapped[str] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(TZ)


class MessagingTenantSettings(Base):
    """Where a tenant's messages go and the policy they follow."""

    __tablename__ = "messaging_settings"

    tenant_id: Mapped[str] = mapped_column(Text, primary_key=True)
    endpoint_url: Mapped[str | None] = mapped_column(Text)
    # whsec_<base64>: needed whole to sign, so sealed at rest; never returned by the API.
    endpoint_secret: Mapped[str | None] = mapped_column(
        SealedText("journeys.messaging_settings.endpoint_secret")
    )
    quiet_hours_start: Mapped[str] = mapped_column(Text, default="21:00")
    quiet_hours_end: Mapped[str] = mapped_column(Text, default="08:00")
    frequency_cap: Mapped[int] = mapped_column(Integer, default=3)
    frequency_window_days: Mapped[int] = mapped_column(Integer, default=7)
    default_channel: Mapped[str] = mapped_column(Text, default="email")
    default_timezone: Mapped[str] = mapped_column(Text, default="UTC")
    # {{ shop_name }} in every template unless a request says otherwise.
    shop_name: Mapped[str | None] = mapped_column(Text)
    # Provider event webhooks (bounces, complaints): SendGrid signs with ECDSA, so only its
    # public key is kept (base64 DER, as SendGrid shows it); Postmark sends basic auth
    # ("user:password"), which must be compared whole, so it is sealed.
    sendgrid_public_key: Mapped[str | None] = mapped_column(Text)
    postmark_auth: Mapped[str | None] = mapped_column(
        SealedText("journeys.messaging_settings.postmark_auth")
    )
    # Amazon SES through SNS: AWS signs every message, so what is ours to check is that
    # it comes from the tenant's own topic.
    ses_topic_arn: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime] = mapped_column(TZ)


class MessagingChannel(Base):
    """How one tenant's messages of one channel kind (email, sms) leave: a provider
    (``webhook``: the signed endpoint above; ``smtp``; ``twilio``) and its settings. No
    row: the signed webhook. Credentials are sealed and read at every send, so a rotated
    password takes effect on the next message without a restart."""

    __tablename__ = "messaging_channels"

    tenant_id: Mapped[str] = mapped_column(Text, primary_key=True)
    channel: Mapped[str] = mapped_column(Text, primary_key=True)  # email | sms
    provider: Mapped[str] = mapped_column(Text)  # webhook | smtp | twilio
    # Everything but credentials: host, port, security, from address, account SID ...
    config: Mapped[dict[str, Any]] = mapped_column(JSONB)
    # SMTP password or Twilio auth token.
    secret: Mapped[str | None] = mapped_column(SealedText("journeys.messaging_channels.secret"))
    # PEM private key for DKIM signing (email only).
    dkim_key: Mapped[str | None] = mapped_column(SealedText("journeys.messaging_channels.dkim_key"))
    # Sending rate limit (messages per second) held across replicas; None: unlimited.
    rate_per_s: Mapped[float | None] = mapped_column(Float)
    # The token bucket behind rate_per_s, updated in the claim transaction.
    tokens: Mapped[float] = mapped_column(Float, default=0.0, server_default="0")
    tokens_at: Mapped[datetime | None] = mapped_column(TZ)
    updated_at: Mapped[datetime] = mapped_column(TZ)


class MessageSuppression(Base):
    """An address that must not be sent to: a hard bounce, a spam complaint, or an SMS
    STOP. Keyed by the address (the SHA-256 of the lower-case email or the E.164 phone),
    not the customer, because providers report addresses and one address may serve two
    customer records; a hash, because the list outlives an erasure. A hard bounce stops
    every message; a complaint or STOP stops marketing."""

    __tablename__ = "message_suppressions"

    tenant_id: Mapped[str] = mapped_column(Text, primary_key=True)
    channel: Mapped[str] = mapped_column(Text, primary_key=True)
    address_hash: Mapped[str] = mapped_column(Text, primary_key=True)
    reason: Mapped[str] = mapped_column(Text)  # hard_bounce | complaint | sms_stop
    source: Mapped[str] = mapped_column(Text)  # smtp | sendgrid | postmark | twilio
    # The provider's words (an SMTP reply); wiped when the customer is erased.
    detail: Mapped[str | None] = mapped_column(Text)
    created_at: Mapped[datetime] = mapped_column(TZ)


class Message(Base):
    """One requested message and where it stands: the message log."""

    __tablename__ = "messages"
    __table_args__ = (
        # Duplicate requests (a retried producer, a replayed journey step) send once.
        UniqueConstraint("tenant_id", "request_id", name="uq_messages_tenant_request"),
        Index(
            "ix_messages_due", "next_attempt_at", postgresql_where="status IN ('queued','deferred')"
        ),
        Index("ix_messages_customer", "tenant_id", "customer_id", "created_at"),
    )

    id: Mapped[str] = mapped_column(Text, primary_key=True)
    tenant_id: Mapped[str] = mapped_column(Text)
    customer_id: Mapped[str] = mapped_column(Text)
    request_id: Mapped[str] = mapped_column(Text)
    kind: Mapped[str] = mapped_column(Text)
    template: Mapped[str] = mapped_column(Text)
    category: Mapped[str] = mapped_column(Text)
    priority: Mapped[str] = mapped_column(Text)
    channel: Mapped[str | None] = mapped_column(Text)
    variables: Mapped[dict[str, Any]] = mapped_column(JSONB)
    order_id: Mapped[str | None] = mapped_column(Text)
    not_before: Mapped[datetime | None] = mapped_column(TZ)
    status: Mapped[str] = mapped_column(Text)  # queued deferred sent failed suppressed
    reason: Mapped[str | None] = mapped_column(Text)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    next_attempt_at: Mapped[datetime] = mapped_column(TZ)
    # When the frequency cap started counting it (claimed for sending).
    counted_at: Mapped[datetime | None] = mapped_column(TZ)
    last_attempt_at: Mapped[datetime | None] = mapped_column(TZ)
    sent_at: Mapped[datetime | None] = mapped_column(TZ)
    created_at: Mapped[datetime] = mapped_column(TZ)
    updated_at: Mapped[datetime] = mapped_column(TZ)
    # The original message.requested record, republished as is to the DLQ.
    request_key: Mapped[bytes] = mapped_column(LargeBinary)
    request_value: Mapped[bytes] = mapped_column(LargeBinary)
    request_headers: Mapped[list[list[str]]] = mapped_column(JSONB)


class MessageDecision(Base):
    """Every decision about a message (queued, deferred, suppressed, attempt, sent,
    failed) with its reason: the history behind a message's current status."""

    __tablename__ = "message_decisions"
    __table_args__ = (Index("ix_message_decisions_message", "tenant_id", "message_id"),)

    id: Mapped[int] = mapped_column(BigInteger, primary_key=True, autoincrement=True)
    tenant_id: Mapped[str] = mapped_column(Text)
    message_id: Mapped[str] = mapped_column(Text)
    at: Mapped[datetime] = mapped_column(TZ)
    decision: Mapped[str] = mapped_column(Text)
    reason: Mapped[str | None] = mapped_column(Text)
