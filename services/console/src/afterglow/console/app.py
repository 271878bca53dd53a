"""The console: the web app for the people who run the programme.

It owns no business data. Every figure and every action goes through the other
services' REST APIs with the signed-in tenant's own API key (no cross-schema reads), so
each service's scope checks and tenant filters apply to the console as to any client.
Its own schema holds only its copy of the API keys (to verify one at sign-in) and the
sessions."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.responses import Response

from afterglow.console import (
    dashboard,
    journeys_pages,
    keys_pages,
    queues_pages,
    settings_pages,
)
from afterglow.console.backend import BackendError
from afterglow.console.models import api_keys, tables
from afterglow.console.pages import page, redirect, router
from afterglow.console.sessions import BadCsrf, ReadOnly, SignInRequired
from afterglow.console.settings import ConsoleSettings
from afterglow.kit.app import ServiceSpec, create_service_app
from afterglow.kit.clock import Clock

SPEC = ServiceSpec(
    name="console",
    schema="console",
    app_factory="afterglow.console.app:create_app",
    migrations="afterglow.console:migrations",
    default_port=8006,
)


def create_app(settings: ConsoleSettings | None = None, clock: Clock | None = None) -> FastAPI:
    app = create_service_app(
        SPEC,
        settings or ConsoleSettings(),
        tables=tables,
        api_keys_table=api_keys,
        title="Afterglow console",
        description="Dashboards, customer timelines, work queues and journeys, as web pages.",
        routers=[
            router,
            dashboard.router,
            journeys_pages.router,
            queues_pages.router,
            settings_pages.router,
            keys_pages.router,
        ],
        clock=clock,
    )
    install_page_errors(app)
    return app


def install_page_errors(app: FastAPI) -> None:
    """Pages answer pages: no session sends the browser to sign in, a read-only key or
    a forged form gets a 403 page that says why."""

    async def to_sign_in(request: Request, exc: Exception) -> Response:
        return redirect("/sign-in")

    async def refused(request: Request, exc: Exception) -> Response:
        heading = "Read-only key" if isinstance(exc, ReadOnly) else "Form refused"
        return page(request, "notice.html", 403, heading=heading, text=str(exc))

    async def backend_failed(request: Request, exc: Exception) -> Response:
        assert isinstance(exc, BackendError)
        status = exc.status if exc.status in (403, 404, 409, 422) else 502
        return page(request, "notice.html", status, heading="Not done", text=str(exc))

    app.add_exception_handler(SignInRequired, to_sign_in)
    app.add_exception_handler(BackendError, backend_failed)
    app.add_exception_handler(ReadOnly, refused)
    app.add_exception_handler(BadCsrf, refused)
