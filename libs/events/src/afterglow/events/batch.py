"""One transaction for the records of one partition: the inbox claim and the handlers.

:func:`apply_in_one_transaction` is the unit of work of :class:`EventConsumer`: the
events it is given (one partition, in order) are claimed in the service's inbox with
ONE multi-row ``INSERT ... ON CONFLICT DO NOTHING RETURNING`` and the new ones are
handed to their handlers, all in one transaction. A statement per event and a commit
per event capped a consumer near a hundred events a second (DESIGN.md, "Throughput").

Two handler forms, both run inside that transaction, in partition order:

* a per-event handler, ``async def handle(session, event)``: called once per new event.
  Between two events the session is flushed and its identity map emptied, so every
  event sees the database as a fresh session in the same transaction would (its
  earlier events' writes included), never an ORM object left stale by a Core
  ``UPDATE`` of the previous event. It must not commit, roll back or open savepoints:
  the transaction is the batch's.
* a :class:`BatchHandler`, ``BatchHandler(async def handle(session, events))``: called
  with each run of consecutive new events that map to that same handler object, in
  order (one handler registered for several types sees them interleaved as they came).
  A set-based store reads what the run touches with one query per table and writes with
  one statement per table.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any

from sqlalchemy import Table, Text, and_, bindparam, cast, column, literal_column, select
from sqlalchemy import inspect as sa_inspect
from sqlalchemy.dialects import postgresql
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.sql import func
from sqlalchemy.sql.elements import BindParameter, ColumnClause
from sqlalchemy.sql.selectable import Select, TableValuedAlias
from sqlalchemy.sql.visitors import replacement_traverse

from afterglow.events import tracing
from afterglow.events.context import event_context
from afterglow.events.envelope import CloudEvent
from afterglow.events.tracing import continued, linked

EventHandler = Callable[[AsyncSession, CloudEvent[Any]], Awaitable[None]]
BatchHandlerFn = Callable[[AsyncSession, list[CloudEvent[Any]]], Awaitable[None]]


@dataclass(frozen=True)
class BatchHandler:
    """Marks a handler that takes a list of events (in partition order) at once."""

    apply: BatchHandlerFn


Handler = EventHandler | BatchHandler


@dataclass(frozen=True)
class Claimed:
    """What one transaction did: the events applied, and the repeats it skipped."""

    applied: list[CloudEvent[Any]]
    duplicates: int


def inbox_claim(inbox: Table) -> Any:
    """``INSERT INTO inbox SELECT ... FROM unnest(ids, types) ON CONFLICT DO NOTHING
    RETURNING event_id``: one statement for any number of events, compiled once (a
    ``VALUES`` list is a new statement for every batch size)."""
    rows = (
        func.unnest(bindparam("ids", type_=ARRAY(Text)), bindparam("types", type_=ARRAY(Text)))
        .table_valued("event_id", "event_type")
        .render_derived(name="claimed")
    )
    return (
        pg_insert(inbox)
        .from_select(
            ["consumer", "event_id", "event_type"],
            select(
                bindparam("consumer", type_=Text),
                rows.c.event_id,
                rows.c.event_type,
            ).select_from(rows),
        )
        .on_conflict_do_nothing()
        .returning(inbox.c.event_id)
    )


async def apply_in_one_transaction(
    session: AsyncSession,
    claim: Any,
    consumer: str,
    events: Sequence[tuple[CloudEvent[Any], Handler]],
) -> Claimed:
    """Claim ``events`` in the inbox and run the handlers of the new ones, in order,
    in the caller's transaction. An event id seen twice in ``events`` is applied once
    (its first record)."""
    unique: dict[str, tuple[CloudEvent[Any], Handler]] = {}
    for event, handler in events:
        unique.setdefault(event.id, (event, handler))
    duplicates = len(events) - len(unique)
    if not unique:
        return Claimed([], duplicates)
    result = await session.execute(
        claim,
        {
            "consumer": consumer,
            "ids": list(unique),
            "types": [event.type for event, _ in unique.values()],
        },
    )
    new_ids = set(result.scalars().all())
    fresh = [(e, h) for e, h in unique.values() if e.id in new_ids]
    for handler, run in _runs(fresh):
        if isinstance(handler, BatchHandler):
            # The run's events may be of as many traces: one span linked to each; the
            # handler opens a span per event where it works per event (each_in_order,
            # in_segments' one, the journey engine's loop), so what an event causes
            # there joins that event's trace. What a set-based write emits for many
            # events at once is in the run's span, linked to their traces.
            with linked(
                f"apply {len(run)} events",
                (e.traceparent for e in run),
                event_id=run[0].id if len(run) == 1 else None,
            ):
                await handler.apply(session, run)
            continue
        for event in run:
            with event_span(event):
                await handler(session, event)
                # The next event sees this one's writes, through fresh ORM objects.
                # Flushed inside the event's span: its INSERTs and UPDATEs are traced
                # as its own, not as the batch's.
                await session.flush()
            session.expunge_all()
    return Claimed([e for e, _ in fresh], duplicates + len(unique) - len(fresh))


def event_span(event: CloudEvent[Any]) -> contextlib.AbstractContextManager[None]:
    """Applying one event: a span child of the event's traceparent (when tracing is on),
    and the event's id and trace on the log lines and the events it causes."""
    if not tracing.enabled():
        # The hot path with tracing off: not even the span's name and attributes.
        return event_context(event.id, event.traceparent)
    return continued(
        f"apply {event.type}",
        event.traceparent,
        event_id=event.id,
        attributes={"messaging.message.id": event.id, "afterglow.tenant": event.tenantid},
    )


def _runs(
    items: list[tuple[CloudEvent[Any], Handler]],
) -> list[tuple[Handler, list[CloudEvent[Any]]]]:
    """Consecutive events grouped by handler object, order kept."""
    runs: list[tuple[Handler, list[CloudEvent[Any]]]] = []
    for event, handler in items:
        if runs and runs[-1][0] is handler:
            runs[-1][1].append(event)
        else:
            runs.append((handler, [event]))
    return runs


async def in_segments(
    events: Sequence[CloudEvent[Any]],
    *,
    take: Callable[[CloudEvent[Any]], bool],
    flush: Callable[[], Awaitable[None]],
    one: Callable[[CloudEvent[Any]], Awaitable[None]],
) -> None:
    """Apply a batch handler's events in order, the common ones as sets.

    ``take(event)`` collects an event into the pending set and says whether it did;
    ``flush()`` writes the pending set with one statement per table. An event ``take``
    refuses (a rare type, or one that must see every earlier write: an erasure, a
    reminder of a survey the same batch created) is applied alone by ``one(event)``,
    after the pending set is flushed, so the outcome is that of event-by-event order.
    """
    for event in events:
        if take(event):
            continue
        await flush()
        with event_span(event):
            await one(event)
    await flush()


async def each_in_order(
    session: AsyncSession,
    events: Sequence[CloudEvent[Any]],
    handle: Callable[[AsyncSession, CloudEvent[Any]], Awaitable[None]],
) -> None:
    """For a batch handler that prepared the batch in sets (locks taken in order, reads
    cached) and then applies each event with per-event code: in order, each event seeing
    the earlier ones' writes through fresh ORM objects, as the per-event form does."""
    for event in events:
        with event_span(event):
            await handle(session, event)
        await session.flush()
        session.expunge_all()


def unnest_insert(table: Table, columns: Sequence[str], *, json_text: Sequence[str] = ()) -> Any:
    """``INSERT INTO table (columns) SELECT ... FROM unnest(:c1, :c2, ...)``: a multi-row
    insert that is ONE statement whatever the number of rows, so it is compiled and
    prepared once (``insert().values([...])`` is a new statement, compiled again, for
    every batch size; in a profile of the feedback consumer its compilation was the
    largest cost). Execute it with one list per column, named after the column; add
    ``on_conflict_do_nothing`` / ``returning`` as needed, once, where it is built.

    ``json_text``: JSON columns whose values are passed already serialised (a string per
    row, see :func:`as_columns`) and cast back: SQLAlchemy reads a list inside an array
    parameter as one more dimension of the array, so a JSON list value would not
    arrive as one value."""
    params = [
        bindparam(c, type_=ARRAY(Text if c in json_text else table.c[c].type)) for c in columns
    ]
    rows = func.unnest(*params).table_valued(*columns).render_derived(name="new_rows")
    values = [cast(rows.c[c], table.c[c].type) if c in json_text else rows.c[c] for c in columns]
    return pg_insert(table).from_select(list(columns), select(*values))


def as_columns(
    rows: Sequence[dict[str, Any]], columns: Sequence[str], *, json_text: Sequence[str] = ()
) -> dict[str, list[Any]]:
    """Rows as the per-column lists :func:`unnest_insert` takes (``json_text`` columns
    serialised, as that insert was built with)."""
    return {c: [json.dumps(r[c]) if c in json_text else r[c] for r in rows] for c in columns}


def json_rows(name: str, **types: Any) -> Any:
    """``jsonb_to_recordset(:rows) AS name(col type, ...)``: every row of a multi-row
    write in one JSON parameter ``rows`` (a VALUES list would be a new statement per
    size), encoded by the engine's JSON serializer (pydantic-core: afterglow.kit.db).
    For an UPDATE of many rows with a value of their own each, or a row holding a list
    (which an unnest of arrays cannot carry: a list inside an array parameter is read as
    one more dimension).

    Rows hold datetimes and models as they are: the encoder writes an instant as ISO
    8601 (``Z`` for UTC), which a timestamptz column reads as the same instant, and a
    model as its JSON; a JSON list becomes an array column's array. ``isoformat()`` in
    Python was ~8 calls and 15 us per order.placed in the journey engine (2-3 us each on
    datetimes pydantic parsed)."""
    return (
        func.jsonb_to_recordset(bindparam("rows", type_=JSONB))
        .table_valued(*(column(k, t) for k, t in types.items()))
        .render_derived(name=name, with_types=True)
    )


def unnest_keys(name: str, **types: Any) -> Any:
    """``unnest(:name_col, ...) AS name(col, ...)``: a set of keys as one array per
    column (bind ``{name}_{col}``), to join a table against. The statement's text is the
    same for any number of keys, so it is prepared once and planned cheaply; a row-wise
    ``(a, b) IN ((..), (..), ...)`` is a new statement, prepared and planned again, for
    every size a batch comes in, and PostgreSQL plans it as an OR of that many index
    conditions."""
    return (
        func.unnest(*(bindparam(f"{name}_{c}", type_=ARRAY(t)) for c, t in types.items()))
        .table_valued(*types)
        .render_derived(name=name)
    )


def joined_to_keys(target: Any, keys: Any, *selected: Any) -> Any:
    """``SELECT target (or ``selected``) JOIN keys`` (an :func:`unnest_keys`) on the
    keys' columns, which ``target`` (a table or mapped class) names alike: the rows of
    a batch's keys with one statement text for any number of keys."""
    columns = sa_inspect(target).columns
    names = list(keys.c.keys())  # the key columns' names
    on = [columns[name] == keys.c[name] for name in names]
    return select(*(selected or (target,))).join(keys, and_(*on))


def locked_by_keys(target: Any, keys: Any) -> Any:
    """:func:`joined_to_keys` in key order, ``FOR UPDATE OF target``: the rows of a
    batch's keys locked with one statement, always in the same order (the one order
    every lock of those rows is taken in, so two batches never wait on each other in a
    cycle). Add ``where`` and execution options to taste."""
    columns = sa_inspect(target).columns
    names = list(keys.c.keys())
    return (
        joined_to_keys(target, keys)
        .order_by(*(columns[name] for name in names))
        .with_for_update(of=target)
    )


def key_params(
    name: str, columns: Sequence[str], keys: Sequence[Sequence[Any]]
) -> dict[str, list[Any]]:
    """The binds of :func:`unnest_keys` ``name`` for ``keys``, tuples in ``columns`` order."""
    return {f"{name}_{c}": [k[i] for k in keys] for i, c in enumerate(columns)}


def writes_in_one_statement(**writes: Any) -> Any:
    """``WITH name1 AS (write1), name2 AS (write2), ... SELECT 1``: several writes of a
    batch (inserts, upserts, updates, each a set-based statement) sent as ONE
    statement, so the batch pays one round trip for them instead of one each (a
    redemption batch's five writes were five of its eleven round trips, each several
    ms on a loaded database). PostgreSQL runs every data-modifying ``WITH`` once, even
    unreferenced. Each write's binds are renamed ``{name}_{bind}`` (two unnest inserts
    both bind ``id``); pass :func:`write_params` for each.

    The writes share one snapshot: none sees another's rows, so they must be
    independent (no write reading what another writes, no row written twice);
    foreign keys and unique constraints are still checked. A write given no rows
    (empty arrays) writes nothing."""

    def renamed(name: str) -> Any:
        keys: dict[Any, Any] = {}  # unnest_keys, renamed once each

        def rename(element: Any, **kw: Any) -> Any:
            if isinstance(element, BindParameter):
                return bindparam(f"{name}_{element.key}", type_=element.type)
            if isinstance(element, ColumnClause) and isinstance(element.table, TableValuedAlias):
                # A column of an unnest_keys an UPDATE joins in its WHERE: the traversal
                # does not reach into the column's FROM, whose binds are renamed here.
                if element.table not in keys:
                    keys[element.table] = replacement_traverse(element.table, {}, rename)
                return keys[element.table].c[element.key]
            return None

        return rename

    ctes = [replacement_traverse(w, {}, renamed(name)).cte(name) for name, w in writes.items()]
    statement: Select[Any] = select(literal_column("1")).add_cte(*ctes)
    # A bind the renaming missed would be shared by two writes, or left unbound.
    prefixes = tuple(f"{name}_" for name in writes)
    stray = [
        b
        for b in statement.compile(dialect=postgresql.dialect()).binds
        if not b.startswith(prefixes)
    ]
    if stray:
        raise ValueError(f"binds not renamed: {stray}")
    return statement


def write_params(name: str, params: dict[str, Any]) -> dict[str, Any]:
    """One write's binds as :func:`writes_in_one_statement` renamed them."""
    return {f"{name}_{key}": value for key, value in params.items()}
