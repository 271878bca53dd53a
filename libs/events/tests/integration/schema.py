"""A small service schema of the library's own tests: outbox, inbox and a table that
records every application of an event (duplicates would show as extra rows)."""

from __future__ import annotations

from sqlalchemy import Column, MetaData, Table, Text, text
from sqlalchemy.ext.asyncio import AsyncEngine

from afterglow.events import event_tables
from afterglow.events.migrations import create_event_tables

SCHEMA = "eventtests"
metadata = MetaData(schema=SCHEMA)
TABLES = event_tables(metadata)
applied = Table(
    "applied",
    metadata,
    Column("event_id", Text, nullable=False),
    Column("tenant_id", Text, nullable=False),
    Column("consumer", Text, nullable=False),
)


async def install(engine: AsyncEngine) -> None:
    async with engine.begin() as conn:
        await conn.execute(text("SELECT pg_advisory_xact_lock(4242)"))
        exists = (
            await conn.execute(
                text("SELECT 1 FROM information_schema.schemata WHERE schema_name = :s"),
                {"s": SCHEMA},
            )
        ).first()
        if exists:
            return
        await conn.execute(text(f"CREATE SCHEMA {SCHEMA}"))
        await conn.run_sync(lambda c: create_event_tables(c, TABLES))
        await conn.run_sync(lambda c: applied.create(c))
