"""The loyalty service: points ledger, tiers and rewards."""

from __future__ import annotations

from fastapi import FastAPI

from afterglow.events import catalog as c
from afterglow.kit.app import Runtime, ServiceSpec, Worker, create_service_app
from afterglow.kit.clock import Clock
from afterglow.kit.export import export_router
from afterglow.loyalty import metrics_api, rewards
from afterglow.loyalty.api import router
from afterglow.loyalty.deps import build_deps, deps_of
from afterglow.loyalty.export import collect
from afterglow.loyalty.handlers import CONSUMERS
from afterglow.loyalty.models import api_keys, tables
from afterglow.loyalty.settings import LoyaltySettings
from afterglow.loyalty.workers import WORKERS

SPEC = ServiceSpec(
    name="loyalty",
    schema="loyalty",
    app_factory="afterglow.loyalty.app:create_app",
    migrations="afterglow.loyalty:migrations",
    default_port=8004,
    # The ledger's groups, and the shop's answers about reward codes.
    consumers=(*CONSUMERS, rewards.REWARDS),
    produces=(
        c.PointsEarned,
        c.PointsRedeemed,
        c.PointsExpired,
        c.TierChanged,
        c.MessageRequested,
        c.DiscountRequested,
    ),
)


def _workers(runtime: Runtime) -> list[Worker]:
    return list(WORKERS)


async def _start_redeeming(runtime: Runtime) -> None:
    """The redemptions' group commit writer tasks; the lifespan cancels them on exit
    (what still waits is then answered 503)."""
    redemptions = deps_of(runtime).redemptions
    if redemptions.grouped:
        runtime.tasks += redemptions.group.start(redemptions.writers)


def create_app(settings: LoyaltySettings | None = None, clock: Clock | None = None) -> FastAPI:
    return create_service_app(
        SPEC,
        settings or LoyaltySettings(),
        tables=tables,
        api_keys_table=api_keys,
        title="Afterglow loyalty",
        description="Points ledger, tiers and rewards.",
        routers=[router, metrics_api.router, export_router(SPEC.name, collect)],
        workers=_workers,
        build_deps=build_deps,
        on_start=_start_redeeming,
        clock=clock,
    )
