"""App factory of the journey orchestrator: the journey engine and the messaging
dispatcher share one service, one schema and one wiring."""

from __future__ import annotations

from fastapi import FastAPI

from afterglow.events import catalog as c
from afterglow.journeys import api, export, handlers, metrics_api, step_counts, workers
from afterglow.journeys.deps import build_deps
from afterglow.journeys.messaging import api as messaging_api
from afterglow.journeys.messaging import channel_api
from afterglow.journeys.messaging import dispatcher as messaging_dispatcher
from afterglow.journeys.messaging import handlers as messaging_handlers
from afterglow.journeys.messaging import redeliver as messaging_redeliver
from afterglow.journeys.models import SCHEMA, api_keys, tables
from afterglow.journeys.settings import Settings
from afterglow.kit.app import Runtime, ServiceSpec, Worker, create_service_app
from afterglow.kit.clock import Clock
from afterglow.kit.export import export_router

SPEC = ServiceSpec(
    name="journeys",
    schema=SCHEMA,
    app_factory="afterglow.journeys.app:create_app",
    migrations="afterglow.journeys:migrations",
    default_port=8002,
    # The engine and messaging keep separate groups: a backlog of messages to queue
    # must not hold up journeys, nor the other way round.
    consumers=(*handlers.CONSUMERS, *messaging_handlers.CONSUMERS),
    produces=(
        c.JourneyStageChanged,
        c.MessageRequested,
        c.SurveyRequested,
        c.ReviewRequested,
        c.ReferralInvited,
        c.SupportEscalationRequested,
        # messaging announces an unsubscribe taken through its own link
        c.CustomerUnsubscribed,
    ),
)


def create_app(settings: Settings | None = None, clock: Clock | None = None) -> FastAPI:
    settings = settings or Settings()

    def background(runtime: Runtime) -> list[Worker]:
        return workers.journey_workers(runtime) + messaging_dispatcher.messaging_workers(runtime)

    return create_service_app(
        SPEC,
        settings,
        tables=tables,
        api_keys_table=api_keys,
        title="Afterglow journey orchestrator",
        description="Customer journeys (onboarding, check-in, survey, advocacy) and the one "
        "door out for customer messages.",
        routers=[
            api.router,
            metrics_api.router,
            step_counts.router,
            messaging_api.router,
            messaging_redeliver.router,
            channel_api.router,
            export_router("journey-orchestrator", export.collect),
        ],
        workers=background,
        build_deps=build_deps,
        clock=clock,
    )
