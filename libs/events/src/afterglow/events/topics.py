"""The topic registry and the idempotent ensure-topics step run at start-up.

One topic per noun of the catalog, so that all of one customer's events about orders
(placed, fulfilled, delivered, refunded) share a partition and keep their order. Each
topic has a dead-letter twin, ``<topic>.dlq``, with one partition: it is read by people,
not by throughput.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Any

from aiokafka.admin import AIOKafkaAdminClient, NewTopic
from aiokafka.errors import TopicAlreadyExistsError

log = logging.getLogger(__name__)

DLQ_SUFFIX = ".dlq"


@dataclass(frozen=True)
class Topic:
    name: str
    nouns: tuple[str, ...]
    partitions: int
    retention_days: int = 7
    description: str = ""

    @property
    def dlq(self) -> str:
        return self.name + DLQ_SUFFIX


TOPICS: tuple[Topic, ...] = (
    Topic("afterglow.orders", ("order",), 12, 14, "Order lifecycle from every platform"),
    Topic("afterglow.tickets", ("ticket",), 6, 14, "Support tickets from helpdesks"),
    Topic("afterglow.customers", ("customer",), 6, 30, "Consent and erasure requests"),
    Topic("afterglow.tenants", ("tenant",), 1, 3650, "API keys announced to every service"),
    Topic("afterglow.journeys", ("journey",), 6, 7, "Journey stage transitions"),
    Topic("afterglow.messages", ("message",), 12, 7, "Requests to message a customer"),
    Topic("afterglow.support", ("support",), 3, 14, "Escalations to the helpdesk"),
    Topic("afterglow.surveys", ("survey",), 6, 14, "Survey requests, sends and answers"),
    Topic("afterglow.reviews", ("review",), 6, 14, "Product reviews"),
    Topic("afterglow.loyalty", ("points", "tier"), 6, 14, "Points and tiers"),
    Topic("afterglow.referrals", ("referral",), 6, 14, "Referral codes and conversions"),
    Topic("afterglow.discounts", ("discount",), 6, 14, "Reward codes in the tenants' shops"),
)

TOPICS_BY_NAME: dict[str, Topic] = {t.name: t for t in TOPICS}
TOPICS_BY_NOUN: dict[str, Topic] = {noun: t for t in TOPICS for noun in t.nouns}


def all_topic_names(with_dlq: bool = True) -> list[str]:
    names = [t.name for t in TOPICS]
    return names + [t.dlq for t in TOPICS] if with_dlq else names


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
                        topic_configs={"retention.ms": retention},
                    )
                )
            if topic.dlq not in existing:
                wanted.append(
                    NewTopic(
                        topic.dlq,
                        1,
                        replication_factor,
                        topic_configs={"retention.ms": str(30 * 86_400_000)},
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
