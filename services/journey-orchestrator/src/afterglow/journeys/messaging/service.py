"""Messaging's use cases behind its routes: what a request changes, in the route's
transaction (they flush, never commit). The routes parse and render; the SQL is in
:mod:`store`."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from prometheus_client import Counter, Gauge

from afterglow.events import CloudEvent, Outbox, derived_event_id
from afterglow.events.catalog import MessageRequested
from afterglow.journeys.messaging import store
from afterglow.journeys.messaging.channels import provider_events as pe
from afterglow.journeys.messaging.models import (
    Message,
    MessageDecision,
    MessagingChannel,
    MessagingTenantSettings,
)
from afterglow.journeys.messaging.templates import (
    SAMPLE_CUSTOMER,
    SAMPLE_VARIABLES,
    Rendered,
    Template,
    TemplateRenderError,
    all_kinds,
    context,
    default_template,
    render,
    validate,
)
from afterglow.kit.db import Session
from afterglow.kit.errors import Conflict, NotFound, Unprocessable

# The window of the complaint rate (mailbox providers judge about a month).
COMPLAINT_WINDOW = timedelta(days=30)

COMPLAINTS = Counter(
    "afterglow_messaging_complaints_total", "Spam complaints reported by providers", ["tenant"]
)
BOUNCES = Counter(
    "afterglow_messaging_hard_bounces_total", "Hard bounces reported by providers", ["tenant"]
)
COMPLAINT_RATE = Gauge(
    "afterglow_messaging_complaint_rate",
    "Complaints per email sent over the last 30 days (Gmail wants it under 0.003)",
    ["tenant"],
)


# --- templates ----------------------------------------------------------------------


def render_error(name: str, channel: str, exc: TemplateRenderError) -> Unprocessable:
    return Unprocessable(
        f"template {name}/{channel} does not render: {exc}", field=exc.part, code="template_error"
    )


async def save_template(
    session: Session, tenant_id: str, name: str, template: Template, at: datetime
) -> None:
    """Store the template once it renders against what its kind is sure to carry (a
    template that cannot render is refused now, not at the first send)."""
    try:
        validate(template, name)
    except TemplateRenderError as exc:
        raise render_error(name, template.channel, exc) from exc
    await store.save_template(session, tenant_id, name, template, at)


@dataclass(frozen=True)
class EffectiveTemplate:
    name: str
    template: Template
    source: str  # tenant | default
    updated_at: datetime | None


async def effective_templates(session: Session, tenant_id: str) -> list[EffectiveTemplate]:
    """Per kind (then the tenant's custom names, sorted) and channel: the tenant's
    template, else the default one, if any."""
    own = {(r.name, r.channel): r for r in await store.tenant_templates(session, tenant_id)}
    out = []
    for kind in [k for k in all_kinds() if k != "custom"] + sorted(
        {n for n, _ in own} - set(all_kinds())
    ):
        for channel in ("email", "sms"):
            r = own.get((kind, channel))
            if r is not None:
                t = Template(channel=channel, text=r.text, subject=r.subject, html=r.html)
                out.append(EffectiveTemplate(kind, t, "tenant", r.updated_at))
            elif (d := default_template(kind, channel)) is not None:
                out.append(EffectiveTemplate(kind, d, "default", None))
    return out


async def preview_template(
    session: Session,
    tenant_id: str,
    name: str,
    channel: str,
    draft: Template | None,
    *,
    customer: dict[str, Any],
    variables: dict[str, Any],
    order: dict[str, Any] | None,
) -> Rendered:
    """Render the draft, else the saved (or default) template, with sample data
    overridden by the caller's."""
    template = draft or await store.find_template(session, tenant_id, name, channel)
    if template is None:
        raise NotFound(f"no template {name}/{channel}", field="kind")
    settings = await store.tenant_settings(session, tenant_id)
    ctx = context(
        {**SAMPLE_CUSTOMER, **customer},
        {**SAMPLE_VARIABLES, **variables},
        shop_name=settings.shop_name if settings else None,
        unsubscribe_url="https://example.com/u/preview",
        kind=name,
        order=order,
    )
    try:
        return render(template, ctx)
    except TemplateRenderError as exc:
        raise render_error(name, channel, exc) from exc


# --- settings -----------------------------------------------------------------------


async def save_endpoint(
    session: Session, tenant_id: str, url: str, secret: str, at: datetime
) -> MessagingTenantSettings:
    row = await store.settings_for_update(session, tenant_id, at)
    row.endpoint_url, row.endpoint_secret = url, secret
    row.updated_at = at
    return row


async def save_policy(
    session: Session, tenant_id: str, policy: dict[str, Any], at: datetime
) -> MessagingTenantSettings:
    """Quiet hours, cap, defaults: ``policy`` holds every one of them (a PUT)."""
    row = await store.settings_for_update(session, tenant_id, at)
    for key, value in policy.items():
        setattr(row, key, value)
    row.updated_at = at
    return row


async def save_provider_events(
    session: Session,
    tenant_id: str,
    *,
    sendgrid_public_key: str | None,
    postmark_auth: str | None,
    ses_topic_arn: str | None,
    at: datetime,
) -> MessagingTenantSettings:
    row = await store.settings_for_update(session, tenant_id, at)
    row.sendgrid_public_key = sendgrid_public_key
    row.postmark_auth = postmark_auth
    row.ses_topic_arn = ses_topic_arn
    row.updated_at = at
    return row


# --- the message log ----------------------------------------------------------------


async def request_message(
    session: Session, outbox: Outbox, tenant_id: str, customer_id: str, data: MessageRequested
) -> None:
    """Send the request out as ``message.requested`` through the outbox: it comes back
    in through the same consumer as every service's requests, so it gets the same
    de-duplication (the event id derives from the request id) and policy."""
    event = CloudEvent.new(
        data,
        tenant_id=tenant_id,
        subject=customer_id,
        source=store.SOURCE,
        id=derived_event_id("message-api", tenant_id, data.request_id),
    )
    await outbox.add(session, event)


async def customer_log(
    session: Session, tenant_id: str, customer_id: str, limit: int
) -> list[tuple[Message, list[MessageDecision]]]:
    """The customer's newest messages, each with its decisions (two queries a page)."""
    messages = await store.customer_messages(session, tenant_id, customer_id, limit)
    decisions = await store.decisions_of(session, tenant_id, [m.id for m in messages])
    return [(m, decisions[m.id]) for m in messages]


async def redeliver(
    session: Session, tenant_id: str, message_id: str, by_key: str, at: datetime
) -> Message:
    """Queue a failed message again, attempts reset: the dispatcher judges it anew."""
    m = await store.message_for_update(session, tenant_id, message_id)
    if m is None:
        raise NotFound("no such message", field="message_id")
    if m.status != "failed":
        # A second click, or a message already back in the queue: one delivery only.
        raise Conflict(f"only a failed message is redelivered; this one is {m.status}")
    reason = f"redelivered by key {by_key} after: {m.reason}"
    await store.record(session, m.tenant_id, m.id, at, "redeliver", reason)
    m.status, m.reason, m.attempts = "queued", reason, 0
    m.next_attempt_at = m.updated_at = at
    return m


# --- channels -----------------------------------------------------------------------


@dataclass(frozen=True)
class Credential:
    """A credential a channel needs: the one this request gives, else the stored one
    (kept when an update leaves it out, for the same provider only); neither is the
    422 ``message`` on ``field``."""

    given: str | None
    field: str
    message: str


async def save_channel(
    session: Session,
    tenant_id: str,
    channel: str,
    *,
    provider: str,
    config: dict[str, Any],
    secret: Credential | None,
    dkim_key: Credential | None,
    rate_per_s: float | None,
    at: datetime,
) -> MessagingChannel:
    row = await store.tenant_channel(session, tenant_id, channel, for_update=True)
    same = row is not None and row.provider == provider

    def resolve(credential: Credential | None, stored: str | None) -> str | None:
        if credential is None:
            return None
        value = credential.given or (stored if same else None)
        if value is None:
            raise Unprocessable(credential.message, field=credential.field)
        return value

    new_secret = resolve(secret, row.secret if row else None)
    new_dkim_key = resolve(dkim_key, row.dkim_key if row else None)
    if row is None:
        row = store.add_channel(session, tenant_id, channel)
    row.provider, row.config, row.secret, row.dkim_key = provider, config, new_secret, new_dkim_key
    if row.rate_per_s != rate_per_s:
        row.tokens, row.tokens_at = 0.0, None  # a new rate starts with a full bucket
    row.rate_per_s = rate_per_s
    row.updated_at = at
    await session.flush()
    return row


# --- what providers report ----------------------------------------------------------


@dataclass(frozen=True)
class SuppressionReport:
    suppressed: int
    hard_bounces: int
    complaints: int


async def apply_provider_events(
    session: Session,
    tenant_id: str,
    events: list[pe.AddressEvent],
    source: str,
    at: datetime,
) -> SuppressionReport:
    """Suppress the reported addresses (one statement) and count what was reported."""
    count = await store.suppress(
        session, tenant_id, "email", [(e.address, e.reason, e.detail) for e in events], source, at
    )
    complaints = sum(e.reason == "complaint" for e in events)
    bounces = sum(e.reason == "hard_bounce" for e in events)
    if complaints:
        COMPLAINTS.labels(tenant_id).inc(complaints)
    if bounces:
        BOUNCES.labels(tenant_id).inc(bounces)
    if complaints:
        reported, sent = await store.complaint_rate(session, tenant_id, at - COMPLAINT_WINDOW)
        COMPLAINT_RATE.labels(tenant_id).set(reported / sent if sent else float(reported > 0))
    return SuppressionReport(count, bounces, complaints)


async def sms_stop(
    session: Session, outbox: Outbox, tenant_id: str, sender: str, at: datetime
) -> None:
    """An SMS STOP: the number is suppressed for marketing, and its customers are
    unsubscribed from SMS as by a link, and the rest of the platform hears it
    (customer.unsubscribed, channel sms): a journey does not keep planning texts to
    someone who said STOP."""
    await store.suppress(session, tenant_id, "sms", [(sender, "sms_stop", "STOP")], "twilio", at)
    for customer_id in await store.customers_with_phone(session, tenant_id, sender):
        await store.unsubscribe(
            session, outbox, tenant_id=tenant_id, customer_id=customer_id,
            channel="sms", at=at, emit=True,
        )  # fmt: skip


async def sms_start(session: Session, tenant_id: str, sender: str, at: datetime) -> None:
    """An SMS START lifts the number's STOP (never a hard bounce) and resubscribes its
    customers to SMS."""
    await store.unsuppress(session, tenant_id, "sms", sender, "sms_stop")
    await store.resubscribe_sms(session, tenant_id, sender, at)


async def shop_name(session: Session, tenant_id: str) -> str | None:
    settings = await store.tenant_settings(session, tenant_id)
    return settings.shop_name if settings else None
