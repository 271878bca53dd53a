"""What the messaging routes answer: one response model per JSON answer, so that the
OpenAPI document describes every field (a client generated from it gets types, not a
dict of anything) and a route cannot leak a column it did not mean to (a secret is only
ever ``secret_set``)."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from afterglow.journeys.messaging.models import (
    Message,
    MessageDecision,
    MessagingChannel,
    MessagingTenantSettings,
)
from afterglow.journeys.messaging.templates import Template

# --- templates ----------------------------------------------------------------------


class TemplateOut(BaseModel):
    kind: str = Field(description="The template's name: a message kind, or a custom name")
    channel: Literal["email", "sms"]
    subject: str | None = Field(description="Email only (Jinja2 source)")
    html: str | None = Field(description="Email only (Jinja2 source)")
    text: str = Field(description="The plain-text part (Jinja2 source)")
    source: Literal["tenant", "default"] = Field(
        description="tenant: saved by the tenant; default: the built-in one in effect"
    )
    updated_at: datetime | None = Field(description="When the tenant saved it; null: a default")

    @classmethod
    def of(
        cls,
        kind: str,
        template: Template,
        source: Literal["tenant", "default"],
        updated_at: datetime | None = None,
    ) -> TemplateOut:
        return cls(
            kind=kind,
            channel=template.channel,
            subject=template.subject,
            html=template.html,
            text=template.text,
            source=source,
            updated_at=updated_at,
        )


class TemplatesOut(BaseModel):
    templates: list[TemplateOut] = Field(
        description="Every kind's effective template per channel, then the tenant's custom ones"
    )


class TemplateDeletedOut(BaseModel):
    kind: str
    channel: Literal["email", "sms"]
    deleted: bool = Field(description="Whether the tenant had a template there (now removed)")


class PreviewOut(BaseModel):
    kind: str
    channel: Literal["email", "sms"]
    subject: str | None = Field(description="Rendered; email only")
    html: str | None = Field(description="Rendered; email only")
    text: str = Field(description="Rendered plain text")


# --- settings -----------------------------------------------------------------------


class EndpointOut(BaseModel):
    url: str = Field(description="Where messages are POSTed")
    secret_set: bool = Field(description="Whether a signing secret is stored (never shown)")


class SettingsOut(BaseModel):
    endpoint: EndpointOut | None = Field(description="null: no endpoint set")
    quiet_hours_start: str = Field(description="HH:MM in the recipient's time zone")
    quiet_hours_end: str = Field(description="HH:MM in the recipient's time zone")
    frequency_cap: int = Field(description="Marketing messages per window at most")
    frequency_window_days: int
    default_channel: Literal["email", "sms"]
    default_timezone: str = Field(description="IANA zone for recipients without one")
    shop_name: str | None = Field(description="{{ shop_name }} unless a request gives one")

    @classmethod
    def of(cls, row: MessagingTenantSettings) -> SettingsOut:
        return cls(
            endpoint=EndpointOut(url=row.endpoint_url, secret_set=bool(row.endpoint_secret))
            if row.endpoint_url
            else None,
            quiet_hours_start=row.quiet_hours_start,
            quiet_hours_end=row.quiet_hours_end,
            frequency_cap=row.frequency_cap,
            frequency_window_days=row.frequency_window_days,
            default_channel=row.default_channel,
            default_timezone=row.default_timezone,
            shop_name=row.shop_name,
        )


# --- the message log ----------------------------------------------------------------


class MessageAcceptedOut(BaseModel):
    request_id: str
    customer_id: str
    status: Literal["accepted"] = Field(
        description="Queued as message.requested; GET the customer's messages to follow it"
    )


class DecisionOut(BaseModel):
    at: datetime
    decision: str = Field(description="queued, deferred, suppressed, attempt, sent, failed...")
    reason: str | None

    @classmethod
    def of(cls, d: MessageDecision) -> DecisionOut:
        return cls(at=d.at, decision=d.decision, reason=d.reason)


class LoggedMessageOut(BaseModel):
    id: str
    request_id: str = Field(description="The caller's de-duplication key")
    kind: str
    category: str = Field(description="transactional or marketing")
    priority: str = Field(description="high, normal or low")
    channel: str | None = Field(description="null until the policy picked one")
    status: str = Field(description="queued, deferred, sent, failed or suppressed")
    reason: str | None = Field(description="Why it stands where it does")
    attempts: int
    created_at: datetime
    next_attempt_at: datetime | None = Field(
        description="When it is judged again; only while queued or deferred"
    )
    last_attempt_at: datetime | None
    sent_at: datetime | None
    updated_at: datetime
    decisions: list[DecisionOut] = Field(description="Every decision about it, oldest first")

    @classmethod
    def of(cls, m: Message, decisions: list[MessageDecision]) -> LoggedMessageOut:
        return cls(
            id=m.id,
            request_id=m.request_id,
            kind=m.kind,
            category=m.category,
            priority=m.priority,
            channel=m.channel,
            status=m.status,
            reason=m.reason,
            attempts=m.attempts,
            created_at=m.created_at,
            next_attempt_at=m.next_attempt_at if m.status in ("queued", "deferred") else None,
            last_attempt_at=m.last_attempt_at,
            sent_at=m.sent_at,
            updated_at=m.updated_at,
            decisions=[DecisionOut.of(d) for d in decisions],
        )


class CustomerMessagesOut(BaseModel):
    customer_id: str
    messages: list[LoggedMessageOut] = Field(description="Newest first")


class FailedMessageOut(BaseModel):
    id: str
    customer_id: str
    request_id: str = Field(description="The caller's de-duplication key")
    kind: str
    category: str = Field(description="transactional or marketing")
    channel: str | None
    status: str = Field(description="failed; queued once redelivered")
    reason: str | None = Field(description="Why it failed (or, redelivered, by whom)")
    attempts: int
    created_at: datetime
    updated_at: datetime

    @classmethod
    def of(cls, m: Message) -> FailedMessageOut:
        return cls(
            id=m.id,
            customer_id=m.customer_id,
            request_id=m.request_id,
            kind=m.kind,
            category=m.category,
            channel=m.channel,
            status=m.status,
            reason=m.reason,
            attempts=m.attempts,
            created_at=m.created_at,
            updated_at=m.updated_at,
        )


class FailedMessagesOut(BaseModel):
    messages: list[FailedMessageOut] = Field(description="Newest first")


# --- channels and provider events ---------------------------------------------------


class ChannelOut(BaseModel):
    """A channel kind the tenant configured."""

    channel: Literal["email", "sms"]
    provider: Literal["webhook", "smtp", "twilio"]
    config: dict[str, Any] = Field(
        description="The provider's settings without credentials (host, port, from_email, "
        "account_sid...); their keys depend on the provider"
    )
    secret_set: bool = Field(description="Whether a password or auth token is stored")
    dkim_key_set: bool = Field(description="Whether a DKIM private key is stored")
    rate_per_s: float | None = Field(description="Messages per second at most; null: no limit")
    updated_at: datetime

    @classmethod
    def of(cls, row: MessagingChannel) -> ChannelOut:
        return cls(
            channel=row.channel,
            provider=row.provider,
            config=row.config,
            secret_set=row.secret is not None,
            dkim_key_set=row.dkim_key is not None,
            rate_per_s=row.rate_per_s,
            updated_at=row.updated_at,
        )


class DefaultChannelOut(BaseModel):
    """A channel kind the tenant never configured (or reset): the signed webhook."""

    # Forbidden extras: a configured channel's answer never reads as this one.
    model_config = ConfigDict(extra="forbid")

    channel: Literal["email", "sms"]
    provider: Literal["webhook"]
    config: dict[str, Any] = Field(description="Always empty")
    secret_set: bool = Field(description="Always false")

    @classmethod
    def of(cls, channel: str) -> DefaultChannelOut:
        return cls(channel=channel, provider="webhook", config={}, secret_set=False)


class ChannelsOut(BaseModel):
    channels: list[ChannelOut | DefaultChannelOut] = Field(description="email, then sms")


class ProviderEventsOut(BaseModel):
    sendgrid_public_key: str | None = Field(description="SendGrid's verification key")
    postmark_auth_set: bool = Field(description="Whether Postmark's basic auth is stored")
    ses_topic_arn: str | None = Field(description="The SNS topic of the tenant's SES events")


class SuppressedOut(BaseModel):
    suppressed: int = Field(description="Addresses suppressed (or already suppressed)")
    hard_bounces: int
    complaints: int


class ConfirmedOut(BaseModel):
    confirmed: bool = Field(
        description="An SNS subscription confirmation: whether it was confirmed with AWS"
    )
