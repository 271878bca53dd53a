"""Routes for channels and what providers send back:

* ``PUT/GET/DELETE /v1/messaging/channels/{channel}``: how a channel kind leaves (the
  signed webhook, SMTP for email, Twilio for SMS); credentials are sealed and never
  returned (``password_set``), and may be left out of an update to keep them.
* ``PUT /v1/messaging/provider-events``: the keys of the bounce and complaint webhooks.
* ``POST /v1/messaging/events/sendgrid/{tenant}``, ``/events/postmark/{tenant}`` and
  ``/events/ses/{tenant}`` (Amazon SES through SNS): hard bounces and complaints
  suppress the address.
* ``POST /v1/messaging/inbound/twilio/{tenant}``: inbound SMS; STOP suppresses the
  number for marketing and unsubscribes its customers from SMS (customer.unsubscribed),
  START lifts both, HELP answers with the shop's name.

The tenant in a provider URL only says whose key to check: a request is accepted only
when it verifies with that tenant's key (unknown tenant and bad signature are the same
401, so the routes do not tell which tenants exist). A signed webhook is never answered
5xx: a body we cannot read is a 400, and a repeated delivery changes nothing.
"""

from __future__ import annotations

import html
import ssl
from typing import Annotated, Any, Literal
from urllib.parse import parse_qsl

import httpx
from cryptography.hazmat.primitives.serialization import load_pem_private_key
from fastapi import Depends, Request
from fastapi.responses import Response
from pydantic import BaseModel, ConfigDict, Field, StringConstraints, field_validator

from afterglow.journeys.deps import messaging_settings
from afterglow.journeys.messaging import service, store
from afterglow.journeys.messaging.channels import provider_events as pe
from afterglow.journeys.messaging.channels import sns
from afterglow.journeys.messaging.channels.sms_text import e164
from afterglow.journeys.messaging.channels.twilio import DEFAULT_API
from afterglow.journeys.messaging.responses import (
    ChannelOut,
    ChannelsOut,
    ConfirmedOut,
    DefaultChannelOut,
    ProviderEventsOut,
    SuppressedOut,
)
from afterglow.journeys.messaging.service import Credential
from afterglow.kit import openapi
from afterglow.kit.app import runtime_of
from afterglow.kit.auth import Principal, require_scope
from afterglow.kit.db import Session
from afterglow.kit.errors import AppError, PayloadTooLarge, Unauthorized, Unprocessable
from afterglow.kit.jsonbody import JsonBodyError, loads_bounded
from afterglow.kit.outbound import ForbiddenDestination, check_destination
from afterglow.kit.routing import service_router
from afterglow.kit.tracing import instrument_http
from afterglow.kit.types import Id, NoControls, NoControlsMultiline

router = service_router(tags=["messaging"])
Write = Depends(require_scope("messages:write"))
Read = Depends(require_scope("messages:read"))
ChannelKind = Literal["email", "sms"]
MAX_EVENT_BODY = 1_000_000
EMAIL = r"^[^@\s<>\"]+@[^@\s<>\"]+\.[^@\s<>\"]+$"

_SMTP_EXAMPLE: dict[str, Any] = {
    "provider": "smtp",
    "host": "smtp.example.com",
    "port": 587,
    "security": "starttls",
    "username": "afterglow@example.com",
    "password": "app-password-1234",
    "from_email": "hello@example.com",
    "from_name": "Acme Outdoor",
    "reply_to": "support@example.com",
    "rate_per_s": 10,
}
_TWILIO_EXAMPLE: dict[str, Any] = {
    "provider": "twilio",
    "account_sid": "AC" + "0123456789abcdef" * 2,
    "auth_token": "3f5e2c9a1b7d4e6f8a0c2e4b6d8f0a1c",
    "from_number": "+14155550100",
}
_SMTP_OUT = {
    "channel": "email",
    "provider": "smtp",
    "config": {
        "host": "smtp.example.com",
        "port": 587,
        "security": "starttls",
        "username": "afterglow@example.com",
        "from_email": "hello@example.com",
        "from_name": "Acme Outdoor",
        "reply_to": "support@example.com",
    },
    "secret_set": True,
    "dkim_key_set": False,
    "rate_per_s": 10.0,
    "updated_at": "2026-03-04T16:20:00Z",
}
_WEBHOOK_OUT = {"channel": "sms", "provider": "webhook", "config": {}, "secret_set": False}
_SUPPRESSED_OUT = {"suppressed": 1, "hard_bounces": 1, "complaints": 0}
_NOT_VERIFIED_DOC = "The tenant has no key for this provider, or the request does not verify"
_EVENTS_TOO_LARGE = openapi.error(
    413,
    "The body is larger than the bound",
    "payload_too_large",
    f"bodies are limited to {MAX_EVENT_BODY} bytes",
)
_TWIML_OK = '<?xml version="1.0" encoding="UTF-8"?><Response></Response>'


# Every string field carries NoControls (NoControlsMultiline for PEM): a NUL reached
# the jsonb config or a text column and failed there with a 500 (asyncpg
# UntranslatableCharacterError); a pattern alone does not refuse it ([^@\s] lets NUL
# through). Refused here, it is a 422 naming the field.
Email = Annotated[str, StringConstraints(max_length=254, pattern=EMAIL), NoControls]
Pem = Annotated[str, StringConstraints(max_length=20_000), NoControlsMultiline]


class WebhookChannelIn(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"provider": "webhook"}]})
    provider: Literal["webhook"]
    rate_per_s: float | None = Field(default=None, gt=0, le=10_000)


class DkimIn(BaseModel):
    domain: Annotated[
        str,
        StringConstraints(min_length=3, max_length=253, pattern=r"^[A-Za-z0-9.-]+\.[A-Za-z]{2,}$"),
        NoControls,
    ]
    selector: Annotated[
        str,
        StringConstraints(min_length=1, max_length=63, pattern=r"^[A-Za-z0-9._-]+$"),
        NoControls,
    ]
    # PEM (RSA or Ed25519); may be left out of an update to keep the stored one.
    private_key: Pem | None = None

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
    model_config = ConfigDict(json_schema_extra={"examples": [_SMTP_EXAMPLE]})
    provider: Literal["smtp"]
    host: Annotated[
        str,
        StringConstraints(min_length=1, max_length=253, pattern=r"^[A-Za-z0-9.:\[\]-]+$"),
        NoControls,
    ]
    port: int = Field(default=587, ge=1, le=65535)
    security: Literal["starttls", "tls", "none"] = "starttls"
    username: Annotated[str, StringConstraints(max_length=500), NoControls] | None = None
    password: Annotated[str, StringConstraints(max_length=2000), NoControls] | None = None
    from_email: Email
    from_name: Annotated[str, StringConstraints(max_length=200), NoControls] | None = None
    reply_to: Email | None = None
    envelope_from: Email | None = None
    dkim: DkimIn | None = None
    # A private CA the merchant's server certificate comes from (PEM); public data.
    tls_ca_pem: Pem | None = None
    rate_per_s: float | None = Field(default=None, gt=0, le=10_000)

    @field_validator("tls_ca_pem")
    @classmethod
    def _ca(cls, value: str | None) -> str | None:
        if value is None:
            return value
        try:
            ssl.create_default_context(cadata=value)
        # TypeError: ssl refuses a non-ASCII str outright ("cadata should be an ASCII
        # string"); the OpenAPI fuzz found it as a 500.
        except (ssl.SSLError, ValueError, TypeError) as exc:
            raise ValueError("not a PEM CA certificate") from exc
        return value


class TwilioChannelIn(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_TWILIO_EXAMPLE]})
    provider: Literal["twilio"]
    account_sid: Annotated[str, StringConstraints(pattern=r"^AC[0-9a-fA-F]{32}$"), NoControls]
    auth_token: (
        Annotated[str, StringConstraints(min_length=8, max_length=200), NoControls] | None
    ) = None
    from_number: Annotated[str, StringConstraints(max_length=30), NoControls] | None = None
    messaging_service_sid: (
        Annotated[str, StringConstraints(pattern=r"^MG[0-9a-fA-F]{32}$"), NoControls] | None
    ) = None
    api_base: Annotated[
        str, StringConstraints(max_length=500, pattern=r"^https?://[^/?#]+/?$"), NoControls
    ] = DEFAULT_API
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
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "sendgrid_public_key": None,
                    "postmark_username": "postmark",
                    "postmark_password": "kq3-vT9x-Lm2p",
                    "ses_topic_arn": "arn:aws:sns:eu-west-1:123456789012:lumen-ses-events",
                }
            ]
        }
    )
    # SendGrid's "Verification Key" (base64 DER, ECDSA P-256); null removes it.
    sendgrid_public_key: Annotated[str, StringConstraints(max_length=2000), NoControls] | None = (
        None
    )
    # The basic-auth user and password put in Postmark's webhook URL; null removes it.
    postmark_username: (
        Annotated[str, StringConstraints(min_length=1, max_length=200), NoControls] | None
    ) = None
    postmark_password: (
        Annotated[str, StringConstraints(min_length=12, max_length=200), NoControls] | None
    ) = None

    # The SNS topic SES publishes the tenant's bounces and complaints to; null removes it.
    ses_topic_arn: Annotated[str, StringConstraints(pattern=sns.TOPIC_ARN)] | None = None

    @field_validator("sendgrid_public_key")
    @classmethod
    def _key(cls, value: str | None) -> str | None:
        if value is not None and not pe.sendgrid_key_ok(value):
            raise ValueError("not a base64 DER ECDSA public key (SendGrid's verification key)")
        return value


@router.put(
    "/v1/messaging/channels/{channel}",
    summary="How this channel kind is delivered",
    responses=openapi.example(200, _SMTP_OUT),
)
async def put_channel(
    channel: ChannelKind,
    body: ChannelIn,
    request: Request,
    session: Session,
    principal: Principal = Write,
) -> ChannelOut:
    runtime = runtime_of(request)
    allow_private = runtime.settings.outbound_allow_private
    config: dict[str, Any] = {}
    secret: Credential | None = None
    dkim_key: Credential | None = None
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
            secret = Credential(body.password, "password", "a username needs a password")
        if body.dkim is not None:
            config["dkim_domain"], config["dkim_selector"] = body.dkim.domain, body.dkim.selector
            dkim_key = Credential(
                body.dkim.private_key, "dkim.private_key", "dkim needs a private_key"
            )
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
        secret = Credential(body.auth_token, "auth_token", "twilio needs the auth_token")
    row = await service.save_channel(
        session,
        principal.tenant_id,
        channel,
        provider=body.provider,
        config=config,
        secret=secret,
        dkim_key=dkim_key,
        rate_per_s=body.rate_per_s,
        at=runtime.clock.now(),
    )
    return ChannelOut.of(row)


@router.get(
    "/v1/messaging/channels",
    summary="This tenant's channels (credentials never shown)",
    responses=openapi.example(200, {"channels": [_SMTP_OUT, _WEBHOOK_OUT]}),
)
async def list_channels(session: Session, principal: Principal = Read) -> ChannelsOut:
    rows = await store.tenant_channels(session, principal.tenant_id)
    return ChannelsOut(
        channels=[
            ChannelOut.of(rows[c]) if c in rows else DefaultChannelOut.of(c)
            for c in ("email", "sms")
        ]
    )


@router.delete(
    "/v1/messaging/channels/{channel}",
    summary="Back to the signed webhook",
    responses=openapi.example(200, _WEBHOOK_OUT),
)
async def delete_channel(
    channel: ChannelKind, session: Session, principal: Principal = Write
) -> DefaultChannelOut:
    await store.delete_channel(session, principal.tenant_id, channel)
    return DefaultChannelOut.of(channel)


@router.put(
    "/v1/messaging/provider-events",
    summary="Keys of the bounce and complaint webhooks",
    responses=openapi.example(
        200, {"sendgrid_public_key": None, "postmark_auth_set": True, "ses_topic_arn": None}
    ),
)
async def put_provider_events(
    body: ProviderEventsIn, request: Request, session: Session, principal: Principal = Write
) -> ProviderEventsOut:
    if (body.postmark_username is None) != (body.postmark_password is None):
        raise Unprocessable("postmark needs both username and password", field="postmark_password")
    row = await service.save_provider_events(
        session,
        principal.tenant_id,
        sendgrid_public_key=body.sendgrid_public_key,
        postmark_auth=f"{body.postmark_username}:{body.postmark_password}"
        if body.postmark_username
        else None,
        ses_topic_arn=body.ses_topic_arn,
        at=runtime_of(request).clock.now(),
    )
    return ProviderEventsOut(
        sendgrid_public_key=row.sendgrid_public_key,
        postmark_auth_set=row.postmark_auth is not None,
        ses_topic_arn=row.ses_topic_arn,
    )


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
_POSTMARK_UNAUTHORIZED = openapi.error(401, _NOT_VERIFIED_DOC, "unauthorized", NOT_VERIFIED)
_POSTMARK_UNAUTHORIZED[401]["headers"] = {
    "WWW-Authenticate": {"description": 'Basic realm="events"', "schema": {"type": "string"}}
}


async def _apply_events(
    request: Request, session: Session, tenant_id: str, events: list[pe.AddressEvent], source: str
) -> SuppressedOut:
    now = runtime_of(request).clock.now()
    report = await service.apply_provider_events(session, tenant_id, events, source, now)
    return SuppressedOut(
        suppressed=report.suppressed, hard_bounces=report.hard_bounces, complaints=report.complaints
    )


@router.post(
    "/v1/messaging/events/sendgrid/{tenant_id}",
    summary="SendGrid Event Webhook (signed): hard bounces and spam reports",
    description=(
        "The JSON array SendGrid posts, signed with `X-Twilio-Email-Event-Webhook-Signature`"
        " and `X-Twilio-Email-Event-Webhook-Timestamp`; `bounce` (type `bounce`) and"
        " `spamreport` events suppress the address."
    ),
    responses=openapi.errors(
        openapi.example(200, _SUPPRESSED_OUT),
        openapi.error(401, _NOT_VERIFIED_DOC, "unauthorized", NOT_VERIFIED),
        _EVENTS_TOO_LARGE,
        openapi.error(
            422,
            "The verified body is not JSON, or not an array of events",
            "validation_error",
            "SendGrid sends a JSON array of events",
            field="body",
        ),
    ),
)
async def sendgrid_events(tenant_id: Id, request: Request, session: Session) -> SuppressedOut:
    body = await _body(request)
    settings = await store.tenant_settings(session, tenant_id)
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
    description=(
        "The JSON object Postmark posts (a Bounce or SpamComplaint record), authenticated"
        " with the basic-auth user and password set in provider-events; a `HardBounce` and"
        " a spam complaint suppress the address."
    ),
    responses=openapi.errors(
        openapi.example(200, _SUPPRESSED_OUT),
        _POSTMARK_UNAUTHORIZED,
        _EVENTS_TOO_LARGE,
        openapi.error(
            422,
            "The authenticated body is not JSON",
            "validation_error",
            "body is not JSON: Expecting value: line 1 column 1 (char 0)",
            field="body",
        ),
    ),
)
async def postmark_events(tenant_id: Id, request: Request, session: Session) -> SuppressedOut:
    body = await _body(request)
    settings = await store.tenant_settings(session, tenant_id)
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
    response_class=Response,
    responses=openapi.errors(
        {
            200: {
                "description": "TwiML: empty, or the HELP answer",
                "content": {"text/xml": {"schema": {"type": "string"}, "example": _TWIML_OK}},
            }
        },
        openapi.error(401, _NOT_VERIFIED_DOC, "unauthorized", NOT_VERIFIED),
        _EVENTS_TOO_LARGE,
        openapi.error(
            422, "The form is not UTF-8", "validation_error", "the form is not UTF-8", field="body"
        ),
    ),
    openapi_extra=openapi.form_body(
        {
            "From": {"type": "string"},
            "To": {"type": "string"},
            "Body": {"type": "string"},
            "MessageSid": {"type": "string"},
            "AccountSid": {"type": "string"},
        },
        {
            "From": "+14155550123",
            "To": "+14155550100",
            "Body": "STOP",
            "MessageSid": "SM" + "0123456789abcdef" * 2,
            "AccountSid": "AC" + "0123456789abcdef" * 2,
        },
    ),
)
async def twilio_inbound(tenant_id: Id, request: Request, session: Session) -> Response:
    body = await _body(request)
    row = await store.tenant_channel(session, tenant_id, "sms")
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
        await service.sms_stop(session, runtime_of(request).outbox, tenant_id, sender, now)
        # Twilio answers STOP itself (Advanced Opt-Out), and carriers allow one reply.
        return _twiml()
    if word == "start":
        await service.sms_start(session, tenant_id, sender, now)
        return _twiml()
    shop = await service.shop_name(session, tenant_id) or "us"
    return _twiml(f"Messages from {shop}. Reply STOP to unsubscribe, START to resubscribe.")


class SnsUnavailable(AppError):
    """AWS could not be reached to check or confirm an SNS message: SNS retries a 5xx
    (and not a 4xx), so a transient failure here loses no bounce."""

    status_code = 503
    code = "unavailable"


_CERTIFICATES = sns.CertificateCache()


@router.post(
    "/v1/messaging/events/ses/{tenant_id}",
    summary="Amazon SES bounces and complaints through Amazon SNS (signed by AWS)",
    description=(
        "The SNS message (JSON, posted as text/plain) from the topic set as"
        " `ses_topic_arn` in provider-events. The signature is checked with AWS's signing"
        " certificate; a `SubscriptionConfirmation` of that topic is confirmed; a"
        " `Notification` carrying an SES `Bounce` (Permanent) or `Complaint` suppresses"
        " the recipients."
    ),
    responses=openapi.errors(
        openapi.example(200, _SUPPRESSED_OUT),
        openapi.error(401, _NOT_VERIFIED_DOC, "unauthorized", NOT_VERIFIED),
        _EVENTS_TOO_LARGE,
        openapi.error(
            422,
            "The body is not an SNS message",
            "validation_error",
            "TopicArn is required and must be a string",
            field="TopicArn",
        ),
        openapi.error(
            503,
            "AWS's certificate or confirmation URL could not be reached; SNS will retry",
            "unavailable",
            "the SNS signing certificate could not be fetched",
        ),
    ),
)
async def ses_events(
    tenant_id: Id, request: Request, session: Session
) -> SuppressedOut | ConfirmedOut:
    body = await _body(request)
    try:
        envelope = sns.parse_envelope(_json(body))
    except sns.EnvelopeError as exc:
        raise Unprocessable(str(exc), field=exc.field) from exc
    tenant = await store.tenant_settings(session, tenant_id)
    if tenant is None or not tenant.ses_topic_arn or envelope.topic_arn != tenant.ses_topic_arn:
        raise Unauthorized(NOT_VERIFIED)
    config = messaging_settings(runtime_of(request))
    if not sns.cert_url_allowed(envelope.cert_url, config.sns_url_prefix):
        raise Unauthorized(NOT_VERIFIED)
    pem = await _CERTIFICATES.get(envelope.cert_url, config.sns_timeout_s)
    if pem is None:
        raise SnsUnavailable("the SNS signing certificate could not be fetched")
    if not sns.verify(envelope, pem):
        raise Unauthorized(NOT_VERIFIED)
    if envelope.kind == "SubscriptionConfirmation":
        confirmed = await _confirm(envelope, config.sns_url_prefix, config.sns_timeout_s)
        return ConfirmedOut(confirmed=confirmed)
    if envelope.kind == "UnsubscribeConfirmation":
        return ConfirmedOut(confirmed=False)
    events = sns.ses_events(envelope.message)
    return await _apply_events(request, session, tenant_id, events, "ses")


async def _confirm(envelope: sns.Envelope, prefix: str, timeout_s: float) -> bool:
    """Visit the SubscribeURL of a verified confirmation of the tenant's own topic. Only
    AWS's hosts are allowed (the prefix), so this cannot be pointed inside our network."""
    url = envelope.subscribe_url or ""
    if not sns.subscribe_url_allowed(url, prefix):
        raise Unprocessable("SubscribeURL is not an SNS confirmation URL", field="SubscribeURL")
    try:
        async with instrument_http(
            httpx.AsyncClient(timeout=timeout_s, follow_redirects=False)
        ) as client:
            response = await client.get(url)
    except httpx.HTTPError as exc:
        raise SnsUnavailable("the subscription could not be confirmed with SNS") from exc
    if response.status_code != 200:
        raise SnsUnavailable(f"SNS answered {response.status_code} to the confirmation")
    return True
