from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy.ext.asyncio import AsyncEngine, async_sessionmaker, create_async_engine

from afterglow.devstack.stack import Stack, kafka_config_from_env
from afterglow.events import KafkaConfig, build_producer

from . import schema  # shared with worker.py, which runs as a script
from .support import make_consumer


@pytest.fixture(scope="session")
async def engine(stack: Stack) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(stack.database_url, pool_size=10)
    await schema.install(engine)
    yield engine
    await engine.dispose()


@pytest.fixture(scope="session")
def sessionmaker(engine: AsyncEngine) -> async_sessionmaker:
    return async_sessionmaker(engine, expire_on_commit=False)


@pytest.fixture(scope="session")
def kafka(stack: Stack) -> KafkaConfig:
    # From the environment the stack fixture set, as the worker processes read it.
    return kafka_config_from_env(send_timeout_s=10)


@pytest.fixture(scope="session")
async def producer(kafka: KafkaConfig):
    p = build_producer(kafka)
    await p.start()
    yield p
    await p.stop()


@pytest.fixture
def tables():
    return schema.TABLES


@pytest.fixture
def applied():
    return schema.applied


@pytest.fixture
def worker_script() -> Path:
    return Path(__file__).parent / "worker.py"


@pytest.fixture
def consumer_for(tenant_id, sessionmaker, tables, kafka, producer, applied) -> Callable[..., Any]:
    """:func:`support.make_consumer` for this test's tenant, database, broker and
    ``applied`` table: a test passes only what is its own (handler, group, retry,
    batch sizes)."""
    return functools.partial(
        make_consumer, tenant_id, sessionmaker, tables, kafka, producer, applied
    )
