"""The outbox and inbox tables, added to a service's own MetaData (its own schema).

Each service calls :func:`event_tables` once in its ``models.py``; its first Alembic
migration calls :func:`afterglow.events.migrations.create_event_tables`.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import (
    BigInteger,
    Column,
    DateTime,
    Index,
    Integer,
    LargeBinary,
    MetaData,
    SmallInteger,
    Table,
    Text,
    func,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB

# Rows are spread over this many shards by key. One relay at a time owns a shard
# (advisory lock), which is what keeps per-key order with several relay replicas.
OUTBOX_SHARDS = 16


@dataclass(frozen=True)
class EventTables:
    outbox: Table
    inbox: Table

    @property
    def schema(self) -> str:
        assert self.outbox.schema is not None
        return self.outbox.schema


def event_tables(metadata: MetaData) -> EventTables:
    """Define ``outbox`` and ``inbox`` in ``metadata`` (whose schema must be set)."""
    if metadata.schema is None:
        raise ValueError("the service MetaData must name its schema")
    outbox = Table(
        "outbox",
        metadata,
        Column("id", BigInteger, primary_key=True, autoincrement=True),
        Column("event_id", Text, nullable=False, unique=True),
        Column("event_type", Text, nullable=False),
        Column("topic", Text, nullable=False),
        Column("key", Text, nullable=False),
        Column("shard", SmallInteger, nullable=False),
        Column("headers", JSONB, nullable=False),
        Column("value", LargeBinary, nullable=False),
        Column("created_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Column("sent_at", DateTime(timezone=True)),
        Column("attempts", Integer, nullable=False, server_default=text("0")),
        Column("last_error", Text),
        Index("ix_outbox_unsent", "shard", "id", postgresql_where=text("sent_at IS NULL")),
        Index("ix_outbox_sent_at", "sent_at", postgresql_where=text("sent_at IS NOT NULL")),
    )
    inbox = Table(
        "inbox",
        metadata,
        Column("consumer", Text, primary_key=True),
        Column("event_id", Text, primary_key=True),
        Column("event_type", Text, nullable=False),
        Column("received_at", DateTime(timezone=True), nullable=False, server_default=func.now()),
        Index("ix_inbox_received_at", "received_at"),
    )
    return EventTables(outbox=outbox, inbox=inbox)


def notify_channel(schema: str) -> str:
    """The LISTEN/NOTIFY channel that wakes the relay of one schema."""
    return f"afterglow_outbox_{schema}"
