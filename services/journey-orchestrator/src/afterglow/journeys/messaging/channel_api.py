"""Routes for channels and what providers send back:

* ``PUT/GET/DELETE /v1/messaging/channels/{channel}``: how a channel kind leaves (the
  signed webhook, SMTP for email, Twilio for SMS); credentials are sealed and never
  returned (``password_set``), and may be left out of an update to keep them.
* ``PUT /v1/messaging/provider-events``: the keys of the bounce and complaint webhooks.
* ``POST /v1/messaging/events/sendgrid/{tenant}`` and ``/events/postmark/{tenant}``: hard
  bounces and complaints suppress the address.
* ``POST /v1/messaging/inbound/twilio/{tenant}``: inbound SMS; STOP suppresses the
  number for marketing, START lifts it, HELP answers with the shop's name.

The tenant in a provider URL only says whose key to check: a request is accepted only
when it verifies with that tenant's key (unknown tenant and bad signature are the same
401, so the routes do not tell which tenants exist). A signed webhook is never answered
5xx: a body we cannot read is a 400, and a repeated delivery changes nothing.
"""

from __future__ import annotations

import html
import ssl
from datetime import timedelta
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl

from cryptography.hazmat.primitives.serialization import load_pem_private_key
from fastapi import Depends, Request
from fastapi.responses import Response
from prometheus_client import Counter, Gauge
from pydantic import BaseModel, Field, field_validator
from sqlalchemy import select

from afterglow.journeys.messaging import store
from afterglow.journeys.messaging.channels import provider_events as pe
from afterglow.journeys.messaging.channels.sms_text import e164
from afterglow.journeys.messaging.channels.twilio import DEFAULT_API
from afterglow.journeys.messaging.models import MessagingChannel, MessagingTenantSettings
from afterglow.journeys.messaging.settings import messaging_settings
from afterglow.kit.app import runtime_of
from afterglow.kit.auth import Principal, require_scope
from afterglow.kit.db import Session
from afterglow.kit.errors import PayloadTooLarge, Unauthorized, Unprocessable
from afterglow.kit.jsonbody import JsonBodyError, loads_bounded
from afterglow.kit.outbound import ForbiddenDestination, check_destination
from afterglow.kit.routing import service_router
from afterglow.kit.types import Id

router = service_router(tags=["messaging"])
Write = Depends(require_scope("messages:write"))
Read = Depends(require_scope("messages:read"))
ChannelKind = Literal["email", "sms"]
MAX_EVENT_BODY = 1_000_000
EMAIL = r"^[^@\s<>\"]+@[^@\s<>\"]+\.[^@\s<>\"]+$"
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


class WebhookChannelIn(BaseModel):
    provider: Literal["webhook"]
    rate_per_s: float | None = Field(default=None, gt=0, le=10_000)


class DkimIn(BaseModel):
    domain: str = Field(min_length=3, max_length=253, pattern=r"^[A-Za-z0-9.-]+\.[A-Za-z]{2,}$")
    selector: str = Field(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9._-]+$")
    # PEM (RSA or Ed25519); may be left out of an update to keep the stored one.
    private_key: str | None = Field(default=None, max_length=20_000)

    @field_validator("private_key")
    @classmethod
    def _pem(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            load_pem_private_key(value.encode(), password=None)
        except (ValueError, TypeError) as exc:
            raise ValueError("not an unencrypted PEM private key") from exc
        return value


class SmtpChannelIn(BaseModel):
    provider: Literal["smtp"]
    host: str = Field(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9.:\[\]-]+$")
    port: int = Field(default=587, ge=1, le=65535)
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: str | None = Field(default=None, max_length=500)
    password: str | None = Field(default=None, max_length=2000)
    from_email: str = Field(max_length=254, pattern=EMAIL)
    from_name: str | None = Field(default=None, max_length=200)
    reply_to: str | None = Field(default=None, max_length=254, pattern=EMAIL)
    envelope_from: str | None = Field(default=None, max_length=254, pattern=EMAIL)
    dkim: DkimIn | None = None
    # A private CA the merchant's server certificate comes from (PEM); public data.
    tls_ca_pem: str | None = Field(default=None, max_length=20_000)
    rate_per_s: float | None = Field(default=None, gt=0, le=10_000)

    @field_validator("tls_ca_pem")
    @classmethod
    def _ca(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            ssl.create_default_context(cadata=value)
        except (ssl.SSLError, ValueError) as exc:
            raise ValueError("not a PEM CA certificate") from exc
        return value

    @field_validator("from_name")
    @classmethod
    def _one_line(cls, value: str | None) -> str | None:
        if value is not None and any(c in value for c in "\r\n"):
            raise ValueError("must be one line")
        return value


class TwilioChannelIn(BaseModel):
    provider: Literal["twilio"]
    account_sid: str = Field(pattern=r"^AC[0-9a-fA-F]{32}$")
    auth_token: str | None = Field(default=None, min_length=8, max_length=200)
    from_number: str | None = Field(default=None, max_length=30)
    messaging_service_sid: str | None = Field(default=None, pattern=r"^MG[0-9a-fA-F]{32}$")
    api_base: str = Field(default=DEFAULT_API, max_length=500, pattern=r"^https?://[^/?#]+/?$")
    rate_per_s: float | None = Field(default=None, gt=0, le=10_000)

    @field_validator("from_number")
    @classmethod
    def _e164(cls, value: str | None) -> str | None:
        if value is None:
            return value
        number = e164(value)
        if number is None:
            raise ValueError("not a valid phone number in E.164 form (+14155550100)")
        return number


ChannelIn = Annotated[
    WebhookChannelIn | SmtpChannelIn | TwilioChannelIn, Field(discriminator="provider")
]


class ProviderEventsIn(BaseModel):
    # SendGrid's "Verification Key" (base64 DER, ECDSA P-256); null removes it.
    sendgrid_public_key: str | None = Field(default=None, max_length=2000)
    # The basic-auth user and password put in Postmark's webhook URL; null removes it.
    postmark_username: str | None = Field(default=None, min_length=1, max_length=200)
    postmark_password: str | None = Field(default=None, min_length=12, max_length=200)

    @field_validator("sendgrid_public_key")
    @classmethod
    def _key(cls, value: str | None) -> str | None:
        if value is not None and not pe.sendgrid_key_ok(value):
            raise ValueError("not a base64 DER ECDSA public key (SendGrid's verification key)")
        return value


def channel_out(row: MessagingChannel) -> dict[str, Any]:
    return {
        "channel": row.channel,
        "provider": row.provider,
        "config": row.config,
        "secret_set": row.secret is not None,
        "dkim_key_set": row.dkim_key is not None,
        "rate_per_s": row.rate_per_s,
        "updated_at": row.updated_at,
    }


def _default_out(channel: str) -> dict[str, Any]:
    return {"channel": channel, "provider": "webhook", "config": {}, "secret_set": False}


@router.put("/v1/messaging/channels/{channel}", summary="How this channel kind is delivered")
async def put_channel(
    channel: ChannelKind,
    body: ChannelIn,
    request: Request,
    session: Session,
    principal: Principal = Write,
) -> dict[str, Any]:
    runtime = runtime_of(request)
    allow_private = runtime.settings.outbound_allow_private
    row = await session.get(MessagingChannel, (principal.tenant_id, channel), with_for_update=True)
    same = row is not None and row.provider == body.provider
    config: dict[str, Any] = {}
    secret: str | None = None
    dkim_key: str | None = None
    if isinstance(body, SmtpChannelIn):
        if channel != "email":
            raise Unprocessable("smtp delivers email only", field="provider")
        try:
            await check_destination(
                f"https://{body.host}:{body.port}/", allow_private=allow_private
            )
        except ForbiddenDestination as exc:
            raise Unprocessable(f"host {exc}", field="host") from exc
        config = body.model_dump(exclude={"provider", "password", "dkim", "rate_per_s"})
        config = {k: v for k, v in config.items() if v is not None}
        if body.username:
            secret = body.password or (row.secret if same and row else None)
            if secret is None:
                raise Unprocessable("a username needs a password", field="password")
        if body.dkim is not None:
            config["dkim_domain"], config["dkim_selector"] = body.dkim.domain, body.dkim.selector
            dkim_key = body.dkim.private_key or (row.dkim_key if same and row else None)
            if dkim_key is None:
                raise Unprocessable("dkim needs a private_key", field="dkim.private_key")
    elif isinstance(body, TwilioChannelIn):
        if channel != "sms":
            raise Unprocessable("twilio delivers sms only", field="provider")
        if bool(body.from_number) == bool(body.messaging_service_sid):
            raise Unprocessable(
                "give from_number or messaging_service_sid (one of them)", field="from_number"
            )
        try:
            await check_destination(body.api_base, allow_private=allow_private)
        except ForbiddenDestination as exc:
            raise Unprocessable(f"api_base {exc}", field="api_base") from exc
        config = body.model_dump(exclude={"provider", "auth_token", "rate_per_s"})
        config = {k: v for k, v in config.items() if v is not None}
        secret = body.auth_token or (row.secret if same and row else None)
        if secret is None:
            raise Unprocessable("twilio needs the auth_token", field="auth_token")
    now = runtime.clock.now()
    if row is None:
        row = MessagingChannel(tenant_id=principal.tenant_id, channel=channel, tokens=0.0)
        session.add(row)
    row.provider, row.config, row.secret, row.dkim_key = body.provider, config, secret, dkim_key
    if row.rate_per_s != body.rate_per_s:
        row.tokens, row.tokens_at = 0.0, None  # a new rate starts with a full bucket
    row.rate_per_s = body.rate_per_s
    row.updated_at = now
    await session.flush()
    return channel_out(row)


@router.get("/v1/messaging/channels", summary="This tenant's channels (credentials never shown)")
async def list_channels(session: Session, principal: Principal = Read) -> dict[str, Any]:
    rows = {
        r.channel: r
        for r in (
            await session.execute(
                select(MessagingChannel).where(MessagingChannel.tenant_id == principal.tenant_id)
            )
        ).scalars()
    }
    return {
        "channels": [
            channel_out(rows[c]) if c in rows else _default_out(c) for c in ("email", "sms")
        ]
    }


@router.delete("/v1/messaging/channels/{channel}", summary="Back to the signed webhook")
async def delete_channel(
    channel: ChannelKind, session: Session, principal: Principal = Write
) -> dict[str, Any]:
    row = await session.get(MessagingChannel, (principal.tenant_id, channel))
    if row is not None:
        await session.delete(row)
    return _default_out(channel)


@router.put("/v1/messaging/provider-events", summary="Keys of the bounce and complaint webhooks")
async def put_provider_events(
    body: ProviderEventsIn, request: Request, session: Session, principal: Principal = Write
) -> dict[str, Any]:
    if (body.postmark_username is None) != (body.postmark_password is None):
        raise Unprocessable("postmark needs both username and password", field="postmark_password")
    row = await session.get(MessagingTenantSettings, principal.tenant_id, with_for_update=True)
    if row is None:
        row = MessagingTenantSettings(
            tenant_id=principal.tenant_id,
            quiet_hours_start="21:00",
            quiet_hours_end="08:00",
            frequency_cap=3,
            frequency_window_days=7,
            default_channel="email",
            default_timezone="UTC",
        )
        session.add(row)
    row.sendgrid_public_key = body.sendgrid_public_key
    row.postmark_auth = (
        f"{body.postmark_username}:{body.postmark_password}" if body.postmark_username else None
    )
    row.updated_at = runtime_of(request).clock.now()
    return {
        "sendgrid_public_key": row.sendgrid_public_key,
        "postmark_auth_set": row.postmark_auth is not None,
    }


async def _body(request: Request) -> bytes:
    declared = request.headers.get("content-length", "0")
    if declared.isdigit() and int(declared) > MAX_EVENT_BODY:
        raise PayloadTooLarge(f"bodies are limited to {MAX_EVENT_BODY} bytes")
    body = await request.body()
    if len(body) > MAX_EVENT_BODY:
        raise PayloadTooLarge(f"bodies are limited to {MAX_EVENT_BODY} bytes")
    return body


def _json(body: bytes) -> Any:
    try:
        return loads_bounded(body)
    except JsonBodyError as exc:
        raise Unprocessable(f"body is not JSON: {exc}", field="body") from exc


NOT_VERIFIED = "signature does not verify with this tenant's key"


async def _apply_events(
    request: Request, session: Any, tenant_id: str, events: list[pe.AddressEvent], source: str
) -> dict[str, Any]:
    now = runtime_of(request).clock.now()
    count = await store.suppress(
        session, tenant_id, "email", [(e.address, e.reason, e.detail) for e in events], source, now
    )
    complaints = sum(e.reason == "complaint" for e in events)
    bounces = sum(e.reason == "hard_bounce" for e in events)
    if complaints:
        COMPLAINTS.labels(tenant_id).inc(complaints)
    if bounces:
        BOUNCES.labels(tenant_id).inc(bounces)
    if complaints:
        reported, sent = await store.complaint_rate(session, tenant_id, now - COMPLAINT_WINDOW)
        COMPLAINT_RATE.labels(tenant_id).set(reported / sent if sent else float(reported > 0))
    return {"suppressed": count, "hard_bounces": bounces, "complaints": complaints}


@router.post(
    "/v1/messaging/events/sendgrid/{tenant_id}",
    summary="SendGrid Event Webhook (signed): hard bounces and spam reports",
)
async def sendgrid_events(tenant_id: Id, request: Request, session: Session) -> dict[str, Any]:
    body = await _body(request)
    settings = await session.get(MessagingTenantSettings, tenant_id)
    key = settings.sendgrid_public_key if settings else None
    if not key or not pe.verify_sendgrid(
        key,
        request.headers.get(pe.SENDGRID_SIGNATURE, ""),
        request.headers.get(pe.SENDGRID_TIMESTAMP, ""),
        body,
    ):
        raise Unauthorized(NOT_VERIFIED)
    batch = _json(body)
    if not isinstance(batch, list):
        raise Unprocessable("SendGrid sends a JSON array of events", field="body")
    return await _apply_events(request, session, tenant_id, pe.sendgrid_events(batch), "sendgrid")


@router.post(
    "/v1/messaging/events/postmark/{tenant_id}",
    summary="Postmark bounce and spam complaint webhook (basic auth)",
)
async def postmark_events(tenant_id: Id, request: Request, session: Session) -> dict[str, Any]:
    body = await _body(request)
    settings = await session.get(MessagingTenantSettings, tenant_id)
    expected = settings.postmark_auth if settings else None
    if not expected or not pe.basic_auth_ok(request.headers.get("authorization"), expected):
        raise Unauthorized(NOT_VERIFIED, headers={"www-authenticate": 'Basic realm="events"'})
    record = _json(body)
    return await _apply_events(request, session, tenant_id, pe.postmark_events(record), "postmark")


def _twiml(message: str | None = None) -> Response:
    inner = f"<Message>{html.escape(message)}</Message>" if message else ""
    return Response(
        f'<?xml version="1.0" encoding="UTF-8"?><Response>{inner}</Response>',
        media_type="text/xml",
    )


@router.post(
    "/v1/messaging/inbound/twilio/{tenant_id}",
    summary="Inbound SMS from Twilio (signed): STOP, START and HELP",
)
async def twilio_inbound(tenant_id: Id, request: Request, session: Session) -> Response:
    body = await _body(request)
    row = await session.get(MessagingChannel, (tenant_id, "sms"))
    token = row.secret if row is not None and row.provider == "twilio" else None
    # Twilio posts application/x-www-form-urlencoded; parsed here, with every pair kept
    # (the signature covers repeated names too).
    try:
        params = parse_qsl(body.decode(), keep_blank_values=True, strict_parsing=False)
    except UnicodeDecodeError as exc:
        raise Unprocessable("the form is not UTF-8", field="body") from exc
    form = dict(params)
    # Twilio signs the URL it called, which behind a proxy is the public one.
    public = messaging_settings(runtime_of(request)).public_url
    url = str(request.url)
    if public:
        url = public.rstrip("/") + request.url.path
        if request.url.query:
            url += "?" + request.url.query
    if not token or not pe.verify_twilio(
        token, url, params, request.headers.get("x-twilio-signature")
    ):
        raise Unauthorized(NOT_VERIFIED)
    sender = str(form.get("From") or "")
    word = pe.keyword(str(form.get("Body") or ""))
    if word is None or e164(sender) is None:
        return _twiml()
    now = runtime_of(request).clock.now()
    if word == "stop":
        stop = [(sender, "sms_stop", "STOP")]
        await store.suppress(session, tenant_id, "sms", stop, "twilio", now)
        # Twilio answers STOP itself (Advanced Opt-Out), and carriers allow one reply.
        return _twiml()
    if word == "start":
        await store.unsuppress(session, tenant_id, "sms", sender, "sms_stop")
        return _twiml()
    settings = await session.get(MessagingTenantSettings, tenant_id)
    shop = (settings.shop_name if settings else None) or "us"
    return _twiml(f"Messages from {shop}. Reply STOP to unsubscribe, START to resubscribe.")
