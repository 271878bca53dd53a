"""The topic registry (pure data: the catalog and every service's domain read it; the
ensure-topics step that talks to the broker is :mod:`afterglow.events.topic_admin`).

One topic per noun of the catalog, so that all of one customer's events about orders
(placed, fulfilled, delivered, refunded) share a partition and keep their order. Each
topic has a dead-letter twin, ``<topic>.dlq``, with one partition: it is read by people,
not by throughput.
"""

from __future__ import annotations

from dataclasses import dataclass

DLQ_SUFFIX = ".dlq"
# Every topic's records carry the broker's clock, not the producer's. With the default
# (CreateTime), Apache Kafka 4 refuses a record stamped more than an hour ahead of its
# own clock (log.message.timestamp.after.max.ms): a service whose clock jumped forward a
# week had every outbox write refused (InvalidTimestampError) until its clock came back,
# and retention would count from the wrong instant. Nothing of ours reads the record
# timestamp; event time is the envelope's ``time``.
TIMESTAMP_CONFIG = {"message.timestamp.type": "LogAppendTime"}


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
