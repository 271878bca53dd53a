"""Journeys: the list with versions, a journey's steps, its YAML editor with the
validation error shown at its line, a dry run (simulate) and activation. Everything
through the orchestrator's ``/v1/journeys`` API with the session's key."""

from __future__ import annotations

import asyncio
from datetime import timedelta
from typing import Annotated, Any

import yaml
from fastapi import Query, Request
from fastapi.responses import HTMLResponse, Response

from afterglow.console import flow
from afterglow.console.backend import BackendError, segment
from afterglow.console.pages import Current, page, read_form, redirect, section
from afterglow.console.yaml_lines import error_line, line_of
from afterglow.kit import openapi
from afterglow.kit.app import runtime_of
from afterglow.kit.routing import service_router

# Pages for browsers, not an API: left out of the OpenAPI document (which lists the
# operations only), and their contract is the browser test's.
router = service_router(tags=["console"], include_in_schema=False)
_PAGE = openapi.html(200, "A console page", "<!doctype html>...")


def compact(value: Any) -> Any:
    """The definition without its unset (null) fields: what a person would write."""
    if isinstance(value, dict):
        return {k: compact(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [compact(v) for v in value]
    return value


def _event(name: Any) -> str:
    return str(name).removeprefix("afterglow.").removesuffix(".v1")


def wait_text(wait: Any) -> str | None:
    """``{"delay": "P3D", "after": ..., "fallback": {...}}`` as "P3D after
    order.delivered, else P5D after order.fulfilled"."""
    if not wait:
        return None
    if not isinstance(wait, dict):
        return str(wait)
    text = " ".join(
        p
        for p in (
            wait.get("delay"),
            "after" if wait.get("after") else None,
            _event(wait["after"]) if wait.get("after") else None,
            f"at {wait['at']}" if wait.get("at") else None,
        )
        if p
    )
    fallback = wait_text(wait.get("fallback"))
    return f"{text}, else {fallback}" if fallback else text


def condition_text(when: Any) -> str | None:
    if not when:
        return None
    if not isinstance(when, dict):
        return str(when)
    parts = [f"{k.replace('_', ' ')} {v}" for k, v in compact(when).items()]
    return " and ".join(parts) or None


def steps(definition: dict[str, Any]) -> list[dict[str, Any]]:
    """The stages in order with what each waits for, its condition and what it does:
    the journey's flow as a list a screen reader reads in order."""

    def kinds(actions: list[dict[str, Any]]) -> str:
        return ", ".join(str(x.get("kind") or x.get("type", "")) for x in actions)

    out = []
    for stage in definition.get("stages") or []:
        actions = []
        for a in stage.get("actions") or []:
            if a.get("type") == "split":
                branches = [
                    f"if {condition_text(b.get('when'))}: {kinds(b.get('actions') or [])}"
                    for b in a.get("branches") or []
                ]
                otherwise = kinds(a.get("otherwise") or []) or "nothing"
                actions.append("split: " + "; ".join([*branches, f"otherwise: {otherwise}"]))
            else:
                actions.append(" ".join(str(a.get(k)) for k in ("type", "kind") if a.get(k)))
        out.append(
            {
                "name": stage.get("name"),
                "wait": wait_text(stage.get("wait")),
                "when": condition_text(stage.get("when") or stage.get("if")),
                "actions": actions,
            }
        )
    return out


@router.get("/journeys", summary="Journeys and their versions", responses=_PAGE)
async def journeys(request: Request, session: Current) -> HTMLResponse:
    listing = await section(session.backend.get("journeys", "/v1/journeys"))
    return page(request, "journeys.html", session=session, listing=listing)


async def _journey_page(
    request: Request,
    session: Any,
    name: str,
    version: int | None = None,
    *,
    text: str | None = None,
    error: dict[str, Any] | None = None,
    simulation: dict[str, Any] | None = None,
    migration: dict[str, Any] | None = None,
    compare: int | None = None,
    status: int = 200,
) -> HTMLResponse:
    b = session.backend
    path = f"/v1/journeys/{segment(name)}"
    try:
        params = {"version": version} if version else {}
        journey, listing, other = await asyncio.gather(
            b.get("journeys", path, **params),
            b.get("journeys", "/v1/journeys"),
            b.get("journeys", path, version=compare) if compare else _none(),
        )
    except BackendError as exc:
        code = exc.status if exc.status in (403, 404) else 502
        return page(
            request, "notice.html", code, session=session, heading="Journey", text=exc.message
        )
    # The counts are a nicety: a key without them still gets the diagram, with a note.
    counts = await section(b.get("journeys", f"{path}/step-counts"))
    by_version = {v["version"]: v for v in (counts["data"] or {}).get("versions", [])}
    versions: list[dict[str, Any]] = next(
        (j["versions"] for j in listing["journeys"] if j["name"] == name), []
    )
    if text is None:
        text = yaml.safe_dump(compact(journey["definition"]), sort_keys=False, allow_unicode=True)
    return page(
        request,
        "journey.html",
        status,
        session=session,
        journey=journey,
        versions=versions,
        steps=steps(journey["definition"]),
        diagram=flow.diagram(journey["definition"], by_version.get(journey["version"])),
        counts_error=counts["error"],
        compared=None
        if other is None
        else {
            "version": other["version"],
            "active": other.get("active"),
            "diagram": flow.diagram(other["definition"], by_version.get(other["version"])),
            "steps": steps(other["definition"]),
        },
        text=text,
        error=error,
        simulation=simulation,
        migration=migration,
    )


async def _none() -> None:
    return None


@router.get("/journeys/{name}", summary="A journey: steps, versions, editor", responses=_PAGE)
async def journey(
    request: Request,
    session: Current,
    name: str,
    version: Annotated[int | None, Query(ge=1, le=2_147_483_647)] = None,
    compare: Annotated[int | None, Query(ge=1, le=2_147_483_647)] = None,
) -> HTMLResponse:
    return await _journey_page(request, session, name, version, compare=compare)


@router.post("/journeys/{name}", summary="Save the edited YAML as a new version")
async def save(request: Request, session: Current, name: str) -> Response:
    form = await read_form(request)
    session.check_form(form)
    session.require_write()
    text = form.get("definition", "")
    try:
        saved = await session.backend.call(
            "PUT",
            "journeys",
            f"/v1/journeys/{segment(name)}",
            content=text.encode(),
            headers={"Content-Type": "application/yaml"},
        )
    except BackendError as exc:
        if exc.status not in (400, 422):
            raise
        line = line_of(text, exc.field) or error_line(text)
        error = {"message": exc.message, "field": exc.field, "line": line}
        return await _journey_page(request, session, name, text=text, error=error, status=422)
    return redirect(f"/journeys/{segment(name)}?version={saved['version']}")


@router.post("/journeys/{name}/simulate", summary="Dry-run a customer's path")
async def simulate(request: Request, session: Current, name: str) -> Response:
    form = await read_form(request)
    session.check_form(form)
    version = int(form["version"]) if form.get("version", "").isdigit() else None
    # A first order placed now and delivered two days later: the common path.
    now = runtime_of(request).clock.now()
    events = [
        {"type": "order.placed", "at": now.isoformat(), "data": {"order_id": "sim-1"}},
        {"type": "order.delivered", "at": (now + timedelta(days=2)).isoformat()},
    ]
    try:
        result = await session.backend.post(
            "journeys",
            f"/v1/journeys/{segment(name)}/simulate",
            json={"events": events, **({"version": version} if version else {})},
        )
    except BackendError as exc:
        result = {"error": exc.message}
    return await _journey_page(request, session, name, version, simulation=result)


@router.post("/journeys/{name}/activate", summary="Make a version the one new customers enter")
async def activate(request: Request, session: Current, name: str) -> Response:
    form = await read_form(request)
    session.check_form(form)
    session.require_write()
    version = int(form["version"]) if form.get("version", "").isdigit() else None
    await session.backend.post(
        "journeys",
        f"/v1/journeys/{segment(name)}/activate",
        json={"version": version} if version else {},
    )
    return redirect(f"/journeys/{segment(name)}")


@router.post("/journeys/{name}/migrate", summary="Move waiting instances to the active version")
async def migrate(request: Request, session: Current, name: str) -> Response:
    """A dry run first (``dry_run=1``: the report only), then the move; instances whose
    place has no equivalent in the active version stay, and the report says why."""
    form = await read_form(request)
    session.check_form(form)
    # Even the dry run: the orchestrator's migrate API takes journeys:write for both.
    session.require_write()
    dry_run = form.get("dry_run") == "1"
    try:
        report = await session.backend.post(
            "journeys", f"/v1/journeys/{segment(name)}/migrate", json={"dry_run": dry_run}
        )
    except BackendError as exc:
        if exc.status not in (409, 422):
            raise
        report = {"error": exc.message}
    return await _journey_page(request, session, name, migration=report)
