"""afterglow.events: the catalog, envelope, topics, outbox and consumer runtime.

Every service produces through :class:`Outbox` (inside its own transaction) and consumes
through :class:`EventConsumer` (inbox, retries, DLQ). See DESIGN.md, "Delivery guarantees".
"""

from afterglow.events import catalog
from afterglow.events.batch import BatchHandler, EventHandler
from afterglow.events.catalog import EVENT_TYPES, EventData, Money, topic_for
from afterglow.events.consumer import EventConsumer, Handler
from afterglow.events.envelope import (
    CloudEvent,
    InvalidEventData,
    KafkaRecord,
    MalformedEvent,
    UnknownEventType,
    derived_event_id,
    from_record,
    to_record,
)
from afterglow.events.failures import (
    PermanentError,
    RetryPolicy,
    TransientError,
    Verdict,
    classify,
)
from afterglow.events.kafka import KafkaConfig, build_consumer, build_producer
from afterglow.events.outbox import Outbox, OutboxRelay, OutboxRow, outbox_row
from afterglow.events.shutdown import cancel_and_wait, stop_within
from afterglow.events.subscriptions import ConsumerGroup, Subscription, on, on_batch
from afterglow.events.tables import EventTables, event_tables
from afterglow.events.topic_admin import ensure_topics
from afterglow.events.topics import TOPICS, Topic

__all__ = [
    "EVENT_TYPES",
    "TOPICS",
    "BatchHandler",
    "CloudEvent",
    "ConsumerGroup",
    "EventConsumer",
    "EventData",
    "EventHandler",
    "EventTables",
    "Handler",
    "InvalidEventData",
    "KafkaConfig",
    "KafkaRecord",
    "MalformedEvent",
    "Money",
    "Outbox",
    "OutboxRelay",
    "OutboxRow",
    "PermanentError",
    "RetryPolicy",
    "Subscription",
    "Topic",
    "TransientError",
    "UnknownEventType",
    "Verdict",
    "build_consumer",
    "build_producer",
    "cancel_and_wait",
    "catalog",
    "classify",
    "derived_event_id",
    "ensure_topics",
    "event_tables",
    "from_record",
    "on",
    "on_batch",
    "outbox_row",
    "stop_within",
    "to_record",
    "topic_for",
]
