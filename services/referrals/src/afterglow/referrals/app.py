"""The referrals service: app factory, routes, consumers and workers."""

from __future__ import annotations

from fastapi import FastAPI

from afterglow.events import catalog as c
from afterglow.kit.app import Runtime, ServiceSpec, Worker, create_service_app
from afterglow.kit.clock import Clock
from afterglow.kit.export import export_router
from afterglow.referrals import review_queue
from afterglow.referrals.api import router, share_links
from afterglow.referrals.deps import build_deps
from afterglow.referrals.export import collect
from afterglow.referrals.handlers import CONSUMERS
from afterglow.referrals.metrics_api import router as metrics_router
from afterglow.referrals.models import api_keys, tables
from afterglow.referrals.settings import ReferralsSettings
from afterglow.referrals.workers import WORKERS

SPEC = ServiceSpec(
    name="referrals",
    schema="referrals",
    app_factory="afterglow.referrals.app:create_app",
    migrations="afterglow.referrals:migrations",
    default_port=8005,
    consumers=CONSUMERS,
    produces=(
        c.ReferralCodeIssued,
        c.ReferralConverted,
        c.ReferralRejected,
        c.MessageRequested,
        c.DiscountRequested,
        c.DiscountRevokeRequested,
    ),
)


def _workers(runtime: Runtime) -> list[Worker]:
    return list(WORKERS)


def create_app(settings: ReferralsSettings | None = None, clock: Clock | None = None) -> FastAPI:
    return create_service_app(
        SPEC,
        settings or ReferralsSettings(),
        tables=tables,
        api_keys_table=api_keys,
        title="Afterglow referrals",
        description="Referral codes, attribution, fraud checks and double-sided rewards.",
        routers=[
            router,
            metrics_router,
            review_queue.router,
            share_links,
            export_router(SPEC.name, collect),
        ],
        workers=_workers,
        build_deps=build_deps,
        clock=clock,
    )
