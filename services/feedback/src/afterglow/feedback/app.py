"""The feedback service: surveys and their page, reviews, metrics."""

from __future__ import annotations

from fastapi import FastAPI

from afterglow.events import catalog as c
from afterglow.feedback import api, export, handlers, metrics_api, pages
from afterglow.feedback.deps import build_deps
from afterglow.feedback.models import api_keys, tables
from afterglow.feedback.settings import FeedbackSettings
from afterglow.feedback.workers import WORKERS
from afterglow.kit.app import Runtime, ServiceSpec, Worker, create_service_app
from afterglow.kit.clock import Clock
from afterglow.kit.export import export_router

SPEC = ServiceSpec(
    name="feedback",
    schema="feedback",
    app_factory="afterglow.feedback.app:create_app",
    migrations="afterglow.feedback:migrations",
    default_port=8003,
    consumers=handlers.CONSUMERS,
    produces=(
        # the CSAT after a solved ticket is requested here (afterglow.feedback.support),
        # on the topic the journeys' requests and feedback's own survey events share
        c.SurveyRequested,
        c.SurveySent,
        c.SurveyResponded,
        c.ReviewSubmitted,
        c.ReviewPublished,
        c.MessageRequested,
    ),
)


def _workers(runtime: Runtime) -> list[Worker]:
    return list(WORKERS)


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
            metrics_api.router,
            export_router(SPEC.name, export.collect, erased=export.erased),
        ],
        workers=_workers,
        build_deps=build_deps,
        clock=clock,
    )
