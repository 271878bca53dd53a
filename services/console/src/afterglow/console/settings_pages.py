"""Settings: messaging (channels; quiet hours, frequency cap, default channel), message
templates with a preview, loyalty rules and tiers, referral rewards and windows, all
through the owning services' own settings APIs with the session's key.

A read-only key sees every section and no form that changes anything; its posts are
refused here (403) before any service is called. A template preview changes nothing,
so a read-only key may use it; it is a post because a draft may be long."""

from __future__ import annotations

import asyncio
from typing import Any

import yaml
from fastapi import Request
from fastapi.responses import HTMLResponse, Response

from afterglow.console.backend import BackendError, segment
from afterglow.console.pages import Current, page, read_form, redirect, section
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
) -> HTMLResponse:
    b = session.backend
    messaging, channels, templates, rules, referrals = await asyncio.gather(
        section(b.get("journeys", "/v1/messaging/settings")),
        section(b.get("journeys", "/v1/messaging/channels")),
        section(b.get("journeys", "/v1/messaging/templates")),
        section(b.get("loyalty", "/v1/rules")),
        section(b.get("referrals", "/v1/settings")),
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
        referrals=referrals,
        error=error,
        preview=preview,
        saved=request.query_params.get("saved"),
    )


@router.get("/settings", summary="Messaging, templates, loyalty, referrals", responses=_PAGE)
async def settings(request: Request, session: Current) -> HTMLResponse:
    return await _settings_page(request, session)


@router.post("/settings/messaging", summary="Save quiet hours, caps and the default channel")
async def save_messaging(request: Request, session: Current) -> Response:
    form = await read_form(request)
    session.check_form(form)
    session.require_write()
    body: dict[str, Any] = {k: form.get(k, "").strip() for k in POLICY_FIELDS}
    body["shop_name"] = body["shop_name"] or None
    for k in ("frequency_cap", "frequency_window_days"):
        # Sent as typed when it is not a whole number: the service names the field.
        body[k] = int(body[k]) if body[k].isdigit() else body[k]
    try:
        await session.backend.call("PUT", "journeys", "/v1/messaging/settings", json=body)
    except BackendError as exc:
        if exc.status != 422:
            raise
        error = {"form": "messaging", "message": exc.message, "field": exc.field}
        return await _settings_page(request, session, status=422, error=error)
    return redirect("/settings?saved=messaging")


@router.post("/settings/templates/preview", summary="Render a template draft")
async def preview_template(request: Request, session: Current) -> Response:
    form = await read_form(request)
    session.check_form(form)
    kind, channel = form.get("kind", ""), form.get("channel", "")
    draft = {k: form.get(k) or None for k in ("subject", "text", "html")}
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
