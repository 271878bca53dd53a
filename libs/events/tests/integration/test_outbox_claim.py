"""The relay's claim reads a batch's worth of rows per shard, however long the backlog:
``shard = ANY(:shards) ORDER BY id`` could not follow ix_outbox_unsent (shard, id)
across shards, so every claim read and sorted every unsent row, and a relay draining a
backlog of a million events spent more of PostgreSQL than the writers producing them.
Which rows it claims is unchanged: the oldest ``limit`` unsent rows of the shards."""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy import text

from afterglow.events import Outbox, OutboxRelay
from afterglow.events.tables import OUTBOX_SHARDS

from .support import ticket_event

BACKLOG = 2000
LIMIT = 10


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    out = [plan]
    for child in plan.get("Plans", []):
        out.extend(_nodes(child))
    return out


async def test_a_claim_reads_a_batch_per_shard_not_the_whole_backlog(
    tenant_id, engine, sessionmaker, tables, producer
):
    relay = OutboxRelay(engine, tables, producer, batch_size=LIMIT)
    events = [ticket_event(tenant_id, customer=f"c-{i}") for i in range(BACKLOG)]
    async with sessionmaker.begin() as s:
        await Outbox(tables).add(s, *events)
    t = f'"{tables.schema}".outbox'
    params = {"shards": list(range(OUTBOX_SHARDS)), "limit": LIMIT}
    async with engine.connect() as conn:
        oldest = await conn.execute(
            text(f"SELECT id FROM {t} WHERE sent_at IS NULL ORDER BY id LIMIT :n"),  # noqa: S608
            {"n": LIMIT},
        )
        oldest_ids = list(oldest.scalars())
        claimed = [r.id for r in await conn.execute(relay.claim_statement, params)]
        await conn.rollback()  # the claim's row locks
        explain = text("EXPLAIN (ANALYZE, FORMAT JSON) " + relay.claim_statement.text)
        plan = (await conn.execute(explain, params)).scalar_one()
        await conn.rollback()
    assert claimed == oldest_ids
    nodes = _nodes((json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"])
    read = max(n["Actual Rows"] * n["Actual Loops"] for n in nodes)
    # At most a batch per shard went through any node; the old claim read them all.
    assert read <= OUTBOX_SHARDS * LIMIT, nodes

    drain = OutboxRelay(engine, tables, producer)  # later tests see an empty outbox
    while await drain.publish_once():
        pass
