"""Settings: messaging (channels; quiet hours, frequency cap, default channel), message
templates with a preview, loyalty rules and tiers, referral rewards and windows, all
through the owning services' own settings APIs with the session's key.

A read-only key sees every section and no form that changes anything; its posts are
refused here (403) before any service is called. A template preview changes nothing,
so a read-only key may use it; it is a post because a draft may be long."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

import yaml
from fastapi import Request
from fastapi.responses import HTMLResponse, Response

from afterglow.console import settings_forms as forms
from afterglow.console.backend import BackendError, segment
from afterglow.console.pages import Current, page, read_form, redirect, section
from afterglow.console.settings_forms import FormError
from afterglow.kit import openapi
from afterglow.kit.routing import service_router

# Pages for browsers, not an API: left out of the OpenAPI document.
router = service_router(tags=["console"], include_in_schema=False)
_PAGE = openapi.html(200, "A console page", "<!doctype html>...")
POLICY_FIELDS = (
    "quiet_hours_start",
    "quiet_hours_end",
    "frequency_cap",
    "frequency_window_days",
    "default_channel",
    "default_timezone",
    "shop_name",
)


def as_yaml(value: Any) -> str:
    return yaml.safe_dump(value, sort_keys=False, allow_unicode=True)


async def _settings_page(
    request: Request,
    session: Any,
    *,
    status: int = 200,
    error: dict[str, Any] | None = None,
    preview: dict[str, Any] | None = None,
    typed: dict[str, str] | None = None,
) -> HTMLResponse:
    b = session.backend
    messaging, channels, templates, rules, referrals = await asyncio.gather(
        section(b.get("journeys", "/v1/messaging/settings")),
        section(b.get("journeys", "/v1/messaging/channels")),
        section(b.get("journeys", "/v1/messaging/templates")),
        section(b.get("loyalty", "/v1/rules")),
        section(b.get("referrals", "/v1/settings")),
    )
    tier_rows = forms.tier_rows(
        (rules["data"] or {}).get("tiers", []),
        typed if error and error["form"] == "tiers" else None,
    )
    return page(
        request,
        "settings.html",
        status,
        session=session,
        messaging=messaging,
        channels=channels,
        templates=templates,
        rules=rules,
        rules_yaml=as_yaml(rules["data"]) if rules["data"] else "",
        tier_rows=tier_rows,
        # The inputs of the tiers form: a 422 naming another field shows above it.
        tier_fields=[f"tiers.{i}.{p}" for i in range(len(tier_rows)) for p in forms.TIER_PARTS],
        referrals=referrals,
        error=error,
        preview=preview,
        typed=typed or {},
        channel_fields=forms.CHANNEL_FIELDS,
        channel_form_fields=forms.CHANNEL_FORM_FIELDS,
        secret_fields=forms.SECRET_FIELDS,
        referral_fields=forms.REFERRAL_FIELDS,
        # Every input of the referrals form: a 422 naming another shows above it.
        referral_form_fields=(*forms.REFERRAL_FIELDS, *forms.REWARD_FIELDS),
        reward_kinds=forms.REWARD_KIND_CHOICES,
        reward_amount=forms.reward_amount_shown(
            ((referrals["data"] or {}).get("referee_reward")) or {}
        ),
        saved=request.query_params.get("saved"),
    )


@router.get("/settings", summary="Messaging, templates, loyalty, referrals", responses=_PAGE)
async def settings(request: Request, session: Current) -> HTMLResponse:
    return await _settings_page(request, session)


async def _save(
    request: Request,
    session: Any,
    form_name: str,
    method: str,
    service: str,
    path: str,
    body: dict[str, Any] | FormError,
    typed: dict[str, str],
    field_prefix: str = "",
    field_of: Callable[[str | None], str | None] | None = None,
    **shown: Any,
) -> Response:
    """Send one form's body to the service that owns it: saved, back to the page with
    "saved"; a 422 (the service's, or a body the console could not build), the page
    again with the message next to the field it names, what was typed kept for
    correcting (a long YAML edit must not be lost to one typo), and nothing changed."""
    if isinstance(body, FormError):
        error = {"form": form_name, "message": body.message, "field": body.field}
        return await _settings_page(request, session, status=422, error=error, typed=typed, **shown)
    try:
        await session.backend.call(method, service, path, json=body)
    except BackendError as exc:
        if exc.status != 422:
            raise
        field, message = exc.field, exc.message
        if field_prefix and field and field.startswith(field_prefix):
            field, message = field.removeprefix(field_prefix), message.removeprefix(field_prefix)
        if field_of is not None:
            field = field_of(field)
        error = {"form": form_name, "message": message, "field": field}
        return await _settings_page(request, session, status=422, error=error, typed=typed, **shown)
    return redirect(f"/settings?saved={form_name}")


async def _writer_form(request: Request, session: Any) -> dict[str, str]:
    """The posted form of a session that may change settings: the CSRF token is checked
    first, then the key's write scope (403 before any service is called)."""
    form = await read_form(request)
    session.check_form(form)
    session.require_write()
    return form


@router.post("/settings/messaging", summary="Save quiet hours, caps and the default channel")
async def save_messaging(request: Request, session: Current) -> Response:
    form = await _writer_form(request, session)
    body: dict[str, Any] = {k: form.get(k, "").strip() for k in POLICY_FIELDS}
    body["shop_name"] = body["shop_name"] or None
    for k in ("frequency_cap", "frequency_window_days"):
        # Sent as typed when it is not a whole number: the service names the field.
        body[k] = forms.number(body[k])
    return await _save(
        request, session, "messaging", "PUT", "journeys", "/v1/messaging/settings", body, form
    )


@router.post("/settings/channels/{kind}", summary="Save how a channel kind is delivered")
async def save_channel(kind: str, request: Request, session: Current) -> Response:
    form = await _writer_form(request, session)
    if kind not in forms.CHANNEL_FIELDS:
        return page(request, "notice.html", 404, heading="Not found", text="No such channel.")
    path = f"/v1/messaging/channels/{segment(kind)}"
    body = forms.channel(kind, form)
    # The service's body is a union told apart by provider: its 422 names a field
    # under the provider ("smtp.from_email"); the form's field is "from_email".
    prefix = f"{body['provider']}."
    return await _save(
        request, session, f"channel-{kind}", "PUT", "journeys", path, body, form, prefix
    )


@router.post("/settings/templates/save", summary="Save a previewed template draft")
async def save_template(request: Request, session: Current) -> Response:
    form = await _writer_form(request, session)
    kind, channel = form.get("kind", ""), form.get("channel", "")
    path = f"/v1/messaging/templates/{segment(kind)}/{segment(channel)}"
    draft = forms.template_draft(form)
    # Shown again in the draft form on a refusal, to be corrected and previewed.
    preview = {"kind": kind, "channel": channel, "draft": draft}
    return await _save(
        request, session, "templates", "PUT", "journeys", path, draft, form, preview=preview
    )


@router.post("/settings/loyalty", summary="Save the loyalty program: rules, tiers, rewards")
async def save_loyalty(request: Request, session: Current) -> Response:
    form = await _writer_form(request, session)
    body: dict[str, Any] | FormError
    try:
        body = forms.loyalty_rules(form.get("rules", ""))
    except FormError as exc:
        body = exc
    return await _save(request, session, "loyalty", "PUT", "loyalty", "/v1/rules", body, form)


@router.post("/settings/loyalty/tiers", summary="Save the loyalty tiers")
async def save_tiers(request: Request, session: Current) -> Response:
    """Loyalty has no tiers API of its own: the tiers are part of the program, so the
    program is read and put back with the new tiers (its other rules as they are)."""
    form = await _writer_form(request, session)
    program = await session.backend.get("loyalty", "/v1/rules")
    tiers, rows = forms.tiers(form)
    body = {**program, "tiers": tiers}
    return await _save(
        request,
        session,
        "tiers",
        "PUT",
        "loyalty",
        "/v1/rules",
        body,
        form,
        field_of=lambda field: forms.tier_field(field, rows),
    )


@router.post(
    "/settings/referrals", summary="Save the referral share URL, windows and referee reward"
)
async def save_referrals(request: Request, session: Current) -> Response:
    form = await _writer_form(request, session)
    body: dict[str, Any] | FormError
    try:
        body = forms.referral_settings(form)
    except FormError as exc:
        body = exc
    return await _save(
        request, session, "referrals", "PUT", "referrals", "/v1/settings", body, form
    )


@router.post("/settings/templates/preview", summary="Render a template draft")
async def preview_template(request: Request, session: Current) -> Response:
    form = await read_form(request)
    session.check_form(form)
    kind, channel = form.get("kind", ""), form.get("channel", "")
    draft = forms.template_draft(form)
    payload: dict[str, Any] = {"template": draft} if any(draft.values()) else {}
    try:
        rendered = await session.backend.post(
            "journeys",
            f"/v1/messaging/templates/{segment(kind)}/{segment(channel)}/preview",
            json=payload,
        )
    except BackendError as exc:
        if exc.status not in (404, 422):
            raise
        preview = {"kind": kind, "channel": channel, "draft": draft, "error": exc.message}
        return await _settings_page(request, session, status=422, preview=preview)
    preview = {"kind": kind, "channel": channel, "draft": draft, "rendered": rendered}
    return await _settings_page(request, session, preview=preview)
