"""Work queues besides reviews: referrals held for review (approve, reject), messages
that failed (redeliver), and each service's dead letters (redrive). Each action is the
owning service's own API with the session's key: referrals' review, the orchestrator's
redeliver, and the DLQ router every service has (afterglow.kit.dlq_api)."""

from __future__ import annotations

import asyncio
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
# The services whose dead letters the console shows (all but itself).
DLQ_SERVICES = ("ingest", "journeys", "feedback", "loyalty", "referrals")


@router.get("/queues", summary="Held referrals, failed messages, dead letters", responses=_PAGE)
async def queues(request: Request, session: Current) -> HTMLResponse:
    b = session.backend
    held, failed, *dlqs = await asyncio.gather(
        section(b.get("referrals", "/v1/referrals", state="held")),
        section(b.get("journeys", "/v1/messages/failed")),
        *(section(b.get(name, "/v1/dlq")) for name in DLQ_SERVICES),
    )
    return page(
        request,
        "queues.html",
        session=session,
        held=held,
        failed=failed,
        dlqs=dict(zip(DLQ_SERVICES, dlqs, strict=True)),
        done=request.query_params.get("done"),
    )


async def _act(request: Request, session: Any, call: Any, done: str) -> Response:
    try:
        await call
    except BackendError as exc:
        return page(
            request,
            "notice.html",
            exc.status if exc.status in (403, 404, 409, 422) else 502,
            session=session,
            heading="Nothing was changed",
            text=f"{exc.service}: {exc.message}",
        )
    return redirect(f"/queues?done={done}")


@router.post("/queues/referrals/{referral_id}", summary="Approve or reject a held referral")
async def review_referral(request: Request, session: Current, referral_id: str) -> Response:
    form = await read_form(request)
    session.check_form(form)
    session.require_write()
    decision = form.get("decision")
    if decision not in ("approve", "reject"):
        return page(
            request, "notice.html", 422, session=session, heading="Unknown decision", text=""
        )
    call = session.backend.post(
        "referrals",
        f"/v1/referrals/{segment(referral_id)}/review",
        json={"decision": decision, "note": form.get("note") or None},
    )
    return await _act(request, session, call, f"referral-{decision}")


@router.post("/queues/messages/{message_id}/redeliver", summary="Send a failed message again")
async def redeliver(request: Request, session: Current, message_id: str) -> Response:
    form = await read_form(request)
    session.check_form(form)
    session.require_write()
    call = session.backend.post("journeys", f"/v1/messages/{segment(message_id)}/redeliver")
    return await _act(request, session, call, "redelivered")


@router.post("/queues/dlq/{service}", summary="Redrive one dead letter of a service")
async def redrive(request: Request, session: Current, service: str) -> Response:
    form = await read_form(request)
    session.check_form(form)
    session.require_write()
    offset = form.get("offset", "")
    if service not in DLQ_SERVICES or not offset.isdigit():
        return page(
            request, "notice.html", 422, session=session, heading="No such dead letter", text=""
        )
    call = session.backend.post(
        service,
        f"/v1/dlq/{segment(form.get('dlq', ''))}/redrive",
        json={"offsets": [int(offset)]},
    )
    return await _act(request, session, call, "redriven")
