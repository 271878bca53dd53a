"""DDL for the tables this library owns inside a service schema.

Takes a SQLAlchemy ``Connection``: in an Alembic revision pass ``op.get_bind()``.
"""

from __future__ import annotations

from sqlalchemy import text
from sqlalchemy.engine import Connection

from afterglow.events.tables import EventTables, notify_channel


def create_event_tables(conn: Connection, tables: EventTables) -> None:
    """Create outbox and inbox and the trigger that wakes the relay on commit.

    NOTIFY inside a transaction is delivered only when it commits, and a
    statement-level trigger sends one per INSERT statement, not one per row.
    """
    tables.outbox.create(conn)
    tables.inbox.create(conn)
    schema = tables.schema
    channel = notify_channel(schema)
    conn.execute(
        text(
            f'CREATE FUNCTION "{schema}".notify_outbox() RETURNS trigger LANGUAGE plpgsql AS $$ '
            f"BEGIN PERFORM pg_notify('{channel}', ''); RETURN NULL; END $$;"
        )
    )
    conn.execute(
        text(
            f'CREATE TRIGGER outbox_notify AFTER INSERT ON "{schema}".outbox '
            f'FOR EACH STATEMENT EXECUTE FUNCTION "{schema}".notify_outbox();'
        )
    )


def drop_event_tables(conn: Connection, tables: EventTables) -> None:
    schema = tables.schema
    conn.execute(text(f'DROP TRIGGER IF EXISTS outbox_notify ON "{schema}".outbox'))
    conn.execute(text(f'DROP FUNCTION IF EXISTS "{schema}".notify_outbox()'))
    tables.inbox.drop(conn)
    tables.outbox.drop(conn)
