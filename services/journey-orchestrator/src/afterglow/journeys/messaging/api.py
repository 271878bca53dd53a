"""Messaging routes: templates, endpoint and policy settings, the message log, and the
public unsubscribe link."""

from __future__ import annotations

import base64
import binascii
import re
from datetime import datetime
from typing import Annotated, Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from fastapi import Depends, Query, Request
from fastapi.responses import HTMLResponse
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
    model_validator,
)

from afterglow.events.catalog import MESSAGE_VARIABLES, MessageKind, MessageRequested
from afterglow.journeys.deps import messaging_settings
from afterglow.journeys.messaging import policy, service, store
from afterglow.journeys.messaging.responses import (
    CustomerMessagesOut,
    LoggedMessageOut,
    MessageAcceptedOut,
    PreviewOut,
    SettingsOut,
    TemplateDeletedOut,
    TemplateOut,
    TemplatesOut,
)
from afterglow.journeys.messaging.templates import SAMPLE_ORDER, Template
from afterglow.kit import openapi
from afterglow.kit.app import runtime_of
from afterglow.kit.auth import Principal, require_scope
from afterglow.kit.db import Session
from afterglow.kit.errors import Unprocessable
from afterglow.kit.origin import REFERRER_POLICY, cross_site_post
from afterglow.kit.outbound import ForbiddenDestination, check_destination
from afterglow.kit.routing import service_router
from afterglow.kit.types import Id, Instant, JsonObject, NoControls, NoControlsMultiline

router = service_router(tags=["messaging"])
Channel = Literal["email", "sms"]
NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,63}$")
# A template's name in a path or a request: what NAME accepts, refused with 422 before
# it reaches a query.
TemplateName = Annotated[str, StringConstraints(pattern=NAME.pattern)]

Write = Depends(require_scope("messages:write"))
Read = Depends(require_scope("messages:read"))


class TemplateIn(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "subject": "Welcome to {{ shop_name }}",
                    "html": "<p>Hi {{ customer.first_name }}, thank you for your order.</p>",
                    "text": "Hi {{ customer.first_name }}, thank you for your order.",
                }
            ]
        }
    )
    subject: Annotated[str, StringConstraints(max_length=1000), NoControls] | None = None
    html: Annotated[str, StringConstraints(max_length=100_000), NoControlsMultiline] | None = None
    text: Annotated[str, StringConstraints(max_length=100_000), NoControlsMultiline]


class PreviewIn(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={"examples": [{"customer": {"first_name": "Ada"}, "variables": {}}]}
    )
    template: TemplateIn | None = None  # a draft; default: the saved (or default) one
    variables: JsonObject = Field(default_factory=dict)
    customer: JsonObject = Field(default_factory=dict)
    # the order the preview is about (default: a sample one); null previews "no order"
    order: JsonObject | None = Field(default_factory=lambda: dict(SAMPLE_ORDER))


class EndpointIn(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "url": "https://esp.example.com/afterglow",
                    "secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw",
                }
            ]
        }
    )
    url: Annotated[str, StringConstraints(max_length=2000, pattern=r"^https?://"), NoControls]
    secret: Annotated[str, StringConstraints(max_length=200), NoControls]

    @field_validator("secret")
    @classmethod
    def _whsec(cls, value: str) -> str:
        if not value.startswith("whsec_"):
            raise ValueError("must start with whsec_")
        try:
            key = base64.b64decode(value.removeprefix("whsec_"), validate=True)
        except (binascii.Error, ValueError) as exc:
            raise ValueError("must be whsec_ followed by base64") from exc
        if not 24 <= len(key) <= 64:
            raise ValueError("the decoded key must be 24 to 64 bytes (Standard Webhooks)")
        return value


class PolicyIn(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "quiet_hours_start": "21:00",
                    "quiet_hours_end": "08:00",
                    "frequency_cap": 3,
                    "frequency_window_days": 7,
                    "default_channel": "email",
                    "default_timezone": "Europe/Paris",
                    "shop_name": "Acme Outdoor",
                }
            ]
        }
    )
    quiet_hours_start: str = Field(default="21:00", pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    quiet_hours_end: str = Field(default="08:00", pattern=r"^([01]\d|2[0-3]):[0-5]\d$")
    frequency_cap: int = Field(default=3, ge=1, le=100)
    frequency_window_days: int = Field(default=7, ge=1, le=90)
    default_channel: Channel = "email"
    default_timezone: Annotated[str, StringConstraints(max_length=100), NoControls] = "UTC"
    # {{ shop_name }} in every message unless its request says otherwise
    shop_name: (
        Annotated[str, StringConstraints(min_length=1, max_length=200), NoControls] | None
    ) = None

    @field_validator("default_timezone")
    @classmethod
    def _tz(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError) as exc:
            raise ValueError("not an IANA time zone") from exc
        return value


def _template(name: str, channel: str, body: TemplateIn) -> Template:
    if not NAME.match(name):
        raise Unprocessable("template names are lowercase letters, digits, _ and -", field="kind")
    if channel == "email" and not body.subject:
        raise Unprocessable("an email template needs a subject", field="subject")
    if channel == "sms" and (body.subject or body.html):
        raise Unprocessable(
            "an sms template has only text", field="html" if body.html else "subject"
        )
    return Template(channel=channel, text=body.text, subject=body.subject, html=body.html)


_TEMPLATE_OUT = {
    "kind": "welcome",
    "channel": "email",
    "subject": "Welcome to {{ shop_name }}",
    "html": "<p>Hi {{ customer.first_name }}, thank you for your order.</p>",
    "text": "Hi {{ customer.first_name }}, thank you for your order.",
    "source": "tenant",
    "updated_at": "2026-03-04T16:20:00Z",
}
_SETTINGS_OUT = {
    "endpoint": {"url": "https://esp.example.com/afterglow", "secret_set": True},
    "quiet_hours_start": "21:00",
    "quiet_hours_end": "08:00",
    "frequency_cap": 3,
    "frequency_window_days": 7,
    "default_channel": "email",
    "default_timezone": "Europe/Paris",
    "shop_name": "Acme Outdoor",
}


@router.put(
    "/v1/messaging/templates/{kind}/{channel}",
    summary="Save a template (validated by rendering)",
    responses=openapi.example(200, _TEMPLATE_OUT),
)
async def put_template(
    kind: TemplateName,
    channel: Channel,
    body: TemplateIn,
    session: Session,
    principal: Principal = Write,
) -> TemplateOut:
    template = _template(kind, channel, body)
    now = datetime.now().astimezone()
    await service.save_template(session, principal.tenant_id, kind, template, now)
    return TemplateOut.of(kind, template, "tenant", now)


@router.delete(
    "/v1/messaging/templates/{kind}/{channel}",
    summary="Revert to the default template",
    responses=openapi.example(200, {"kind": "welcome", "channel": "email", "deleted": True}),
)
async def delete_template(
    kind: TemplateName, channel: Channel, session: Session, principal: Principal = Write
) -> TemplateDeletedOut:
    deleted = await store.delete_template(session, principal.tenant_id, kind, channel)
    return TemplateDeletedOut(kind=kind, channel=channel, deleted=deleted)


@router.get(
    "/v1/messaging/templates",
    summary="Effective templates: the tenant's and the defaults",
    responses=openapi.example(200, {"templates": [_TEMPLATE_OUT]}),
)
async def list_templates(session: Session, principal: Principal = Read) -> TemplatesOut:
    found = await service.effective_templates(session, principal.tenant_id)
    return TemplatesOut(
        templates=[TemplateOut.of(t.name, t.template, t.source, t.updated_at) for t in found]
    )


@router.post(
    "/v1/messaging/templates/{kind}/{channel}/preview",
    summary="Render a template against sample data",
    responses=openapi.errors(
        openapi.example(
            200,
            {
                "kind": "welcome",
                "channel": "email",
                "subject": "Welcome to Acme Outdoor",
                "html": "<p>Hi Ada, thank you for your order.</p>",
                "text": "Hi Ada, thank you for your order.",
            },
        ),
        openapi.error(
            404,
            "No saved or default template",
            "not_found",
            "no template winback/sms",
            field="kind",
        ),
    ),
)
async def preview_template(
    kind: TemplateName,
    channel: Channel,
    body: PreviewIn,
    session: Session,
    principal: Principal = Read,
) -> PreviewOut:
    draft = _template(kind, channel, body.template) if body.template is not None else None
    rendered = await service.preview_template(
        session,
        principal.tenant_id,
        kind,
        channel,
        draft,
        customer=body.customer,
        variables=body.variables,
        order=body.order,
    )
    return PreviewOut(
        kind=kind, channel=channel, subject=rendered.subject, html=rendered.html, text=rendered.text
    )


@router.put(
    "/v1/messaging/endpoint",
    summary="Where this tenant's messages are POSTed (Standard Webhooks)",
    responses=openapi.example(200, _SETTINGS_OUT),
)
async def put_endpoint(
    body: EndpointIn, request: Request, session: Session, principal: Principal = Write
) -> SettingsOut:
    settings = runtime_of(request).settings
    try:
        await check_destination(body.url, allow_private=settings.outbound_allow_private)
    except ForbiddenDestination as exc:
        raise Unprocessable(f"url {exc}", field="url") from exc
    now = datetime.now().astimezone()
    row = await service.save_endpoint(session, principal.tenant_id, body.url, body.secret, now)
    return SettingsOut.of(row)


@router.put(
    "/v1/messaging/settings",
    summary="Quiet hours, frequency cap, default channel and time zone",
    responses=openapi.example(200, _SETTINGS_OUT),
)
async def put_settings(
    body: PolicyIn, session: Session, principal: Principal = Write
) -> SettingsOut:
    now = datetime.now().astimezone()
    row = await service.save_policy(session, principal.tenant_id, body.model_dump(), now)
    return SettingsOut.of(row)


@router.get(
    "/v1/messaging/settings",
    summary="This tenant's messaging settings (secret never shown)",
    responses=openapi.example(200, _SETTINGS_OUT),
)
async def get_settings(session: Session, principal: Principal = Read) -> SettingsOut:
    row = await store.tenant_settings(session, principal.tenant_id)
    if row is None:  # never set: the defaults apply
        return SettingsOut(endpoint=None, **PolicyIn().model_dump())
    return SettingsOut.of(row)


class MessageIn(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "customer_id": "cus_42",
                    "request_id": "crm:winback:cus_42:2026-03",
                    "kind": "custom",
                    "template": "winback",
                    "category": "marketing",
                    "variables": {"discount": "15%"},
                }
            ]
        }
    )
    customer_id: Id
    request_id: Id
    kind: MessageKind
    template: TemplateName | None = None
    category: Literal["transactional", "marketing"] = "marketing"
    priority: Literal["high", "normal", "low"] = "normal"
    channel: Channel | None = None
    variables: JsonObject = Field(default_factory=dict)
    order_id: Annotated[str, StringConstraints(min_length=1, max_length=100), NoControls] | None = (
        None
    )
    not_before: Instant | None = None

    @model_validator(mode="after")
    def _carries_its_variables(self) -> MessageIn:
        # The event's own rule, checked here: failing later, in MessageRequested(...),
        # was a ValidationError inside the route (a 500) instead of a 422.
        missing = MESSAGE_VARIABLES[self.kind] - self.variables.keys()
        if missing:
            raise ValueError(f"variables: a {self.kind} message needs {sorted(missing)}")
        return self


@router.post(
    "/v1/messages",
    status_code=202,
    summary="Request a message (as message.requested)",
    responses=openapi.example(
        202,
        {"request_id": "crm:winback:cus_42:2026-03", "customer_id": "cus_42", "status": "accepted"},
    ),
)
async def request_message(
    body: MessageIn, request: Request, session: Session, principal: Principal = Write
) -> MessageAcceptedOut:
    """For callers outside the event bus (and ``make dev``): the request goes out as
    ``message.requested`` through the outbox, and comes back in through the same
    consumer as every service's requests, so it gets the same de-duplication and policy."""
    data = MessageRequested(**body.model_dump(exclude={"customer_id"}))
    await service.request_message(
        session, runtime_of(request).outbox, principal.tenant_id, body.customer_id, data
    )
    return MessageAcceptedOut(
        request_id=body.request_id, customer_id=body.customer_id, status="accepted"
    )


@router.get(
    "/v1/customers/{customer_id}/messages",
    summary="The message log of one customer",
    responses=openapi.example(
        200,
        {
            "customer_id": "cus_42",
            "messages": [
                {
                    "id": "0f3a6c1e-51d2-4c7b-9a8e-6b2d1f0c3e47",
                    "request_id": "journeys:welcome:pos:1001",
                    "kind": "welcome",
                    "category": "transactional",
                    "priority": "normal",
                    "channel": "email",
                    "status": "sent",
                    "reason": None,
                    "attempts": 1,
                    "created_at": "2026-03-02T14:30:01Z",
                    "next_attempt_at": None,
                    "last_attempt_at": "2026-03-02T14:30:02Z",
                    "sent_at": "2026-03-02T14:30:02Z",
                    "updated_at": "2026-03-02T14:30:02Z",
                    "decisions": [
                        {"at": "2026-03-02T14:30:01Z", "decision": "send", "reason": None}
                    ],
                }
            ],
        },
    ),
)
async def customer_messages(
    customer_id: Id,
    session: Session,
    principal: Principal = Read,
    limit: Annotated[int, Query(ge=1, le=500)] = 100,
) -> CustomerMessagesOut:
    log = await service.customer_log(session, principal.tenant_id, customer_id, limit)
    return CustomerMessagesOut(
        customer_id=customer_id, messages=[LoggedMessageOut.of(m, ds) for m, ds in log]
    )


_PAGE = (
    "<!doctype html><html lang=en><meta charset=utf-8>"
    "<meta name=viewport content='width=device-width,initial-scale=1'>"
    "<meta name=robots content=noindex><title>{title}</title>"
    "<body style='font-family:sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem'>"
    "<h1 style='font-size:1.4rem'>{title}</h1><p>{text}</p>{form}</body></html>"
)
_CONFIRM_FORM = (
    "<form method=post><button type=submit style='font-size:1.1rem;padding:.7rem 1.4rem'>"
    "Unsubscribe</button></form>"
)
_WHAT = {"email": "emails", "sms": "text messages"}


def _page(title: str, text: str, status: int = 200, form: str = "") -> HTMLResponse:
    return HTMLResponse(
        _PAGE.format(title=title, text=text, form=form),
        status_code=status,
        # The token is in the URL: keep it out of other sites' referrers (same-origin,
        # not no-referrer, under which the button would post "Origin: null") and out of
        # shared caches.
        headers={"referrer-policy": REFERRER_POLICY, "cache-control": "no-store"},
    )


def _parse_link(request: Request, token: str) -> tuple[str, str, str] | None:
    settings = messaging_settings(runtime_of(request))
    return policy.verify_unsubscribe(settings.unsubscribe_secret, token)


_INVALID = ("Invalid link", "This unsubscribe link is not valid.")


def _public_url(request: Request) -> str:
    runtime = runtime_of(request)
    return messaging_settings(runtime).public_url or runtime.settings.public_base_url


# GET only asks: mail security scanners and prefetchers follow every link in a message,
# and must not unsubscribe the customer. The button POSTs to the same URL.
@router.get(
    "/u/{token}",
    response_class=HTMLResponse,
    summary="Unsubscribe page: asks, changes nothing (scanners follow every link)",
    responses=openapi.errors(
        openapi.html(200, "The question and its button", "<!doctype html>...<h1>Unsubscribe?</h1>"),
        openapi.html(
            404,
            "The link is not valid (also: a path that matches no route, JSON)",
            "<!doctype html>...<h1>Invalid link</h1>",
        ),
    ),
)
async def unsubscribe_confirm(token: str, request: Request) -> HTMLResponse:
    parsed = _parse_link(request, token)
    if parsed is None:
        return _page(*_INVALID, status=404)
    what = _WHAT.get(parsed[2], "messages")
    return _page(
        "Unsubscribe?",
        f"You will no longer receive marketing {what} from us. "
        "Messages about your orders will still reach you.",
        form=_CONFIRM_FORM,
    )


# POST acts: the page's button, and RFC 8058 one-click from the mail client
# (List-Unsubscribe-Post). Repeating it is harmless.
@router.post(
    "/u/{token}",
    summary="Unsubscribe (signed link; one-click per RFC 8058)",
    response_class=HTMLResponse,
    responses={
        200: {"content": {"text/html": {"example": "<!doctype html>...<h1>Unsubscribed</h1>"}}},
        403: {
            "description": "A cross-site post (its Origin is not this service's)",
            "content": {"text/html": {"example": "<!doctype html>...<h1>Not unsubscribed</h1>"}},
        },
        404: {
            "description": "The link is not valid (an HTML page), or the path matches no route",
            "content": {"text/html": {"example": "<!doctype html>...<h1>Invalid link</h1>"}},
        },
    },
)
async def unsubscribe(token: str, request: Request, session: Session) -> HTMLResponse:
    refused = cross_site_post(request, _public_url(request))
    if refused is not None:
        return _page(
            "Not unsubscribed",
            f"This request came from another site: {refused}. Please open the link in our "
            "message and press the button there.",
            status=403,
        )
    parsed = _parse_link(request, token)
    if parsed is None:
        return _page(*_INVALID, status=404)
    tenant_id, customer_id, channel = parsed
    runtime = runtime_of(request)
    await store.unsubscribe(
        session,
        runtime.outbox,
        tenant_id=tenant_id,
        customer_id=customer_id,
        channel=channel,
        at=runtime.clock.now(),
        emit=True,
    )
    what = _WHAT.get(channel, "messages")
    return _page("Unsubscribed", f"You will no longer receive marketing {what} from us.")
