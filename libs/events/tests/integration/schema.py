"""A small service schema of the library's own tests: outbox, inbox and a table that
records every application of an event (duplicates would show as extra rows)."""

from __future__ import annotations

from sqlalchemy import ARRAY, BigInteger, Column, Integer, MetaData, Table, Text, text
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
# Each application with its order and its transaction (only committed ones remain).
applied_in_order = Table(
    "applied_in_order",
    metadata,
    Column("seq", BigInteger, primary_key=True, autoincrement=True),
    Column("tenant_id", Text, nullable=False),
    Column("event_id", Text, nullable=False),
    Column("txid", BigInteger, nullable=False),
)
# Per customer: how many events were applied and which, in order (a read-modify-write
# that loses an update when two transactions apply one customer at once).
tally = Table(
    "tally",
    metadata,
    Column("tenant_id", Text, primary_key=True),
    Column("customer", Text, primary_key=True),
    Column("n", Integer, nullable=False),
    Column("seen", ARRAY(Text), nullable=False),
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
        if not exists:
            await conn.execute(text(f"CREATE SCHEMA {SCHEMA}"))
            await conn.run_sync(lambda c: create_event_tables(c, TABLES))
        for table in (applied, applied_in_order, tally):
            await conn.run_sync(lambda c, t=table: t.create(c, checkfirst=True))
