"""What the cross-service tests here share: an in-process orders-ingest's settings on
the session's stack (its own broker options, the module's admin token, fast relay, no
reconciliation rounds), each module adding what its loop needs."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from afterglow.devstack.stack import Stack
from afterglow.ingest.settings import IngestSettings


@pytest.fixture(scope="session")
def ingest_settings(stack: Stack) -> Callable[..., IngestSettings]:
    def make(admin_token: str, **overrides: Any) -> IngestSettings:
        base: dict[str, Any] = {
            "database_url": stack.database_url,
            "kafka_bootstrap_servers": stack.kafka_bootstrap_servers,
            "kafka_enable_idempotence": stack.kafka_enable_idempotence,
            "ingest_admin_token": admin_token,
            "relay_poll_interval_s": 0.1,
            "ingest_reconcile_interval_s": 3600,
            "log_json": False,
            "log_level": "WARNING",
        }
        return IngestSettings(**{**base, **overrides})

    return make
