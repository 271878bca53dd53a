"""Pytest fixtures on the real stack: embedded PostgreSQL and broker, or the ones named
by ``DATABASE_URL`` / ``KAFKA_BOOTSTRAP_SERVERS`` (``make test-kafka`` sets the latter).

The stack starts once per test session; tests isolate themselves by unique tenant ids,
never by wiping tables.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
from fastapi import FastAPI

from afterglow.devstack.stack import DEV_SECRETS_KEY, Stack, dev_signing_secrets, running_stack

_STATE_DIR = Path(os.environ.get("AFTERGLOW_TEST_STATE", ".afterglow/test"))


def pytest_configure(config: pytest.Config) -> None:
    # The services refuse to start without their secrets. The tests supply them here,
    # before any test module is imported (some build settings at import time): fresh
    # signing secrets per session, so that no test passes by knowing a fixed one.
    os.environ.setdefault("SECRETS_KEYS", DEV_SECRETS_KEY)
    for name, value in dev_signing_secrets(None).items():
        os.environ.setdefault(name, value)


@pytest.fixture(scope="session")
def stack() -> Iterator[Stack]:
    with running_stack(_STATE_DIR, ephemeral=True) as s:
        previous = {k: os.environ.get(k) for k in s.env()}
        os.environ.update(s.env())
        try:
            yield s
        finally:
            for k, v in previous.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


@pytest.fixture
def tenant_id() -> str:
    """A fresh tenant per test: the isolation unit (rows are never wiped)."""
    return f"t-{uuid.uuid4().hex[:12]}"


def new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:10]}"


@contextlib.asynccontextmanager
async def serve_app(
    app: FastAPI, base_url: str = "http://testserver"
) -> AsyncIterator[httpx.AsyncClient]:
    """Run an app's lifespan (consumers, relay) and talk to it in-process over ASGI."""
    async with app.router.lifespan_context(app):
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url=base_url) as client:
            yield client


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # kafka_only tests need Apache Kafka's idempotent producer; Tansu has none.
    if os.environ.get("KAFKA_BOOTSTRAP_SERVERS") and os.environ.get("AFTERGLOW_BROKER") == "kafka":
        return
    skip = pytest.mark.skip(
        reason="needs Apache Kafka (make test-kafka): Tansu has no idempotent producer"
    )
    for item in items:
        if "kafka_only" in item.keywords:
            item.add_marker(skip)
