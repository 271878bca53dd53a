"""The relay's LISTEN connection stays able to hear NOTIFY for as long as it lives.

It used to run its keepalive through SQLAlchemy, which opened a transaction that never
ended; PostgreSQL holds notifications back from a session inside a transaction, so
after the first keepalive every relay fell back to its poll, and the server's
notification queue grew until every outbox write failed.
"""

from __future__ import annotations

from sqlalchemy import text

from afterglow.events import Outbox, OutboxRelay
from afterglow.events.testing import TopicTap, eventually

from .support import running, ticket_event

AN_HOUR_OF_KEEPALIVES = 120  # one each 30 s in production


async def listener_states(engine, relay: OutboxRelay) -> list[str]:
    async with engine.connect() as conn:
        rows = await conn.execute(
            text("SELECT state FROM pg_stat_activity WHERE application_name = :name"),
            {"name": relay.listener_name},
        )
        return [r[0] for r in rows]


class TestRelayListen:
    async def test_notify_wakes_the_relay_after_an_hour_of_keepalives(
        self, tenant_id, engine, sessionmaker, tables, kafka, producer
    ):
        # A poll this long never fires within the test: only a NOTIFY can wake it.
        relay = OutboxRelay(
            engine, tables, producer, poll_interval_s=3600, keepalive_interval_s=0.005
        )
        event = ticket_event(tenant_id)
        async with (
            TopicTap(kafka.bootstrap_servers, "afterglow.tickets") as tap,
            running(relay.run()),
        ):
            await eventually(
                lambda: _value(relay.keepalives),
                lambda n: n >= AN_HOUR_OF_KEEPALIVES,
                timeout=60,
            )
            states = await listener_states(engine, relay)
            woken_before = relay.notifications
            async with sessionmaker.begin() as s:
                await Outbox(tables).add(s, event)
            [seen] = await tap.wait_for(lambda e: e.id == event.id, timeout=30)
        assert states == ["idle"], "one listening connection, never idle in transaction"
        assert relay.notifications > woken_before
        assert seen.id == event.id


async def _value(n: int) -> int:
    return n
