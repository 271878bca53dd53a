"""The relay measures what waits in the outbox: rows not yet published, and the age of
the oldest. deploy/ alerts when that age passes a minute, so the numbers must be the
table's, not the relay's idea of it."""

from __future__ import annotations

from prometheus_client import REGISTRY
from sqlalchemy import text

from afterglow.events import Outbox, OutboxRelay

from .support import ticket_event


def _gauge(name: str, schema: str) -> float | None:
    return REGISTRY.get_sample_value(name, {"schema": schema})


async def test_backlog_and_oldest_unsent_age_follow_the_table(
    tenant_id, engine, sessionmaker, tables, producer
):
    relay = OutboxRelay(engine, tables, producer)
    # Whatever earlier tests left unsent goes first: the gauges then see only our rows.
    while await relay.publish_once():
        pass
    events = [ticket_event(tenant_id, customer=f"c-{i}") for i in range(3)]
    async with sessionmaker.begin() as s:
        await Outbox(tables).add(s, *events)
        # one of them committed two minutes ago and still not published
        await s.execute(
            text(
                f'UPDATE "{tables.schema}".outbox '  # noqa: S608 - the test schema
                "SET created_at = now() - interval '2 minutes' WHERE event_id = :id"
            ),
            {"id": events[0].id},
        )

    await relay.measure_backlog()
    assert _gauge("afterglow_outbox_backlog_rows", tables.schema) == 3
    oldest = _gauge("afterglow_outbox_oldest_unsent_age_seconds", tables.schema)
    assert oldest is not None and 120 <= oldest < 600

    while await relay.publish_once():
        pass
    await relay.measure_backlog()
    assert _gauge("afterglow_outbox_backlog_rows", tables.schema) == 0
    assert _gauge("afterglow_outbox_oldest_unsent_age_seconds", tables.schema) == 0
