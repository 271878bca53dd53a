"""Create the registry's topics (afterglow.events.topics) on the broker: the idempotent
ensure-topics step run at start-up.

Apart from the registry so that the registry stays pure data: the catalog, and through
it every service's domain, reads it without importing a Kafka client."""

from __future__ import annotations

import logging
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

from afterglow.events.topics import TIMESTAMP_CONFIG, TOPICS

log = logging.getLogger(__name__)


async def ensure_topics(
    bootstrap_servers: str,
    *,
    connection_options: dict[str, Any] | None = None,
    replication_factor: int = 1,
    max_partitions: int | None = None,
    timeout_ms: int = 15000,
) -> list[str]:
    """Create every topic and DLQ that does not exist yet; return the names created.

    Safe to run from every replica at every start: "already exists" is success. In
    production the topics are Strimzi KafkaTopic resources and this finds nothing to do.
    """
    options = connection_options or {"bootstrap_servers": bootstrap_servers}
    admin = AIOKafkaAdminClient(**options, request_timeout_ms=timeout_ms)
    await admin.start()
    try:
        existing = set(await admin.list_topics())
        wanted = []
        for topic in TOPICS:
            partitions = min(topic.partitions, max_partitions or topic.partitions)
            retention = str(topic.retention_days * 86_400_000)
            if topic.name not in existing:
                wanted.append(
                    NewTopic(
                        topic.name,
                        partitions,
                        replication_factor,
                        topic_configs={"retention.ms": retention, **TIMESTAMP_CONFIG},
                    )
                )
            if topic.dlq not in existing:
                wanted.append(
                    NewTopic(
                        topic.dlq,
                        1,
                        replication_factor,
                        topic_configs={"retention.ms": str(30 * 86_400_000), **TIMESTAMP_CONFIG},
                    )
                )
        if not wanted:
            return []
        response = await admin.create_topics(wanted, timeout_ms=timeout_ms)
        created = []
        for name, code, message in _topic_errors(response):
            if code == 0:
                created.append(name)
            elif code != TopicAlreadyExistsError.errno:
                raise RuntimeError(f"could not create topic {name}: {code} {message}")
        log.info("topics created", extra={"topics": created})
        return created
    finally:
        await admin.close()


def _topic_errors(response: object) -> list[tuple[str, int, str | None]]:
    rows = []
    for err in getattr(response, "topic_errors", []):
        name, code = err[0], err[1]
        message = err[2] if len(err) > 2 else None
        rows.append((name, code, message))
    return rows
