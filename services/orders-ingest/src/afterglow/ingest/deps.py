"""orders-ingest's dependencies beyond the kit's runtime, one typed object built in the
lifespan (:func:`build_deps`, app.py) for routes (:func:`get_deps`), consumers and
workers (:func:`deps_of`)."""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from fastapi import Request

from afterglow.ingest.directory import TenantDirectory
from afterglow.ingest.discounts.platforms import Shops
from afterglow.ingest.group_commit import DeliveryWriter
from afterglow.ingest.requesters import RequesterCache
from afterglow.ingest.settings import IngestSettings
from afterglow.kit.app import Runtime, deps_as, runtime_of


@dataclass
class IngestDeps:
    settings: IngestSettings
    # The webhook hot path's group commit (its writer tasks start in app.py's on_start).
    writer: DeliveryWriter
    # The receivers' cache of tenants and secrets.
    directory: TenantDirectory
    # Set by the writer after each commit: this process's processing worker wakes.
    processing_wakeup: asyncio.Event
    # Set when an escalation is recorded: the escalation worker wakes.
    escalation_wakeup: asyncio.Event
    # The reward-code platform caller (one cost bucket per shop, shared by every round).
    discount_shops: Shops
    # Zendesk requesters known by id only, looked up before each processing round.
    requester_cache: RequesterCache = field(default_factory=RequesterCache)


def build_deps(runtime: Runtime) -> IngestDeps:
    settings = runtime.settings
    assert isinstance(settings, IngestSettings)
    assert runtime.http is not None  # the lifespan creates it before the deps
    processing_wakeup = asyncio.Event()
    writer = DeliveryWriter(
        runtime.engine,
        max_waiting=settings.ingest_intake_max_waiting,
        max_batch=settings.ingest_intake_max_batch,
        retry_after_s=settings.ingest_intake_retry_after_s,
        on_commit=processing_wakeup.set,
    )
    return IngestDeps(
        settings=settings,
        writer=writer,
        directory=TenantDirectory(runtime.sessionmaker, settings.ingest_directory_ttl_s),
        processing_wakeup=processing_wakeup,
        escalation_wakeup=asyncio.Event(),
        discount_shops=Shops(runtime.http, allow_private=settings.outbound_allow_private),
    )


def deps_of(runtime: Runtime) -> IngestDeps:
    return deps_as(runtime, IngestDeps)


def get_deps(request: Request) -> IngestDeps:
    """The FastAPI dependency: ``deps: Annotated[IngestDeps, Depends(get_deps)]``."""
    return deps_of(runtime_of(request))
