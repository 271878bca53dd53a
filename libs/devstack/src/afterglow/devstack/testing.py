"""One harness for every service's tests: the real app on the session's stack.

Each service's conftest used to build the same five things by hand (the app with a
ManualClock, its lifespan under an ASGI client, a producer on the real broker, a tap
on the topics it emits, an API key helper). :func:`running_service` builds them once;
:func:`service_fixture` makes it a pytest fixture. A service's tests subclass
:class:`ServiceHarness` only for what is theirs (factories, probes).
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar, TypeVar

import httpx
import pytest
from aiokafka import AIOKafkaProducer
from fastapi import FastAPI

from afterglow.devstack.pytest_plugin import serve_app
from afterglow.devstack.stack import Stack
from afterglow.events import CloudEvent, KafkaConfig, build_producer, to_record
from afterglow.events.testing import TopicTap, eventually
from afterglow.kit.app import Runtime
from afterglow.kit.clock import Clock, ManualClock
from afterglow.kit.settings import ServiceSettings

START = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)

AppFactory = Callable[..., FastAPI]  # create_app(settings, clock)
H = TypeVar("H", bound="ServiceHarness")


@dataclass
class ServiceHarness:
    """A started service app and what its tests drive it with."""

    app: FastAPI
    client: httpx.AsyncClient
    clock: Any  # a ManualClock the tests move, unless the suite asked for another Clock
    producer: AIOKafkaProducer
    tap: TopicTap | None

    # The scopes an API key gets when a test names none (a service's harness sets them).
    default_scopes: ClassVar[tuple[str, ...]] = ()

    @property
    def runtime(self) -> Runtime:
        runtime: Runtime = self.app.state.runtime
        return runtime

    async def api_key(self, tenant: str, scopes: Sequence[str] | None = None) -> str:
        async with self.runtime.sessionmaker.begin() as s:
            key: str = await self.runtime.api_keys.create(
                s, tenant, list(scopes or self.default_scopes)
            )
        return key

    async def headers(self, tenant: str, scopes: Sequence[str] | None = None) -> dict[str, str]:
        """Authorization for a fresh API key of ``tenant``."""
        return {"Authorization": f"Bearer {await self.api_key(tenant, scopes)}"}

    async def publish(self, event: CloudEvent[Any]) -> None:
        """Put an event on the real broker, as its producing service would."""
        rec = to_record(event)
        await self.producer.send_and_wait(rec.topic, rec.value, key=rec.key, headers=rec.headers)


@contextlib.asynccontextmanager
async def running_producer(stack: Stack) -> AsyncIterator[AIOKafkaProducer]:
    producer = build_producer(
        KafkaConfig(
            stack.kafka_bootstrap_servers, enable_idempotence=stack.kafka_enable_idempotence
        )
    )
    await producer.start()
    try:
        yield producer
    finally:
        await producer.stop()


@contextlib.asynccontextmanager
async def running_service(
    stack: Stack,
    create_app: AppFactory,
    settings: ServiceSettings,
    *,
    harness: type[H] = ServiceHarness,  # type: ignore[assignment]
    clock: Clock | None = None,  # None: a ManualClock at ``start``
    start: datetime = START,
    topics: Sequence[str] = (),
    producer: AIOKafkaProducer | None = None,
    wait_ready: bool = False,
) -> AsyncIterator[H]:
    """``create_app(settings, clock)`` running its whole lifespan (relay, consumers,
    workers) on the session's stack, with a tap on ``topics`` opened before the app
    starts (so nothing it emits is missed) and a producer (``producer``, shared, or one
    of its own). ``wait_ready``: until /readyz answers 200 (its consumers joined)."""
    clock = clock or ManualClock(start)
    app = create_app(settings, clock)
    async with contextlib.AsyncExitStack() as stack_of:
        if producer is None:
            producer = await stack_of.enter_async_context(running_producer(stack))
        tap = None
        if topics:
            tap = await stack_of.enter_async_context(
                TopicTap(stack.kafka_bootstrap_servers, *topics)
            )
        client = await stack_of.enter_async_context(serve_app(app))
        if wait_ready:
            await eventually(
                lambda: client.get("/readyz"), lambda r: r.status_code == 200, timeout=60
            )
        yield harness(app=app, client=client, clock=clock, producer=producer, tap=tap)


def service_fixture(
    create_app: AppFactory,
    settings: Callable[[], ServiceSettings],
    *,
    harness: type[ServiceHarness] = ServiceHarness,
    scope: str = "module",
    start: datetime = START,
    topics: Sequence[str] = (),
    wait_ready: bool = False,
) -> Any:
    """A pytest fixture (assign it to a name in a conftest) yielding a started service.

    Module scope by default: an app left running would keep consuming in its service's
    consumer groups while later tests (other services, the e2e processes) use the same
    groups. ``settings`` is called inside the fixture, after the stack fixture has put
    the stack's addresses in the environment the settings read."""

    @pytest.fixture(scope=scope)  # type: ignore[call-overload]
    async def started_service(stack: Stack) -> AsyncIterator[ServiceHarness]:
        async with running_service(
            stack,
            create_app,
            settings(),
            harness=harness,
            start=start,
            topics=topics,
            wait_ready=wait_ready,
        ) as service:
            yield service

    return started_service
