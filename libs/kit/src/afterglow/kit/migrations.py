"""Alembic wiring: one history per service schema, run from code or from env.py.

A service's ``migrations/env.py`` is two lines::

    from afterglow.kit.migrations import run_env
    run_env(target_metadata)

and its first revision calls :func:`create_platform_tables` for the tables the libraries
own (outbox, inbox, api_keys).
"""

from __future__ import annotations

import asyncio
from typing import Any

from alembic import command, context
from alembic.config import Config
from sqlalchemy import MetaData, Table, pool, text
from sqlalchemy.engine import Connection
from sqlalchemy.ext.asyncio import async_engine_from_config

from afterglow.events.migrations import create_event_tables, drop_event_tables
from afterglow.events.tables import EventTables


def create_platform_tables(op: Any, tables: EventTables, api_keys: Table) -> None:
    """Outbox, inbox (with the relay's NOTIFY trigger) and api_keys, in one call."""
    create_event_tables(op.get_bind(), tables)
    api_keys.create(op.get_bind())


def drop_platform_tables(op: Any, tables: EventTables, api_keys: Table) -> None:
    api_keys.drop(op.get_bind())
    drop_event_tables(op.get_bind(), tables)


def alembic_config(script_location: str, database_url: str) -> Config:
    cfg = Config()
    cfg.set_main_option("script_location", script_location)
    cfg.set_main_option("sqlalchemy.url", database_url.replace("%", "%%"))
    return cfg


def upgrade(script_location: str, database_url: str, revision: str = "head") -> None:
    """Run a service's migrations (blocking; call from a thread inside an event loop)."""
    command.upgrade(alembic_config(script_location, database_url), revision)


async def upgrade_async(script_location: str, database_url: str) -> None:
    # env.py runs its own event loop; give it a thread of its own.
    await asyncio.to_thread(upgrade, script_location, database_url)


def run_env(target_metadata: MetaData) -> None:
    """The body of every service's env.py (online mode, asyncpg)."""
    schema = target_metadata.schema
    assert schema, "service metadata must name its schema"
    config = context.config

    def do_run(connection: Connection) -> None:
        connection.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
        context.configure(
            connection=connection,
            target_metadata=target_metadata,
            version_table_schema=schema,
            include_schemas=False,
        )
        with context.begin_transaction():
            # Two replicas' migration Jobs must not run the same revision at once.
            connection.execute(text("SELECT pg_advisory_xact_lock(hashtext(:s))"), {"s": schema})
            context.run_migrations()

    async def run_async() -> None:
        engine = async_engine_from_config(
            config.get_section(config.config_ini_section, {}),
            prefix="sqlalchemy.",
            poolclass=pool.NullPool,
        )
        async with engine.connect() as connection:
            await connection.run_sync(do_run)
            await connection.commit()
        await engine.dispose()

    asyncio.run(run_async())
