"""Messaging routes: templates, endpoint and policy settings, the message log, and the
public unsubscribe link."""

from __future__ import annotations

import base64
import binascii
import re
from datetime import datetime
from typing import Annotated, Any, Literal
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
from sqlalchemy import select

from afterglow.events import CloudEvent, derived_event_id
from afterglow.events.catalog import MESSAGE_VARIABLES, MessageKind, MessageRequested
from afterglow.journeys.deps import messaging_settings
from afterglow.journeys.messaging import policy, store
from afterglow.journeys.messaging.models import (
    Message,
    MessageDecision,
    MessageTemplate,
    MessagingTenantSettings,
)
from afterglow.journeys.messaging.templates import (
    SAMPLE_CUSTOMER,
    SAMPLE_ORDER,
    SAMPLE_VARIABLES,
    Template,
    TemplateRenderError,
    all_kinds,
    context,
    default_template,
    render,
    validate,
)
from afterglow.kit import openapi
from afterglow.kit.app import runtime_of
from afterglow.kit.auth import Principal, require_scope
from afterglow.kit.db import Session
from afterglow.kit.errors import NotFound, Unprocessable
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


def _render_error(name: str, channel: str, exc: TemplateRenderError) -> Unprocessable:
    return Unprocessable(
        f"template {name}/{channel} does not render: {exc}", field=exc.part, code="template_error"
    )


def _template_out(
    name: str, channel: str, t: Template, source: str, updated_at: datetime | None = None
) -> dict[str, Any]:
    return {
        "kind": name,
        "channel": channel,
        "subject": t.subject,
        "html": t.html,
        "text": t.text,
        "source": source,
        "updated_at": updated_at,
    }


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
) -> dict[str, Any]:
    template = _template(kind, channel, body)
    try:
        validate(template, kind)
    except TemplateRenderError as exc:
        raise _render_error(kind, channel, exc) from exc
    now = datetime.now().astimezone()
    row = await session.get(MessageTemplate, (principal.tenant_id, kind, channel))
    if row is None:
        row = MessageTemplate(
            tenant_id=principal.tenant_id, name=kind, channel=channel, updated_at=now
        )
        session.add(row)
    row.subject, row.html, row.text, row.updated_at = (
        template.subject,
        template.html,
        template.text,
        now,
    )
    return _template_out(kind, channel, template, "tenant", now)


@router.delete(
    "/v1/messaging/templates/{kind}/{channel}",
    summary="Revert to the default template",
    responses=openapi.example(200, {"kind": "welcome", "channel": "email", "deleted": True}),
)
async def delete_template(
    kind: TemplateName, channel: Channel, session: Session, principal: Principal = Write
) -> dict[str, Any]:
    row = await session.get(MessageTemplate, (principal.tenant_id, kind, channel))
    if row is not None:
        await session.delete(row)
    return {"kind": kind, "channel": channel, "deleted": row is not None}


@router.get(
    "/v1/messaging/templates",
    summary="Effective templates: the tenant's and the defaults",
    responses=openapi.example(200, {"templates": [_TEMPLATE_OUT]}),
)
async def list_templates(session: Session, principal: Principal = Read) -> dict[str, Any]:
    rows = (
        await session.execute(
            select(MessageTemplate).where(MessageTemplate.tenant_id == principal.tenant_id)
        )
    ).scalars()
    own = {(r.name, r.channel): r for r in rows}
    out = []
    for kind in [k for k in all_kinds() if k != "custom"] + sorted(
        {n for n, _ in own} - set(all_kinds())
    ):
        for channel in ("email", "sms"):
            r = own.get((kind, channel))
            if r is not None:
                t = Template(channel=channel, text=r.text, subject=r.subject, html=r.html)
                out.append(_template_out(kind, channel, t, "tenant", r.updated_at))
            elif (d := default_template(kind, channel)) is not None:
                out.append(_template_out(kind, channel, d, "default"))
    return {"templates": out}


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
) -> dict[str, Any]:
    if body.template is not None:
        template: Template | None = _template(kind, channel, body.template)
    else:
        template = await store.find_template(session, principal.tenant_id, kind, channel)
    if template is None:
        raise NotFound(f"no template {kind}/{channel}", field="kind")
    settings = await store.tenant_settings(session, principal.tenant_id)
    ctx = context(
        {**SAMPLE_CUSTOMER, **body.customer},
        {**SAMPLE_VARIABLES, **body.variables},
        shop_name=settings.shop_name if settings else None,
        unsubscribe_url="https://example.com/u/preview",
        kind=kind,
        order=body.order,
    )
    try:
        rendered = render(template, ctx)
    except TemplateRenderError as exc:
        raise _render_error(kind, channel, exc) from exc
    return {
        "kind": kind,
        "channel": channel,
        "subject": rendered.subject,
        "html": rendered.html,
        "text": rendered.text,
    }


async def _settings_row(session: Any, tenant_id: str) -> MessagingTenantSettings:
    row = await session.get(MessagingTenantSettings, tenant_id, with_for_update=True)
    if row is None:
        row = MessagingTenantSettings(
            tenant_id=tenant_id,
            quiet_hours_start="21:00",
            quiet_hours_end="08:00",
            frequency_cap=3,
            frequency_window_days=7,
            default_channel="email",
            default_timezone="UTC",
            updated_at=datetime.now().astimezone(),
        )
        session.add(row)
    return row


def _settings_out(row: MessagingTenantSettings | None) -> dict[str, Any]:
    if row is None:
        return {"endpoint": None, **PolicyIn().model_dump()}
    return {
        "endpoint": {"url": row.endpoint_url, "secret_set": bool(row.endpoint_secret)}
        if row.endpoint_url
        else None,
        "quiet_hours_start": row.quiet_hours_start,
        "quiet_hours_end": row.quiet_hours_end,
        "frequency_cap": row.frequency_cap,
        "frequency_window_days": row.frequency_window_days,
        "default_channel": row.default_channel,
        "default_timezone": row.default_timezone,
        "shop_name": row.shop_name,
    }


@router.put(
    "/v1/messaging/endpoint",
    summary="Where this tenant's messages are POSTed (Standard Webhooks)",
    responses=openapi.example(200, _SETTINGS_OUT),
)
async def put_endpoint(
    body: EndpointIn, request: Request, session: Session, principal: Principal = Write
) -> dict[str, Any]:
    settings = runtime_of(request).settings
    try:
        await check_destination(body.url, allow_private=settings.outbound_allow_private)
    except ForbiddenDestination as exc:
        raise Unprocessable(f"url {exc}", field="url") from exc
    row = await _settings_row(session, principal.tenant_id)
    row.endpoint_url, row.endpoint_secret = body.url, body.secret
    row.updated_at = datetime.now().astimezone()
    return _settings_out(row)


@router.put(
    "/v1/messaging/settings",
    summary="Quiet hours, frequency cap, default channel and time zone",
    responses=openapi.example(200, _SETTINGS_OUT),
)
async def put_settings(
    body: PolicyIn, session: Session, principal: Principal = Write
) -> dict[str, Any]:
    row = await _settings_row(session, principal.tenant_id)
    for key, value in body.model_dump().items():
        setattr(row, key, value)
    row.updated_at = datetime.now().astimezone()
    return _settings_out(row)


@router.get(
    "/v1/messaging/settings",
    summary="This tenant's messaging settings (secret never shown)",
    responses=openapi.example(200, _SETTINGS_OUT),
)
async def get_settings(session: Session, principal: Principal = Read) -> dict[str, Any]:
    return _settings_out(await session.get(MessagingTenantSettings, principal.tenant_id))


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
) -> dict[str, Any]:
    """For callers outside the event bus (and ``make dev``): the request goes out as
    ``message.requested`` through the outbox, and comes back in through the same
    consumer as every service's requests, so it gets the same de-duplication and policy."""
    runtime = runtime_of(request)
    data = MessageRequested(**body.model_dump(exclude={"customer_id"}))
    event = CloudEvent.new(
        data,
        tenant_id=principal.tenant_id,
        subject=body.customer_id,
        source=store.SOURCE,
        id=derived_event_id("message-api", principal.tenant_id, body.request_id),
    )
    await runtime.outbox.add(session, event)
    return {"request_id": body.request_id, "customer_id": body.customer_id, "status": "accepted"}


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
) -> dict[str, Any]:
    messages = list(
        (
            await session.execute(
                select(Message)
                .where(Message.tenant_id == principal.tenant_id, Message.customer_id == customer_id)
                .order_by(Message.created_at.desc(), Message.id)
                .limit(limit)
            )
        ).scalars()
    )
    ids = [m.id for m in messages]
    decisions: dict[str, list[dict[str, Any]]] = {i: [] for i in ids}
    if ids:
        for d in (
            await session.execute(
                select(MessageDecision)
                .where(
                    MessageDecision.tenant_id == principal.tenant_id,
                    MessageDecision.message_id.in_(ids),
                )
                .order_by(MessageDecision.id)
            )
        ).scalars():
            decisions[d.message_id].append({"at": d.at, "decision": d.decision, "reason": d.reason})
    return {
        "customer_id": customer_id,
        "messages": [
            {
                "id": m.id,
                "request_id": m.request_id,
                "kind": m.kind,
                "category": m.category,
                "priority": m.priority,
                "channel": m.channel,
                "status": m.status,
                "reason": m.reason,
                "attempts": m.attempts,
                "created_at": m.created_at,
                "next_attempt_at": m.next_attempt_at
                if m.status in ("queued", "deferred")
                else None,
                "last_attempt_at": m.last_attempt_at,
                "sent_at": m.sent_at,
                "updated_at": m.updated_at,
                "decisions": decisions[m.id],
            }
            for m in messages
        ],
    }


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
