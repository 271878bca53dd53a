"""afterglow.events.batch.writes_in_one_statement: several set-based writes sent as one
statement (one round trip), each with its own binds, all or none applied."""

from __future__ import annotations

import pytest
from sqlalchemy import BigInteger, Column, MetaData, Table, Text, bindparam, select, text, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncEngine

from afterglow.events.batch import (
    unnest_insert,
    unnest_keys,
    write_params,
    writes_in_one_statement,
)

_meta = MetaData()
# Temporary tables: this connection's own, gone with it.
tickets = Table("w1_tickets", _meta, Column("id", Text, primary_key=True), Column("n", BigInteger))
notes = Table("w1_notes", _meta, Column("id", Text, primary_key=True), Column("body", Text))

_k = unnest_keys("k", id=Text, n=BigInteger)
# Three writes that each bind ``id`` or a key array: the renaming keeps them apart.
WRITES = writes_in_one_statement(
    tickets=unnest_insert(tickets, ("id", "n")),
    notes=unnest_insert(notes, ("id", "body")),
    counts=update(tickets).where(tickets.c.id == _k.c.id).values(n=_k.c.n),
)


async def prepared(engine: AsyncEngine):  # type: ignore[no-untyped-def]
    conn = await engine.connect()
    # A pooled connection keeps its temporary tables: the last test's go first.
    await conn.execute(text("DROP TABLE IF EXISTS pg_temp.w1_tickets, pg_temp.w1_notes"))
    await conn.execute(text("CREATE TEMP TABLE w1_tickets (id text PRIMARY KEY, n bigint)"))
    await conn.execute(text("CREATE TEMP TABLE w1_notes (id text PRIMARY KEY, body text)"))
    await conn.execute(tickets.insert().values(id="old", n=1))
    await conn.commit()
    return conn


def params(notes_ids: list[str]) -> dict[str, list[object]]:
    return {
        **write_params("tickets", {"id": ["t1", "t2"], "n": [10, 20]}),
        **write_params("notes", {"id": notes_ids, "body": ["x"] * len(notes_ids)}),
        **write_params("counts", {"k_id": ["old"], "k_n": [7]}),
    }


async def test_every_write_applied_by_one_statement(engine: AsyncEngine):
    conn = await prepared(engine)
    try:
        await conn.execute(WRITES, params(["a", "b", "c"]))
        await conn.commit()
        got = dict((await conn.execute(select(tickets.c.id, tickets.c.n))).all())
        assert got == {"old": 7, "t1": 10, "t2": 20}
        assert sorted(await conn.scalars(select(notes.c.id))) == ["a", "b", "c"]
    finally:
        await conn.close()


async def test_one_write_failing_applies_none(engine: AsyncEngine):
    conn = await prepared(engine)
    try:
        with pytest.raises(IntegrityError):
            await conn.execute(WRITES, params(["a", "a"]))  # a note twice
        await conn.rollback()
        got = dict((await conn.execute(select(tickets.c.id, tickets.c.n))).all())
        assert got == {"old": 1}
        assert list(await conn.scalars(select(notes.c.id))) == []
    finally:
        await conn.close()


def test_a_write_whose_binds_are_not_renamed_is_refused_when_built():
    # A bind the renaming does not reach (here inside a subquery an UPDATE joins in
    # its WHERE) would be shared by two writes, or left unbound.
    ids = select(bindparam("wanted", type_=Text).label("id")).subquery()
    with pytest.raises(ValueError, match="binds not renamed"):
        writes_in_one_statement(odd=update(tickets).where(tickets.c.id == ids.c.id).values(n=0))
