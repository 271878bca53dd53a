"""The relay's claim reads about a batch's worth of rows, however long the backlog:
``shard = ANY(:shards) ORDER BY id`` could not follow ix_outbox_unsent (shard, id)
across shards, so every claim read and sorted every unsent row, and a relay draining a
backlog of a million events spent more of PostgreSQL than the writers producing them.
Each shard is read up to its share of the batch first (OutboxRelay.claim), and up to
the whole batch when the backlog sits in a few shards. Whatever it claims is, per
shard, that shard's oldest unsent rows, so a key's events still leave in order."""

from __future__ import annotations

import json
from typing import Any

import pytest
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


async def _unsent_by_shard(conn: Any, schema: str) -> dict[int, list[int]]:
    rows = await conn.execute(
        text(f'SELECT shard, id FROM "{schema}".outbox WHERE sent_at IS NULL ORDER BY id')  # noqa: S608
    )
    out: dict[int, list[int]] = {}
    for shard, id_ in rows:
        out.setdefault(shard, []).append(id_)
    return out


async def _claim_and_plan(
    relay: OutboxRelay, conn: Any, shards: list[int]
) -> tuple[list[int], list[dict[str, Any]]]:
    """The ids one claim takes, and the plan nodes of that claim's statement, read in
    the claim's own transaction (where the relay pins its plan), then rolled back."""
    claimed = [r.id for r in await relay.claim(conn, shards)]
    explain = text("EXPLAIN (ANALYZE, FORMAT JSON) " + relay.claim_statement.text)
    plan = (await conn.execute(explain, relay.claim_params(shards))).scalar_one()
    await conn.rollback()  # the claim's row locks and its plan settings
    return claimed, _nodes((json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"])


def _most_rows_through_one_node(nodes: list[dict[str, Any]]) -> int:
    return max(n["Actual Rows"] * n["Actual Loops"] for n in nodes)


async def _drain(engine, tables, producer) -> None:
    """Later tests see an empty outbox."""
    drain = OutboxRelay(engine, tables, producer)
    while await drain.publish_once():
        pass


async def test_a_claim_reads_a_share_per_shard_not_the_whole_backlog(
    tenant_id, engine, sessionmaker, tables, producer
):
    relay = OutboxRelay(engine, tables, producer, batch_size=LIMIT)
    events = [ticket_event(tenant_id, customer=f"c-{i}") for i in range(BACKLOG)]
    async with sessionmaker.begin() as s:
        await Outbox(tables).add(s, *events)
    shards = list(range(OUTBOX_SHARDS))
    share = relay.shard_share(OUTBOX_SHARDS)
    async with engine.connect() as conn:
        unsent = await _unsent_by_shard(conn, tables.schema)
        await conn.rollback()
        claimed, nodes = await _claim_and_plan(relay, conn, shards)
    assert len(claimed) == LIMIT
    assert claimed == sorted(claimed)
    for shard, ids in unsent.items():
        mine = [i for i in claimed if i in set(ids)]
        assert mine == ids[: len(mine)], f"shard {shard}: not its oldest rows"
    # At most a share per shard went through any node; the first claim read them all,
    # the one after it a whole batch per shard.
    read = _most_rows_through_one_node(nodes)
    assert read <= OUTBOX_SHARDS * share < OUTBOX_SHARDS * LIMIT, nodes

    await _drain(engine, tables, producer)


async def test_a_backlog_in_one_shard_still_fills_the_batch(
    tenant_id, engine, sessionmaker, tables, producer
):
    """One customer's events (one key, one shard) past the shard's share: the claim is
    read again with the whole batch for that shard, oldest first."""
    relay = OutboxRelay(engine, tables, producer, batch_size=LIMIT)
    assert relay.shard_share(OUTBOX_SHARDS) < LIMIT
    async with sessionmaker.begin() as s:
        await Outbox(tables).add(
            s, *(ticket_event(tenant_id, customer="c-busy") for _ in range(50))
        )
    async with engine.connect() as conn:
        (ids,) = (await _unsent_by_shard(conn, tables.schema)).values()
        claimed = [r.id for r in await relay.claim(conn, list(range(OUTBOX_SHARDS)))]
        await conn.rollback()
    assert claimed == ids[:LIMIT]

    await _drain(engine, tables, producer)


async def test_a_claim_follows_the_index_whatever_the_outbox_statistics_say(
    tenant_id, engine, sessionmaker, tables, producer
):
    """A queue's statistics are a poor guide to its backlog. With none taken yet (a new
    service's outbox, or the journeys bench's), a shard of a backlog is estimated at a
    couple of unsent rows, and the planner read each shard with a bitmap scan of all its
    unsent rows and a sort: 20-92 ms a claim of 500 rows in the journeys bench, slower
    the longer the backlog, against ~3 ms in the index's order. The relay pins the plan
    for its transaction: a claim still reads a share per shard, in order."""
    async with engine.connect() as conn:
        version = int((await conn.execute(text("SHOW server_version_num"))).scalar_one())
    if version < 180000:  # a DATABASE_URL of the developer's own
        pytest.skip("clearing a table's statistics needs PostgreSQL 18")
    # The relay's own batch over a backlog the size of the bench's.
    batch, backlog = 500, 40_000
    relay = OutboxRelay(engine, tables, producer, batch_size=batch)
    async with sessionmaker.begin() as s:
        await Outbox(tables).add(
            s, *(ticket_event(tenant_id, customer=f"b-{i}") for i in range(backlog))
        )
    shards = list(range(OUTBOX_SHARDS))
    async with engine.connect() as conn:
        # The statistics the journeys bench's outbox had when its claims went wrong:
        # none (the table never analyzed). From 40,000 rows on, a shard is then
        # estimated at two unsent rows, and a bitmap scan looks the cheaper plan.
        await conn.execute(
            text(
                "SELECT pg_clear_relation_stats(:schema, 'outbox'), (SELECT"
                " count(pg_clear_attribute_stats(:schema, 'outbox', c, false))"
                " FROM unnest(CAST(:columns AS text[])) AS c)"
            ),
            {"schema": tables.schema, "columns": ["shard", "sent_at", "id"]},
        )
        await conn.commit()
        claimed, nodes = await _claim_and_plan(relay, conn, shards)
    assert len(claimed) == batch
    assert not [n for n in nodes if n["Node Type"].startswith("Bitmap")], nodes
    share = relay.shard_share(OUTBOX_SHARDS)
    assert _most_rows_through_one_node(nodes) <= OUTBOX_SHARDS * share, nodes

    await _drain(engine, tables, producer)
