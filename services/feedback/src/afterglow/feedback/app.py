"""The feedback service: surveys and their page, reviews, metrics."""

from __future__ import annotations

from fastapi import FastAPI

from afterglow.events import catalog as c
from afterglow.feedback import api, export, handlers, pages
from afterglow.feedback.models import api_keys, tables
from afterglow.feedback.settings import FeedbackSettings
from afterglow.kit.app import ServiceSpec, create_service_app
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
        c.SurveySent,
        c.SurveyResponded,
        c.ReviewSubmitted,
        c.ReviewPublished,
        c.MessageRequested,
    ),
)


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
        clock=clock,
    )
