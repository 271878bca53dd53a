"""The service app factory: one wiring for every service, API and workers alike.

A service describes itself with a :class:`ServiceSpec` and builds its app with
:func:`create_service_app`. The lifespan owns every client (engine, producer, consumer
tasks, httpx client) and closes them on exit. ``SERVICE_ROLE`` decides what one process
runs: ``all`` (dev), ``api`` (routes and the outbox relay) or ``worker`` (consumers,
background loops and the relay); Kubernetes scales the two roles separately.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal, TypeVar

import httpx
from aiokafka import AIOKafkaProducer
from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, Gauge, Histogram, generate_latest
from pydantic import BaseModel, Field
from sqlalchemy import Table, text
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession, async_sessionmaker
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from afterglow.events import (
    ConsumerGroup,
    EventConsumer,
    EventData,
    EventTables,
    Outbox,
    OutboxRelay,
    RetryPolicy,
    build_producer,
    cancel_and_wait,
    ensure_topics,
    stop_within,
    topic_for,
)
from afterglow.events.subscriptions import type_of
from afterglow.kit import heap, openapi, secretbox
from afterglow.kit.auth import API_KEYS, ApiKeyStore, KeyVerifier, batched_verifier
from afterglow.kit.clock import Clock, SystemClock
from afterglow.kit.db import create_engine, create_sessionmaker, writer_engine
from afterglow.kit.dlq_api import dlq_router
from afterglow.kit.errors import install_error_handlers
from afterglow.kit.logs import configure_logging
from afterglow.kit.routing import service_router, unbounded_routes
from afterglow.kit.settings import ServiceSettings, missing_secrets
from afterglow.kit.tracing import (
    TracingMiddleware,
    configure_tracing,
    flush_spans,
    instrument_engine,
    instrument_http,
)

log = logging.getLogger(__name__)

HTTP_LATENCY = Histogram(
    "afterglow_http_request_duration_seconds",
    "HTTP request latency",
    ["service", "method", "route", "status"],
)
# The verdict of the last /readyz (kubelet asks every few seconds): 1 ready, 0 not. The
# alert on readiness failing (deploy/) reads it from the pod itself, so it needs no
# kube-state-metrics, and the metrics Service scrapes unready pods too.
READY = Gauge("afterglow_ready", "1 if this pod's last /readyz answered ready, else 0")


@dataclass(frozen=True)
class ServiceSpec:
    """How the launcher, the CLI and the deploy generator find a service, and what it
    says about itself on Kafka.

    ``consumers`` are the service's consumer groups (its handlers' ``CONSUMERS``; the
    group id is ``<name>.<group>``; the "tenants" group, :data:`afterglow.kit.auth.API_KEYS`,
    is added to every service); ``produces`` the catalog classes it emits (a contract
    test checks it against the classes its code builds). deploy/generate.py derives the
    consumer groups, KEDA triggers, topics and ACLs of deploy/base from both, so the
    manifests cannot drift from the code.
    """

    name: str  # also the consumer group prefix and the Kafka client id
    schema: str  # its PostgreSQL schema
    app_factory: str  # "module:function" returning a FastAPI app
    migrations: str  # Alembic script location, "package:folder"
    default_port: int
    consumers: tuple[ConsumerGroup[Any], ...] = ()
    produces: tuple[type[EventData], ...] = ()

    def consumer_groups(self) -> tuple[ConsumerGroup[Any], ...]:
        """Every consumer group the service runs, API_KEYS first."""
        return (API_KEYS, *self.consumers)

    def produced_topics(self) -> list[str]:
        return sorted({topic_for(type_of(cls)) for cls in self.produces})


@dataclass
class Runtime:
    """Every client of a running service, created and closed by the lifespan."""

    spec: ServiceSpec
    settings: ServiceSettings
    engine: AsyncEngine
    sessionmaker: async_sessionmaker[AsyncSession]
    tables: EventTables
    outbox: Outbox
    api_keys: ApiKeyStore
    clock: Clock
    producer: AIOKafkaProducer | None = None
    http: httpx.AsyncClient | None = None
    relay: OutboxRelay | None = None
    consumers: list[EventConsumer] = field(default_factory=list)
    tasks: list[asyncio.Task[Any]] = field(default_factory=list)
    # The service's own typed dependencies (its ``Deps`` dataclass: typed settings,
    # service objects, caches, wake-up events), built by ``build_deps`` in the lifespan.
    # Read through the service's ``deps_of``/``get_deps``, never by a string key: a
    # string lookup was typed Any and failed only at run time when a key was misspelt.
    deps: Any = None
    # The routes' API keys, verified in batches (auth.batched_verifier); None: one
    # lookup per request (a runtime assembled by hand).
    key_verifier: KeyVerifier | None = None
    # The group commits' writers' own pool, no ping on checkout (kit.db.writer_engine);
    # an API process has one, a worker-only one (or a runtime assembled by hand) not.
    writer_engine: AsyncEngine | None = None

    def writer_sessionmaker(self) -> async_sessionmaker[AsyncSession]:
        """Sessions for a group commit's writer tasks: on :attr:`writer_engine` when
        there is one, else the main pool's."""
        if self.writer_engine is None:
            return self.sessionmaker
        return create_sessionmaker(self.writer_engine)


Worker = Callable[[Runtime], Awaitable[None]]


def runtime_of(request: Request) -> Runtime:
    """The running service's clients, for a route (the lifespan put them on the app)."""
    runtime: Runtime = request.app.state.runtime
    return runtime


D = TypeVar("D")


def deps_as(runtime: Runtime, cls: type[D]) -> D:
    """The service's typed dependencies, checked to be ``cls`` (a service's ``deps_of``
    is this with its own class). Raises RuntimeError when the lifespan did not build
    them (a runtime assembled by hand, as a CLI does, has none)."""
    deps = runtime.deps
    if not isinstance(deps, cls):
        raise RuntimeError(f"{runtime.spec.name}: no {cls.__name__} on this runtime")
    return deps


def create_service_app(
    spec: ServiceSpec,
    settings: ServiceSettings,
    *,
    tables: EventTables,
    api_keys_table: Table,
    title: str,
    description: str,
    routers: Sequence[APIRouter] = (),
    workers: Callable[[Runtime], list[Worker]] | None = None,
    build_deps: Callable[[Runtime], Any] | None = None,
    on_start: Callable[[Runtime], Awaitable[None]] | None = None,
    clock: Clock | None = None,
    version: str = "0.1.0",
    openapi_tags: list[dict[str, Any]] | None = None,
) -> FastAPI:
    """The service's FastAPI app. Its start (the lifespan) fails when a secret the
    service needs is missing (:func:`afterglow.kit.settings.missing_secrets`, also on
    ``app.state.missing_secrets``); building it does not, so its OpenAPI document can be
    read anywhere. Raises TypeError when a router was not built with
    :func:`afterglow.kit.routing.service_router`.

    ``build_deps`` builds the service's typed dependencies (its ``Deps`` dataclass) from
    the runtime once its clients exist, before ``on_start``, the consumers and the
    workers; they are ``runtime.deps``, read through the service's ``deps_of`` (see
    :func:`deps_as`) and, in routes, its ``get_deps`` dependency."""
    missing = missing_secrets(spec.name, settings.required_secrets())
    unbounded = unbounded_routes(list(routers))
    if unbounded:
        raise TypeError(
            "routes must be built with afterglow.kit.routing.service_router (their JSON "
            f"bodies are then parsed within bounds): {', '.join(unbounded)}"
        )
    configure_logging(spec.name, settings.log_level, settings.log_json)
    tracing_on = configure_tracing(spec.name)
    runs_api = settings.service_role in ("all", "api")
    runs_workers = settings.service_role in ("all", "worker")

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        if missing is not None:
            raise missing
        secretbox.configure(settings.secrets_keys)
        engine = create_engine(
            settings.database_url,
            application_name=spec.name,
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
        )
        instrument_engine(engine)  # nothing while tracing is off
        runtime = Runtime(
            spec=spec,
            settings=settings,
            engine=engine,
            sessionmaker=create_sessionmaker(engine),
            tables=tables,
            outbox=Outbox(tables),
            api_keys=ApiKeyStore(api_keys_table),
            clock=clock or SystemClock(),
        )
        app.state.runtime = runtime
        if runs_api:
            runtime.writer_engine = writer_engine(
                settings.database_url,
                # Told apart from the main pool's in pg_stat_activity.
                application_name=f"{spec.name}-writers",
                pool_size=settings.db_writer_pool_size,
            )
            instrument_engine(runtime.writer_engine)
            runtime.key_verifier = batched_verifier(runtime.api_keys, runtime.writer_engine)
            runtime.tasks += runtime.key_verifier.start(2)
        kafka = settings.kafka(client_id=spec.name)

        async def recreate_topics() -> list[str]:
            return await ensure_topics(
                settings.kafka_bootstrap_servers,
                connection_options=kafka.connection_options(),
                replication_factor=settings.kafka_topic_replication_factor,
            )

        try:
            if settings.ensure_topics:
                await recreate_topics()
            runtime.producer = build_producer(kafka)
            await runtime.producer.start()
            runtime.http = instrument_http(
                httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=3.0))
            )

            async def relay_producer() -> AIOKafkaProducer:
                producer = build_producer(kafka)
                await producer.start()
                return producer

            # The relay's own producer, which it replaces when the broker refuses its
            # state (afterglow.events.outbox.PRODUCER_STATE_LOST); the consumers' DLQ
            # producer is not swapped from under them.
            runtime.relay = OutboxRelay(
                engine,
                tables,
                await relay_producer(),
                poll_interval_s=settings.relay_poll_interval_s,
                send_timeout_s=kafka.send_timeout_s,
                renew_producer=relay_producer,
            )
            relay = runtime.relay

            async def relaying(runtime: Runtime) -> None:
                await relay.run()

            # Supervised: the relay ending on an unexpected error would stop every event.
            runtime.tasks.append(
                asyncio.create_task(_supervise(relaying, runtime), name="outbox-relay")
            )
            # Before on_start, the consumers and the workers: they all read them.
            if build_deps is not None:
                runtime.deps = build_deps(runtime)
            if on_start is not None:
                await on_start(runtime)
            if runs_workers:
                retry = RetryPolicy(
                    attempts=settings.consumer_retry_attempts,
                    base_delay_s=settings.consumer_retry_base_delay_s,
                )
                for group in spec.consumer_groups():
                    runtime.consumers.append(
                        EventConsumer(
                            name=f"{spec.name}.{group.name}",
                            kafka=kafka,
                            sessionmaker=runtime.sessionmaker,
                            tables=tables,
                            handlers=group.handlers(runtime),
                            dlq_producer=runtime.producer,
                            retry=retry,
                            recreate_topics=recreate_topics if settings.ensure_topics else None,
                            max_records=settings.consumer_max_records,
                            parallel_partitions=settings.consumer_parallel_partitions,
                            coalesce_below=settings.consumer_coalesce_records,
                        )
                    )
                # Joining a group takes seconds and the groups are independent: join at once.
                await asyncio.gather(*(c.start() for c in runtime.consumers))
                for consumer in runtime.consumers:
                    # Supervised like the workers: an exception out of the poll loop (aiokafka
                    # asserting on a partition revoked mid-rebalance did) would otherwise
                    # leave the group without this member for the life of the process.
                    runtime.tasks.append(
                        asyncio.create_task(
                            _supervise(_consuming(consumer), runtime), name=consumer.name
                        )
                    )
                for worker in workers(runtime) if workers else []:
                    runtime.tasks.append(
                        asyncio.create_task(
                            _supervise(worker, runtime), name=getattr(worker, "__name__", "worker")
                        )
                    )
            heap.settle()
            log.info("service started", extra={"role": settings.service_role})
            yield
        finally:
            # Consumers leave their groups within their own 20 s bound.
            await cancel_and_wait(runtime.tasks, timeout_s=30, what="service shutdown")
            if runtime.producer is not None:
                await stop_within(runtime.producer.stop, timeout_s=10, what="producer")
            if runtime.relay is not None:
                await stop_within(runtime.relay.producer.stop, timeout_s=10, what="relay producer")
            if runtime.http is not None:
                await runtime.http.aclose()
            await engine.dispose()
            if runtime.writer_engine is not None:
                await runtime.writer_engine.dispose()
            if tracing_on:
                # The last batch's spans (a rolling restart would lose them otherwise).
                await asyncio.to_thread(flush_spans)
            log.info("service stopped")

    app = FastAPI(
        title=title,
        description=description,
        version=version,
        lifespan=lifespan,
        openapi_tags=openapi_tags,
    )
    app.state.missing_secrets = missing
    install_error_handlers(app)
    openapi.install(app)
    _install_metrics_middleware(app, spec.name)
    if tracing_on:
        # Outside the metrics and error handling: the span covers the whole answer.
        app.add_middleware(TracingMiddleware)
    # Added last, so outermost: every response, the error handlers' included.
    app.add_middleware(NoSniffMiddleware)
    app.include_router(_ops_router(settings))
    if runs_api:
        for router in routers:
            app.include_router(router)
        # Every consuming service's dead letters, for the console's DLQ queue
        # (kit.dlq_api). A service with no consumer group of its own (the console: only
        # the kit's API-key group) serves pages, not this JSON API.
        if spec.consumers:
            topics = sorted({t for g in spec.consumer_groups() for t in g.topics})
            app.include_router(dlq_router(spec.name, topics, settings.kafka(client_id=spec.name)))
    return app


def _consuming(consumer: EventConsumer) -> Worker:
    async def consume(runtime: Runtime) -> None:
        await consumer.run()  # stops its client when it ends; the next run() starts anew

    consume.__name__ = f"consumer {consumer.name}"
    return consume


async def _supervise(worker: Worker, runtime: Runtime) -> None:
    """Restart a background loop that crashed, with a bounded backoff."""
    backoff = 0.5
    while True:
        try:
            await worker(runtime)
            return
        except asyncio.CancelledError:
            raise
        except Exception:
            log.exception(
                "background loop crashed; restarting",
                extra={"loop": getattr(worker, "__name__", "worker")},
            )
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 30)


def _install_metrics_middleware(app: FastAPI, service: str) -> None:
    app.add_middleware(MetricsMiddleware, service=service)


class MetricsMiddleware:
    """Request latency by route and status, as plain ASGI: the ``@app.middleware``
    form (BaseHTTPMiddleware) runs each request through extra tasks and streams, which
    cost more CPU than a webhook's whole hot path (profiled under wrk)."""

    def __init__(self, app: ASGIApp, service: str) -> None:
        self.app = app
        self.service = service

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = time.perf_counter()
        status = 500  # no response started: the server answers 500

        async def send_noting_status(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = message["status"]
            await send(message)

        try:
            await self.app(scope, receive, send_noting_status)
        finally:
            path = getattr(scope.get("route"), "path", "unmatched")
            HTTP_LATENCY.labels(self.service, scope["method"], path, status).observe(
                time.perf_counter() - start
            )


class NoSniffMiddleware:
    """``X-Content-Type-Options: nosniff`` on every response: a browser must not guess
    that a JSON error echoing a customer's text, or a page, is something else (HTML or
    a script) and run it."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_header(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = [
                    (k, v)
                    for k, v in message.get("headers", [])
                    if k.lower() != b"x-content-type-options"
                ]
                headers.append((b"x-content-type-options", b"nosniff"))
                message = {**message, "headers": headers}
            await send(message)

        await self.app(scope, receive, send_with_header)


_READY = {
    "status": "ok",
    "checks": {
        "database": "ok",
        "loyalty.events": {"status": "ok", "last_poll_age_s": 0.4, "last_commit_age_s": 2.1},
    },
}


class Readiness(BaseModel):
    """What /readyz answers, ready (200) or not (503)."""

    status: Literal["ok", "unavailable"]
    checks: dict[str, Any] = Field(
        description="database: ok or the error's type; each consumer group: its status "
        "(ok, starting, stalled, blocked), problems and the ages of its last poll and commit"
    )


def _ops_router(settings: ServiceSettings) -> APIRouter:
    router = service_router(tags=["operations"])

    @router.get(
        "/healthz",
        summary="Liveness: the process answers",
        responses=openapi.example(200, {"status": "ok"}),
    )
    async def healthz() -> dict[str, str]:
        # Liveness checks nothing shared: a database outage must not restart every pod.
        return {"status": "ok"}

    @router.get(
        "/readyz",
        summary="Readiness: database reachable and consumers progressing",
        responses=openapi.errors(
            openapi.example(200, _READY, model=Readiness),
            openapi.example(
                503,
                {**_READY, "status": "unavailable", "checks": {"database": "error: OSError"}},
                "The database is unreachable or a consumer has not polled lately",
                model=Readiness,
            ),
        ),
    )
    async def readyz(request: Request) -> JSONResponse:
        runtime: Runtime = request.app.state.runtime
        checks: dict[str, Any] = {}
        ok = True
        try:
            async with asyncio.timeout(2):
                async with runtime.engine.connect() as conn:
                    await conn.execute(text("SELECT 1"))
            checks["database"] = "ok"
        except Exception as exc:
            ok = False
            checks["database"] = f"error: {type(exc).__name__}"
        now = time.time()
        for consumer in runtime.consumers:
            age = None if consumer.last_poll is None else round(now - consumer.last_poll, 1)
            healthy = (
                consumer.started and age is not None and age < settings.readiness_max_poll_age_s
            )
            # Polling is not progress: a partition parked on a database outage, an
            # offset found past the log end or a missing topic is reported by the
            # consumer itself, with the reason.
            problems = consumer.problems()
            status = "ok" if healthy else "starting" if consumer.last_poll is None else "stalled"
            if healthy and problems:
                healthy, status = False, "blocked"
            ok = ok and healthy
            checks[consumer.name] = {
                "status": status,
                "problems": problems,
                "last_poll_age_s": age,
                "last_commit_age_s": None
                if consumer.last_commit is None
                else round(now - consumer.last_commit, 1),
            }
        READY.set(1 if ok else 0)
        return JSONResponse(
            {"status": "ok" if ok else "unavailable", "checks": checks},
            status_code=200 if ok else 503,
        )

    @router.get(
        "/metrics",
        summary="Prometheus metrics (text exposition format)",
        response_class=Response,
        responses={
            200: {
                "content": {
                    CONTENT_TYPE_LATEST: {
                        "schema": {"type": "string"},
                        "example": "# TYPE afterglow_http_request_duration_seconds histogram\n...",
                    }
                }
            }
        },
    )
    async def metrics() -> Response:
        return Response(generate_latest(), media_type=CONTENT_TYPE_LATEST)

    return router
