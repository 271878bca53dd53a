"""The one launcher behind ``make dev`` and the pytest fixtures.

It starts an embedded PostgreSQL unless ``DATABASE_URL`` is set and the embedded Tansu
broker unless ``KAFKA_BOOTSTRAP_SERVERS`` is set, creates the topics, runs every
installed service's migrations, and stops what it started on exit (Ctrl-C, a failing
test, an exception). Child processes also die with their parent (PDEATHSIG).
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
import os
import secrets
import time
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

from afterglow.devstack.brokers import TansuBroker
from afterglow.devstack.postgres import EmbeddedPostgres
from afterglow.events import KafkaConfig
from afterglow.events.topic_admin import ensure_topics
from afterglow.kit.migrations import upgrade
from afterglow.kit.registry import discover_services
from afterglow.kit.settings import ServiceSettings

log = logging.getLogger(__name__)


@dataclass
class Stack:
    database_url: str
    kafka_bootstrap_servers: str
    kafka_enable_idempotence: bool
    embedded_broker: bool
    timings: dict[str, float] = field(default_factory=dict)
    # The services' signing secrets for this stack (dev_signing_secrets).
    signing_secrets: dict[str, str] = field(default_factory=dict)

    def env(self) -> dict[str, str]:
        """The environment a service process (or a test) needs to find the stack."""
        return {
            "DATABASE_URL": self.database_url,
            "KAFKA_BOOTSTRAP_SERVERS": self.kafka_bootstrap_servers,
            "KAFKA_ENABLE_IDEMPOTENCE": "true" if self.kafka_enable_idempotence else "false",
            # Tests start and stop many apps on one broker: a consumer whose stop timed
            # out stays a member that heartbeats but never rejoins, and every app joining
            # its group after it waited the whole interval (120 s by default), which
            # timed out the fixtures that started services later in the session.
            "KAFKA_MAX_POLL_INTERVAL_MS": "30000",
            **self.kafka_group_env(),
            # Local receivers (the demo's, the tests') listen on 127.0.0.1.
            "OUTBOUND_ALLOW_PRIVATE": "true",
            # A fixed key for local databases only; production's comes from a Secret.
            "SECRETS_KEYS": os.environ.get("SECRETS_KEYS") or DEV_SECRETS_KEY,
            **self.signing_secrets,
        }

    def kafka_group_env(self) -> dict[str, str]:
        """Tansu holds each JoinGroup for half the session timeout, waiting for more
        members: every service start and every test module's app waited 8 s at the
        default 15 s, and 28 s after a member that never said goodbye (aiokafka sends no
        LeaveGroup from generation 0, where Tansu's groups start). 6 s is the least
        Apache Kafka accepts; heartbeats then go every 1.2 s."""
        if not self.embedded_broker:
            return {}
        return {"KAFKA_SESSION_TIMEOUT_MS": str(EMBEDDED_SESSION_TIMEOUT_MS)}


EMBEDDED_SESSION_TIMEOUT_MS = 6000


def kafka_config_from_env(**overrides: object) -> KafkaConfig:
    """A client of the stack whose ``env()`` is in ``os.environ`` (a test session's, or
    a worker process it started), built as the services build theirs
    (``ServiceSettings.kafka``: the same group timings)."""
    config = ServiceSettings().kafka(client_id="afterglow-tests")
    return replace(config, **overrides)  # type: ignore[arg-type]


DEV_SECRETS_KEY = "dev:" + base64.b64encode(b"afterglow-dev-key-not-for-prod!!").decode()
# The services refuse to start without these (afterglow.kit.settings.missing_secrets); a
# local stack makes its own instead of shipping a public default.
SIGNING_SECRETS = ("FEEDBACK_TOKEN_SECRET", "MESSAGING_UNSUBSCRIBE_SECRET")
SIGNING_SECRETS_FILE = "signing-secrets"


def dev_signing_secrets(state_dir: Path | None) -> dict[str, str]:
    """Signing secrets for a local stack: the environment's when set, else random ones,
    kept (owner-only) in ``state_dir`` when given, so that links in messages from
    yesterday's ``make dev`` still open today; the tests pass no folder and get fresh
    ones per session."""
    saved: dict[str, str] = {}
    path = state_dir / SIGNING_SECRETS_FILE if state_dir is not None else None
    if path is not None and path.exists():
        for line in path.read_text().splitlines():
            name, sep, value = line.partition("=")
            if sep and value:
                saved[name] = value
    out = {
        name: os.environ.get(name) or saved.get(name) or secrets.token_urlsafe(32)
        for name in SIGNING_SECRETS
    }
    if path is not None and {k: v for k, v in out.items() if k in saved} != out:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        with os.fdopen(fd, "w") as f:
            f.writelines(f"{k}={v}\n" for k, v in out.items())
    return out


def _env_flag(name: str, default: bool) -> bool:
    value = os.environ.get(name)
    return default if value is None else value.strip().lower() in ("1", "true", "yes", "on")


@contextlib.contextmanager
def running_stack(
    state_dir: Path, *, ephemeral: bool, migrate: bool = True, services: set[str] | None = None
) -> Iterator[Stack]:
    """Start (or reuse, from the environment) PostgreSQL and a broker; yield a Stack.

    ``services`` limits the migrations (default: every installed service, or those named
    in ``AFTERGLOW_ONLY_SERVICES``)."""
    state_dir = state_dir.resolve()
    state_dir.mkdir(parents=True, exist_ok=True)
    timings: dict[str, float] = {}
    postgres: EmbeddedPostgres | None = None
    broker: TansuBroker | None = None
    try:
        database_url = os.environ.get("DATABASE_URL")
        if not database_url:
            t0 = time.monotonic()
            suffix = f"-{os.getpid()}" if ephemeral else ""
            postgres = EmbeddedPostgres(state_dir / f"pgdata{suffix}", ephemeral=ephemeral)
            database_url = postgres.start()
            timings["postgres_start_s"] = time.monotonic() - t0
        bootstrap = os.environ.get("KAFKA_BOOTSTRAP_SERVERS")
        embedded_broker = not bootstrap
        if not bootstrap:
            t0 = time.monotonic()
            broker = TansuBroker(log_file=state_dir / "tansu.log")
            bootstrap = broker.start()
            timings["broker_start_s"] = time.monotonic() - t0
        idempotence = False if embedded_broker else _env_flag("KAFKA_ENABLE_IDEMPOTENCE", True)
        stack = Stack(
            database_url,
            bootstrap,
            idempotence,
            embedded_broker,
            timings,
            signing_secrets=dev_signing_secrets(None if ephemeral else state_dir),
        )
        t0 = time.monotonic()
        asyncio.run(ensure_topics(bootstrap))
        timings["topics_s"] = time.monotonic() - t0
        if migrate:
            t0 = time.monotonic()
            only = services or {
                s for s in os.environ.get("AFTERGLOW_ONLY_SERVICES", "").split(",") if s
            }
            for spec in discover_services(only or None).values():
                upgrade(spec.migrations, database_url)
            timings["migrations_s"] = time.monotonic() - t0
        yield stack
    finally:
        if broker is not None:
            broker.stop()
        if postgres is not None:
            postgres.stop()


ADMIN_TOKEN_FILE = "ingest-admin-token"  # noqa: S105 - a file name, not the token


def dev_admin_token(state_dir: Path, *, create: bool) -> str | None:
    """orders-ingest's admin token for a local stack: INGEST_ADMIN_TOKEN when set, else
    the one ``make dev`` keeps in its state folder (made on first start, owner-only), so
    ``make demo`` and the CLI find it without anyone copying it around."""
    token = os.environ.get("INGEST_ADMIN_TOKEN")
    if token:
        return token
    path = state_dir / ADMIN_TOKEN_FILE
    if path.exists():
        return path.read_text().strip() or None
    if not create:
        return None
    state_dir.mkdir(parents=True, exist_ok=True)
    token = secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(token + "\n")
    return token
