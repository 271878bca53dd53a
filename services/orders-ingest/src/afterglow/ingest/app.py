"""orders-ingest: the app factory and the service spec."""

from __future__ import annotations

import asyncio
import logging

import sqlalchemy.exc
from fastapi import FastAPI, Request
from fastapi.responses import JSONResponse
from starlette.middleware import Middleware

from afterglow.events import catalog as c
from afterglow.ingest import customer_lookup, escalations, export, metrics
from afterglow.ingest.api import admin, operators, rest, tenant_keys, webhooks
from afterglow.ingest.deps import build_deps, deps_of
from afterglow.ingest.discounts import api as discounts_api
from afterglow.ingest.discounts import handlers as discounts_handlers
from afterglow.ingest.fastpath import ShopifyFastPath
from afterglow.ingest.models import api_keys, tables
from afterglow.ingest.settings import IngestSettings
from afterglow.ingest.workers import WORKERS
from afterglow.kit.app import Runtime, ServiceSpec, Worker, create_service_app
from afterglow.kit.clock import Clock
from afterglow.kit.errors import error_response
from afterglow.kit.export import export_router

log = logging.getLogger(__name__)

SPEC = ServiceSpec(
    name="ingest",
    schema="ingest",
    app_factory="afterglow.ingest.app:create_app",
    migrations="afterglow.ingest:migrations",
    default_port=8001,
    # Where the world's events come in; it also consumes reward-code requests (it holds
    # the shop credentials), for spent codes orders, and escalations to open as helpdesk
    # tickets (it holds the helpdesk credentials too).
    consumers=(*discounts_handlers.CONSUMERS, escalations.ESCALATIONS),
    produces=(
        c.OrderPlaced,
        c.OrderFulfilled,
        c.OrderDelivered,
        c.OrderRefunded,
        c.OrderCancelled,
        c.TicketOpened,
        c.TicketUpdated,
        c.TicketResolved,
        c.CustomerErasureRequested,
        c.CustomerUnsubscribed,
        c.ApiKeyIssued,
        c.ApiKeyRevoked,
        c.DiscountCreated,
        c.DiscountFailed,
        c.DiscountUsed,
        c.DiscountRevoked,
        # a reward code's announcement, released once the code exists
        c.MessageRequested,
    ),
)


def _workers(runtime: Runtime) -> list[Worker]:
    return list(WORKERS)


async def _start_receiving(runtime: Runtime) -> None:
    """The webhook hot path's group commit writer tasks (the writer wakes this
    process's processing worker after each commit: deps.build_deps)."""
    deps = deps_of(runtime)
    writer = deps.writer
    for n in range(deps.settings.ingest_intake_writers):
        runtime.tasks.append(asyncio.create_task(writer.run(), name=f"delivery-writer-{n}"))


def create_app(settings: IngestSettings | None = None, clock: Clock | None = None) -> FastAPI:
    settings = settings or IngestSettings()
    app = _create_app(settings, clock)
    # Overload is never a 500: a pool that ran dry (QueuePool timeout) or a database
    # out of reach is a 503 with Retry-After, which every sender retries.
    for exc in (sqlalchemy.exc.TimeoutError, sqlalchemy.exc.OperationalError):
        app.add_exception_handler(exc, _unavailable)
    # Innermost of the app's middleware (metrics and nosniff still see every answer):
    # the Shopify webhook skips the router's layers (see fastpath).
    if settings.service_role in ("all", "api"):  # the webhook routes are mounted
        app.user_middleware.append(Middleware(ShopifyFastPath, fastapi_app=app))
    return app


async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
    log.warning("answered 503: %s", type(exc).__name__)
    return error_response(
        503,
        "unavailable",
        "the service is overloaded or its database unavailable; retry later",
        headers={"Retry-After": "1"},
    )


def _create_app(settings: IngestSettings, clock: Clock | None) -> FastAPI:
    return create_service_app(
        SPEC,
        settings,
        tables=tables,
        api_keys_table=api_keys,
        title="Afterglow orders-ingest",
        description="Signed webhooks from commerce platforms, helpdesks and trackers, and "
        "internal REST calls, become canonical order and ticket events.",
        routers=[
            webhooks.router,
            rest.router,
            operators.router,
            admin.router,
            tenant_keys.router,
            discounts_api.router,
            metrics.router,
            customer_lookup.router,
            export_router("orders-ingest", export.collect),
        ],
        workers=_workers,
        build_deps=build_deps,
        on_start=_start_receiving,
        clock=clock,
        openapi_tags=[
            {"name": "webhooks", "description": "Signed deliveries from platforms"},
            {"name": "orders and support events", "description": "Internal REST (API keys)"},
            {"name": "deliveries", "description": "Stored deliveries, for operators"},
            {"name": "admin", "description": "Tenant registry (admin token)"},
            {
                "name": "keys",
                "description": "The tenant's own API keys and webhook secrets (keys:admin)",
            },
            {
                "name": "platform actions",
                "description": "Reward codes created and disabled in the tenant's shop",
            },
            {"name": "privacy", "description": "A customer's data export (customers:export)"},
        ],
    )
