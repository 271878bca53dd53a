"""Events/s one service's consumer applies, next to the bare batch-consumer floor
measured in the same run. Shared by bench/loyalty, bench/referrals and bench/feedback.

* service: the records are produced to their real topics while the app (full lifespan,
  its consumers already joined) runs; the figure is N / (time from the first send until
  the service's inbox holds all N ids), i.e. broker -> consumer -> handlers -> rows and
  outbox, committed. A child process sends them (bench/publisher.py), as other
  services would: sent from the app's own event loop, they took its CPU in the window.
* floor: the very same record bytes produced to FLOOR_TOPIC, which none of these
  services consumes (12 partitions, as many as the orders topic), and applied by an
  ``EventConsumer`` on the same database and inbox whose handlers do nothing: the poll,
  the parse, the one-statement inbox claim, the commit and the offset commit. What the
  service adds on top of that is its own work.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import re
import time
import uuid
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

from publisher import publishing
from sqlalchemy import event, text

from afterglow.events import CloudEvent, EventConsumer, KafkaConfig, to_record
from afterglow.events.batch import BatchHandler
from afterglow.kit.app import Runtime

FLOOR_TOPIC = "afterglow.messages"  # not consumed by loyalty, referrals or feedback
# Names the bench's own progress polls, which statements_of and the journeys bench's
# pg_stat_statements list do not count: a column alias (``count(*) AS bench_poll``),
# not a leading comment, which pg_stat_statements drops from the text it keeps.
BENCH_TAG = "bench_poll"


async def _wait_inbox(rt: Runtime, consumer: str, ids: list[str], within_s: float) -> None:
    schema = rt.tables.inbox.schema
    stmt = text(
        f"SELECT count(*) AS {BENCH_TAG} FROM {schema}.inbox "  # noqa: S608 - the schema is the service's
        "WHERE consumer = :c AND event_id = ANY(:ids)"
    )
    deadline = time.monotonic() + within_s
    while True:
        async with rt.engine.connect() as conn:
            done = (await conn.execute(stmt, {"c": consumer, "ids": ids})).scalar_one()
        if done >= len(ids):
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"{consumer}: only {done} of {len(ids)} events within {within_s}s")
        await asyncio.sleep(0.02)


@dataclass
class Statements:
    """What statements_of saw: per kind of statement, how many and their milliseconds
    from the driver's send to its answer (the round trip and PostgreSQL's work)."""

    count: Counter[str] = field(default_factory=Counter)
    ms: Counter[str] = field(default_factory=Counter)
    # CPU seconds of this process meanwhile (the app, its relay and the bench's producer).
    cpu_s: float = 0.0


@contextlib.contextmanager
def statements_of(rt: Runtime) -> Iterator[Statements]:
    """Count and time the statements the app's engine runs meanwhile, by kind and table
    (an ``executemany`` counts once: one round trip with asyncpg's pipelining). The
    outbox relay shares the engine, so its statements are counted too: they are the
    service's work as well. The bench's own polls (BENCH_TAG) are not."""
    seen = Statements()

    def before(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        conn.info["bench_t0"] = time.perf_counter()

    def after(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        t0 = conn.info.pop("bench_t0", None)
        if t0 is None or BENCH_TAG in statement:
            return  # begun before the listener was, or the bench's own poll
        what = statement_label(statement)
        seen.count[what] += 1
        seen.ms[what] += (time.perf_counter() - t0) * 1000

    engine = rt.engine.sync_engine
    event.listen(engine, "before_cursor_execute", before)
    event.listen(engine, "after_cursor_execute", after)
    cpu0 = time.process_time()
    try:
        yield seen
    finally:
        seen.cpu_s = time.process_time() - cpu0
        event.remove(engine, "before_cursor_execute", before)
        event.remove(engine, "after_cursor_execute", after)


# The name of each ``name AS (`` or ``name(col, ...) AS (`` a statement's WITH list
# opens (writes_in_one_statement; asyncpg's type introspection, WITH RECURSIVE).
_CTE = re.compile(r"(\w+)\s*(?:\([^()]*\))?\s+AS\s*\(")


def statement_label(statement: str) -> str:
    """A statement's kind and table: "INSERT x", "UPDATE x", "SELECT x FOR UPDATE";
    for a batch's writes sent as one statement, "WITH" and its writes' names."""
    words = statement.split()
    if words and words[0].upper() == "WITH":
        return "WITH " + "+".join(dict.fromkeys(_CTE.findall(statement)))
    verb = words[0].upper() if words else ""
    table = ""
    key = {"INSERT": "INTO", "UPDATE": "UPDATE", "DELETE": "FROM"}.get(verb, "FROM")
    # The first table named after the key word rather than a function (a batch's unnest
    # keys), if there is one.
    named = [w for k, w in itertools.pairwise(words) if k == key]
    if named:
        table = next((w for w in named if "(" not in w), named[0])
    lock = " FOR UPDATE" if "FOR UPDATE" in statement else ""
    return f"{verb} {table}{lock}".strip()


def print_statements(seen: Statements, n: int, top: int = 8) -> None:
    total = sum(seen.count.values())
    ms = sum(seen.ms.values())
    print(
        f"  statements {total} = {total / n:.2f} per event, {ms:.0f} ms in them"
        " (relay and inbox claim included)"
    )
    print(f"  CPU of the app's process: {seen.cpu_s * 1000 / n:.3f} ms per event")
    for what, k in seen.count.most_common(top):
        print(f"    {k:6d}  {seen.ms[what]:8.0f} ms  {what}")


def service_consumer(rt: Runtime, suffix: str) -> str:
    """The name (inbox consumer) of the app's consumer group ending in ``suffix``."""
    return next(c.name for c in rt.consumers if c.name.endswith(f".{suffix}"))


async def service_rate(
    rt: Runtime, consumer: str, events: Sequence[CloudEvent[Any]], within_s: float = 900
) -> float:
    """Events/s the app's ``consumer`` applies ``events`` at (their own topics)."""
    ids = [e.id for e in events]
    kafka = rt.settings.kafka("bench-publisher")
    async with publishing(kafka, [to_record(e) for e in events]) as go:
        t0 = time.perf_counter()
        await go()
        await _wait_inbox(rt, consumer, ids, within_s)
        return len(ids) / (time.perf_counter() - t0)


async def floor_rate(
    rt: Runtime, kafka: KafkaConfig, events: Sequence[CloudEvent[Any]], within_s: float = 900
) -> float:
    """Events/s the bare batch consumer (no-op handlers) applies the same records at."""
    assert rt.producer is not None

    async def nothing(session: Any, batch: list[CloudEvent[Any]]) -> None:
        return None

    noop = BatchHandler(nothing)
    name = f"bench-floor-{uuid.uuid4().hex[:6]}"
    consumer = EventConsumer(
        name=name,
        kafka=kafka,
        sessionmaker=rt.sessionmaker,
        tables=rt.tables,
        handlers={e.type: noop for e in events},
        dlq_producer=rt.producer,
        topics=[FLOOR_TOPIC],
        # Configured as the service's own consumers are (kit.app), so the floor polls and
        # groups its transactions as they do.
        max_records=rt.settings.consumer_max_records,
        parallel_partitions=rt.settings.consumer_parallel_partitions,
        coalesce_below=rt.settings.consumer_coalesce_records,
    )
    await consumer.start()
    task = asyncio.create_task(consumer.run())
    try:
        while consumer.last_poll is None:  # noqa: ASYNC110 - the join is not the throughput
            await asyncio.sleep(0.05)
        # Warm: the group's first poll can return before its partitions are assigned.
        await asyncio.sleep(1.0)
        ids = [e.id for e in events]
        async with publishing(kafka, [to_record(e) for e in events], FLOOR_TOPIC) as go:
            t0 = time.perf_counter()
            await go()
            await _wait_inbox(rt, name, ids, within_s)
            return len(ids) / (time.perf_counter() - t0)
    finally:
        task.cancel()
        await asyncio.gather(task, return_exceptions=True)
        await consumer.stop()


def report(what: str, n: int, rate: float, floor: float) -> None:
    print(f"{what}: N={n}")
    print(f"  consumer   {rate:8.0f} events/s")
    print(
        f"  floor      {floor:8.0f} events/s  (bare batch consumer: no-op handlers, same records)"
    )
    print(f"  ratio consumer/floor: {rate / floor:.3f}")
