"""The console's pages: server-rendered HTML forms, no JavaScript needed.

Every page reads through :class:`afterglow.console.backend.Backend` with the session's
key; a service's 403 (the key lacks that service's read scope) shows as a note in that
section, not as a broken page."""

from __future__ import annotations

import json
import re
from collections.abc import Awaitable
from datetime import UTC, date, datetime, time, timedelta
from pathlib import Path
from typing import Annotated, Any
from urllib.parse import parse_qs, quote

from fastapi import Depends, Query, Request
from fastapi.responses import HTMLResponse, RedirectResponse, Response
from jinja2 import Environment, FileSystemLoader, select_autoescape

from afterglow.console.backend import BackendError, segment
from afterglow.console.sessions import (
    COOKIE,
    SIGNIN_COOKIE,
    BadCsrf,
    ConsoleSession,
    current_session,
    sign_in,
    sign_out,
)
from afterglow.console.settings import ConsoleSettings
from afterglow.kit import openapi
from afterglow.kit.app import runtime_of
from afterglow.kit.contact_hash import email_hash
from afterglow.kit.export import ExportIncomplete, gather_exports
from afterglow.kit.origin import REFERRER_POLICY, cross_site_post
from afterglow.kit.routing import read_body, service_router
from afterglow.kit.text import clean_text

# Pages for browsers, not an API: left out of the OpenAPI document (which lists the
# operations only), and their contract is the browser test's.
router = service_router(tags=["console"], include_in_schema=False)
Current = Annotated[ConsoleSession, Depends(current_session)]

MAX_FORM_BYTES = 256 * 1024  # a journey's YAML is the largest field
_env = Environment(
    loader=FileSystemLoader(Path(__file__).parent / "templates"),
    autoescape=select_autoescape(default=True, default_for_string=True),
)
HEADERS = {
    "Cache-Control": "no-store",
    "Referrer-Policy": REFERRER_POLICY,
    # No script runs on these pages, and no other site may frame them (clickjacking an
    # approve button).
    "Content-Security-Policy": "default-src 'none'; style-src 'unsafe-inline'; "
    "img-src 'self' data:; form-action 'self'; frame-ancestors 'none'",
    "X-Frame-Options": "DENY",
}
_PAGE = openapi.html(200, "A console page", "<!doctype html>...")


def page(
    request: Request, template: str, status: int = 200, session: Any = None, **ctx: Any
) -> HTMLResponse:
    html = _env.get_template(template).render(request=request, session=session, **ctx)
    return HTMLResponse(html, status, headers=HEADERS)


def settings_of(request: Request) -> ConsoleSettings:
    s: ConsoleSettings = runtime_of(request).settings
    return s


async def read_form(request: Request) -> dict[str, str]:
    """A urlencoded form (first value of each field), refused when too large or posted
    from another site's page."""
    if cross_site_post(request, settings_of(request).public_base_url):
        raise BadCsrf("the form was posted from another site")
    body = await read_body(request, MAX_FORM_BYTES)
    parsed = parse_qs(body.decode("utf-8", errors="replace"), keep_blank_values=True)
    return {k: clean_text(v[0], multiline=True) for k, v in parsed.items()}


def redirect(url: str) -> RedirectResponse:
    return RedirectResponse(url, status_code=303, headers={"Cache-Control": "no-store"})


async def section(call: Awaitable[Any]) -> dict[str, Any]:
    """One dashboard section's data, or why it is missing (a 403 from a service whose
    read scope the key lacks; a service that did not answer)."""
    try:
        return {"data": await call, "error": None}
    except BackendError as exc:
        if exc.status == 403:
            return {"data": None, "error": f"This key cannot read {exc.service} ({exc.message})."}
        return {"data": None, "error": f"{exc.service} answered {exc.status}: {exc.message}"}


# --- sign-in --------------------------------------------------------------------------


@router.get("/", include_in_schema=False)
async def home() -> RedirectResponse:
    return redirect("/dashboard")


@router.get("/sign-in", summary="The sign-in page", responses=_PAGE)
async def sign_in_page(request: Request) -> HTMLResponse:
    import secrets

    token = secrets.token_urlsafe(24)
    response = page(request, "sign_in.html", csrf=token)
    _set_cookie(request, response, SIGNIN_COOKIE, token, max_age=3600, path="/sign-in")
    return response


@router.post("/sign-in", summary="Sign in with a tenant API key", responses=_PAGE)
async def sign_in_post(request: Request) -> Response:
    form = await read_form(request)
    expected = request.cookies.get(SIGNIN_COOKIE, "")
    if not expected or form.get("csrf") != expected:
        raise BadCsrf("the sign-in form's token is missing; reload the page")
    started = await sign_in(runtime_of(request), form.get("api_key", ""))
    if started is None:
        return page(
            request,
            "sign_in.html",
            401,
            csrf=expected,
            error="That key is not valid, or it lacks the console:read scope.",
        )
    token, expires = started
    response = redirect("/dashboard")
    max_age = int((expires - datetime.now(UTC)).total_seconds())
    _set_cookie(request, response, COOKIE, token, max_age=max_age, path="/")
    response.delete_cookie(SIGNIN_COOKIE, path="/sign-in")
    return response


@router.post("/sign-out", summary="Sign out", responses=_PAGE)
async def sign_out_post(request: Request, session: Current) -> Response:
    session.check_form(await read_form(request))
    await sign_out(runtime_of(request), request.cookies.get(COOKIE))
    response = redirect("/sign-in")
    response.delete_cookie(COOKIE, path="/")
    return response


def _set_cookie(
    request: Request, response: Response, name: str, value: str, *, max_age: int, path: str
) -> None:
    response.set_cookie(
        name,
        value,
        max_age=max_age,
        path=path,
        httponly=True,
        samesite="lax",
        secure=settings_of(request).secure_cookies,
    )


# --- dashboard ------------------------------------------------------------------------


def _period(start: date | None, end: date | None, today: date) -> tuple[date, date]:
    end = end or today
    start = start or end - timedelta(days=89)
    if start > end:
        start, end = end, start
    # The services bound their periods (ingest: two years); stay within it.
    return max(start, end - timedelta(days=730)), end


def _iso(d: date, *, end: bool = False) -> str:
    return datetime.combine(d + timedelta(days=1) if end else d, time(), UTC).isoformat()


# The dashboard's route is in dashboard.py.


# --- customers ------------------------------------------------------------------------


@router.get("/customers", summary="Find a customer by id or email", responses=_PAGE)
async def find_customer(
    request: Request, session: Current, q: Annotated[str, Query(max_length=320)] = ""
) -> Response:
    q = clean_text(q).strip()
    if not q:
        return page(request, "find_customer.html", session=session)
    hashed = email_hash(q) if "@" in q else None
    if hashed is None:
        return redirect(f"/customers/{quote(q, safe='')}")
    # The address is hashed here, as ingest hashes the ones it links: only the hash
    # travels to ingest (and into its access log).
    found = await section(session.backend.get("ingest", "/v1/customer-links", email_hash=hashed))
    ids = found["data"]["customer_ids"] if found["data"] else []
    if len(ids) == 1:
        return redirect(f"/customers/{quote(ids[0], safe='')}")
    return page(
        request,
        "find_customer.html",
        404 if found["data"] and not ids else 200,
        session=session,
        q=q,
        matches=ids,
        error=found["error"] or (None if ids else "No customer of this shop has that email."),
    )


async def _export(request: Request, session: ConsoleSession, customer_id: str) -> Any:
    """Every service's export of the customer, or the page that says why not (a 502
    naming the services that did not answer; a 404 when none knows the customer)."""
    b = session.backend
    try:
        export = await gather_exports(b.http, b.urls, b.api_key, customer_id)
    except ExportIncomplete as exc:
        return page(
            request,
            "notice.html",
            502,
            session=session,
            heading="Not every service answered",
            text=f"The timeline needs the customers:export scope and every service: {exc}",
        )
    if not any(rows for tables in export["services"].values() for rows in tables.values()):
        # Another tenant's customer is unknown to this key everywhere: the same answer
        # as a customer who does not exist, so ids cannot be probed.
        return page(
            request,
            "notice.html",
            404,
            session=session,
            heading="No such customer",
            text=f"No service holds anything about customer {customer_id}.",
        )
    return export


@router.get(
    "/customers/{customer_id}/export.json",
    summary="A customer's data from every service, as a JSON download",
    responses={**_PAGE, **openapi.html(404, "No service knows this customer", "...")},
)
async def customer_export(request: Request, session: Current, customer_id: str) -> Response:
    export = await _export(request, session, customer_id)
    if isinstance(export, Response):
        return export
    safe_name = re.sub(r"[^A-Za-z0-9_.-]", "_", customer_id)[:80]
    return Response(
        json.dumps(export, indent=2, default=str, ensure_ascii=False),
        media_type="application/json",
        headers={
            **HEADERS,
            "Content-Disposition": f'attachment; filename="customer-{safe_name}.json"',
        },
    )


@router.get(
    "/customers/{customer_id}",
    summary="A customer's timeline across every service",
    responses={**_PAGE, **openapi.html(404, "No service knows this customer", "...")},
)
async def customer(request: Request, session: Current, customer_id: str) -> Response:
    export = await _export(request, session, customer_id)
    if isinstance(export, Response):
        return export
    records = export["services"]
    return page(
        request,
        "customer.html",
        session=session,
        customer_id=customer_id,
        timeline=timeline(records),
        records=records,
    )


# The first of these a row has is when it happened (each table names its own).
_WHEN = (
    "created_at",
    "at",
    "responded_at",
    "sent_at",
    "placed_at",
    "started_at",
    "converted_at",
    "earned_at",
    "decided_at",
)
# Rows that are state rather than events, shown by their own tables, not the timeline.
_NOT_EVENTS = {"message_decisions", "message_contacts", "journey_timers", "accounts", "profiles"}


def timeline(records: dict[str, dict[str, list[dict[str, Any]]]]) -> list[dict[str, Any]]:
    """Every dated row of the customer's export, newest first; each message with the
    decisions recorded about it (why it was sent, deferred or suppressed)."""
    decisions: dict[Any, list[dict[str, Any]]] = {}
    for row in records.get("journeys", {}).get("message_decisions", []):
        decisions.setdefault(row.get("message_id"), []).append(row)
    out = []
    for service, tables in records.items():
        for table, rows in tables.items():
            if table in _NOT_EVENTS:
                continue
            for row in rows:
                when = next((row[k] for k in _WHEN if row.get(k)), None)
                if when is None:
                    continue
                entry: dict[str, Any] = {
                    "when": str(when),
                    "service": service,
                    "what": table.replace("_", " "),
                }
                entry["row"] = row
                entry["decisions"] = decisions.get(row.get("id"), []) if table == "messages" else []
                out.append(entry)
    return sorted(out, key=lambda e: e["when"], reverse=True)


# --- work queues ----------------------------------------------------------------------


@router.get("/reviews", summary="Reviews waiting for moderation", responses=_PAGE)
async def reviews(request: Request, session: Current) -> HTMLResponse:
    pending = await section(session.backend.get("feedback", "/v1/reviews", status="pending"))
    return page(request, "reviews.html", session=session, pending=pending)


@router.post("/reviews/{review_id}/moderation", summary="Publish or reject a review")
async def moderate(request: Request, session: Current, review_id: str) -> Response:
    form = await read_form(request)
    session.check_form(form)
    session.require_write()
    decision = form.get("decision")
    if decision not in ("published", "rejected"):
        return page(
            request, "notice.html", 422, session=session, heading="Unknown decision", text=""
        )
    try:
        await session.backend.post(
            "feedback",
            f"/v1/reviews/{segment(review_id)}/moderation",
            json={"status": decision, "reason": form.get("reason") or None},
        )
    except BackendError as exc:
        return page(
            request,
            "notice.html",
            exc.status if exc.status in (403, 404, 422) else 502,
            session=session,
            heading="The review was not changed",
            text=exc.message,
        )
    return redirect("/reviews")
