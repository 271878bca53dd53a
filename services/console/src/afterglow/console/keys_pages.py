"""Settings · API keys and webhook secrets: the tenant's keys listed (never the keys
themselves), a key issued, a key revoked, a platform's webhook secret rotated.

All through orders-ingest's tenant routes (``/v1/api-keys``, ``/v1/webhook-secrets``)
with the session's own key, which needs ``keys:admin``: the console never holds the
operators' admin token, and ingest enforces that a key grants only scopes its caller
holds. A new key or secret is shown once, on the answer to the form's post (no-store,
never put in a URL or kept here); reloading does not show it again.

A read-only session sees the list and no form; its posts are refused (403) before
ingest is called."""

from __future__ import annotations

from typing import Any

from fastapi import Request
from fastapi.responses import HTMLResponse, Response

from afterglow.console.backend import BackendError, segment
from afterglow.console.pages import Current, page, read_form, redirect, section
from afterglow.kit import openapi
from afterglow.kit.routing import service_router

# Pages for browsers, not an API: left out of the OpenAPI document.
router = service_router(tags=["console"], include_in_schema=False)
_PAGE = openapi.html(200, "A console page", "<!doctype html>...")
# The platforms whose webhooks ingest verifies with a secret of the tenant's.
PLATFORMS = ("shopify", "woocommerce", "bigcommerce", "standard", "zendesk", "aftership")
# What a service's refusal is shown as; anything else is the service failing (502).
SHOWN_AS_IS = (403, 404, 409, 422)


async def _keys_page(
    request: Request,
    session: Any,
    *,
    status: int = 200,
    error: dict[str, Any] | None = None,
    shown: dict[str, Any] | None = None,
) -> HTMLResponse:
    keys = await section(session.backend.get("ingest", "/v1/api-keys"))
    return page(
        request,
        "keys.html",
        status,
        session=session,
        keys=keys,
        grantable=sorted(session.scopes),
        platforms=PLATFORMS,
        error=error,
        shown=shown,
        done=request.query_params.get("done"),
    )


def _refused(exc: BackendError, form: str) -> tuple[int, dict[str, Any]]:
    if exc.status not in SHOWN_AS_IS:
        raise exc  # the app's handler: a 502 page
    return exc.status, {"form": form, "message": exc.message, "field": exc.field}


@router.get("/settings/keys", summary="API keys and webhook secrets", responses=_PAGE)
async def keys(request: Request, session: Current) -> HTMLResponse:
    return await _keys_page(request, session)


@router.post("/settings/keys/issue", summary="Issue an API key (shown once)", responses=_PAGE)
async def issue(request: Request, session: Current) -> Response:
    form = await read_form(request)
    session.check_form(form)
    session.require_write()
    # Ticked scopes, plus any typed ones (a "*" session may grant scopes it cannot tick).
    scopes = [k.removeprefix("scope:") for k, v in form.items() if k.startswith("scope:") and v]
    scopes += form.get("more_scopes", "").split()
    if not scopes:
        error = {"form": "issue", "message": "choose at least one scope", "field": "scopes"}
        return await _keys_page(request, session, status=422, error=error)
    try:
        new = await session.backend.post("ingest", "/v1/api-keys", json={"scopes": scopes})
    except BackendError as exc:
        status, error = _refused(exc, "issue")
        return await _keys_page(request, session, status=status, error=error)
    shown = {
        "what": f"API key {new['key_id']} ({', '.join(new['scopes'])})",
        "value": new["key"],
    }
    return await _keys_page(request, session, shown=shown)


@router.post("/settings/keys/{key_id}/revoke", summary="Revoke an API key")
async def revoke(request: Request, session: Current, key_id: str) -> Response:
    form = await read_form(request)
    session.check_form(form)
    session.require_write()
    try:
        await session.backend.call("DELETE", "ingest", f"/v1/api-keys/{segment(key_id)}")
    except BackendError as exc:
        status, error = _refused(exc, "revoke")
        return await _keys_page(request, session, status=status, error=error)
    return redirect(f"/settings/keys?done=revoked-{segment(key_id)}")


@router.post(
    "/settings/keys/webhook-secret",
    summary="Rotate a platform's webhook secret (shown once)",
    responses=_PAGE,
)
async def rotate(request: Request, session: Current) -> Response:
    form = await read_form(request)
    session.check_form(form)
    session.require_write()
    platform = form.get("platform", "")
    if platform not in PLATFORMS:
        error = {"form": "rotate", "message": "choose a platform", "field": "platform"}
        return await _keys_page(request, session, status=422, error=error)
    # Shopify signs with the app's secret, which only Shopify issues: it is typed in.
    given = form.get("secret", "").strip()
    try:
        rotated = await session.backend.post(
            "ingest",
            f"/v1/webhook-secrets/{segment(platform)}",
            json={"secret": given or None},
        )
    except BackendError as exc:
        status, error = _refused(exc, "rotate")
        return await _keys_page(request, session, status=status, error=error)
    shown = {
        "what": f"the {platform} webhook secret",
        "value": rotated["secret"],
        "previous_valid_for_s": rotated["previous_valid_for_s"],
    }
    return await _keys_page(request, session, shown=shown)
