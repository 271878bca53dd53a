"""The feedback service: surveys and their page, reviews, metrics."""

from __future__ import annotations

from fastapi import FastAPI

from afterglow.feedback import api, export, handlers, pages, support
from afterglow.feedback.models import api_keys, tables
from afterglow.feedback.settings import FeedbackSettings
from afterglow.kit.app import ConsumerSpec, Runtime, ServiceSpec, Worker, create_service_app
from afterglow.kit.clock import Clock
from afterglow.kit.export import export_router

SPEC = ServiceSpec(
    name="feedback",
    schema="feedback",
    app_factory="afterglow.feedback.app:create_app",
    migrations="afterglow.feedback:migrations",
    default_port=8003,
)


def _consumers(runtime: Runtime) -> list[ConsumerSpec]:
    return [ConsumerSpec("events", handlers.build_handlers(runtime))]


def _workers(runtime: Runtime) -> list[Worker]:
    return [support.csat_worker]  # CSAT surveys 24 h after a ticket is solved


def create_app(settings: FeedbackSettings | None = None, clock: Clock | None = None) -> FastAPI:
    return create_service_app(
        SPEC,
        settings or FeedbackSettings(),
        tables=tables,
        api_keys_table=api_keys,
        title="Afterglow feedback",
        description="NPS/CSAT/CES surveys with a hosted page, product reviews, metrics.",
        routers=[
            pages.router,
            api.router,
            export_router(SPEC.name, export.collect, erased=export.erased),
        ],
        consumers=_consumers,
        workers=_workers,
        clock=clock,
    )
