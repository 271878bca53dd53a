"""Journey engine throughput on the embedded stack: timers fired per second and events
consumed per second by ONE orchestrator instance, each next to a floor (and, for
timers, a peer) measured in the same run.

* timers/s: N customers wait for their check-in (one customer's rows built by the
  engine's own write path, store.Changes, and copied N times by PostgreSQL), the
  ManualClock jumps 4 days, and the app's timer loop fires them all (claim SKIP
  LOCKED, engine step, state + transitions + outbox + next timer, one transaction per
  round, one statement for the writes). Floor: the same claim query plus marking the
  rows fired, nothing else, over as many rows. Peer: procrastinate (bench dependency
  group) firing as many due jobs on the same PostgreSQL with 16 concurrent workers.
* cost per timer with 10,000 and 200,000 pending timers in the table (the rest due in
  ten years): the claim must not slow down as the table grows.
* events/s: M order.placed events (M customers) published to the broker; the clock
  stops when M instances exist. Floor: a bare aiokafka consumer, in a process of its
  own once the instance is idle, reading the same M records from the topic: the
  median of several passes (see :func:`consumer_floor`).
* peak RSS of the process (the instance and this driver).

    uv run --group bench python bench/journeys/run.py [--timers 3000] [--events 3000]
        [--pending 10000,200000] [--customers 1000000]

``--customers N`` (not run by make bench) seeds N customers waiting for their check-in
and prints the wall time the instance takes to fire all N timers. The instance's outbox
relay runs as in production and publishes the events the steps write: its claims are
part of PostgreSQL's CPU per timer (before the relay claimed shard by shard, a claim
read the whole unsent backlog, and that cost grew with the cohort).
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import json
import os
import pstats
import resource
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import TopicPartition
from pydantic_core import to_json
from sqlalchemy import func, select, text, update

from afterglow.devstack import served_loop
from afterglow.devstack.pytest_plugin import serve_app
from afterglow.devstack.stack import running_stack
from afterglow.events import CloudEvent, KafkaConfig, KafkaRecord, Outbox, to_record
from afterglow.events import catalog as c
from afterglow.events.kafka import KeyPartitioner
from afterglow.events.testing import eventually
from afterglow.events.topics import TOPICS_BY_NAME
from afterglow.journeys import engine as d
from afterglow.journeys import store
from afterglow.journeys.app import create_app
from afterglow.journeys.models import JourneyInstance, JourneyTimer
from afterglow.journeys.settings import Settings
from afterglow.journeys.workers import TIMERS_FIRED, claim_due
from afterglow.kit.app import Runtime
from afterglow.kit.clock import ManualClock

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from consumer_rate import BENCH_TAG, statement_label
from publisher import publishing

# Customers written per statement (and transaction) when seeding.
SEED_CHUNK = 50_000
# Placeholders in the template customer's rows, replaced per customer by PostgreSQL.
_N, _TENANT = "@N@", "@TENANT@"


def template_rows(outbox: Outbox, tenant: str, now: datetime) -> dict[str, list[dict[str, Any]]]:
    """The rows of ONE customer whose order was delivered now and who waits for the
    check-in, built by the engine and its write path (store.Changes) as the consumer
    would write them, with ``@N@`` where the customer's number goes. Their welcome
    events are left out (the state of waiting customers, not a replay)."""
    j = d.DEFAULT_JOURNEY
    key = (tenant, f"c{_N}")
    order = f"o{_N}"
    prof = d.Profile(orders={order: {d.DELIVERED: now}})
    occ = d.Occurrence(f"seed-{_TENANT}-{_N}", d.PLACED, now, {"order_id": order})
    prof = d.project(prof, occ)
    res = d.start(j, 1, f"i-{_TENANT}-{_N}", occ, prof, now)
    changes = store.Changes(outbox, now)  # nothing is written: the rows are read
    changes.step(tenant, key[1], j, res, prof)
    changes.profile(key, prof)
    timers = list(changes.new_timers.values())
    for k, row in enumerate(timers):
        row["id"] = f"t{k}-{_TENANT}-{_N}"  # the engine's id is a hash of the instance's
    return {
        "customer_profiles": list(changes.profiles.values()),
        "journey_instances": list(changes.instances.values()),
        "journey_transitions": changes.transitions,
        "journey_timers": timers,
    }


def _replicate(table: str, row: dict[str, Any]) -> Any:
    """``INSERT INTO table SELECT ... FROM generate_series(:lo, :hi)``: the template
    row once per customer number, the placeholders replaced, typed by the table's own
    record type (jsonb_populate_record)."""
    cols = ", ".join(f'r."{c_}"' for c_ in row)
    return text(
        f"INSERT INTO journeys.{table} ({', '.join(row)}) SELECT {cols}"  # noqa: S608
        " FROM generate_series(CAST(:lo AS int), CAST(:hi AS int)) g,"
        f" jsonb_populate_record(NULL::journeys.{table},"
        f" replace(replace(CAST(:row AS text), '{_N}', g::text), '{_TENANT}', :t)::jsonb) r"
    )


async def seed_waiting(rt: Runtime, clock: ManualClock, tenant: str, n: int) -> None:
    """N customers whose order was delivered now: each waits for its check-in timer.
    Written set-based (a million customers take about a minute and no memory): the
    engine builds one customer's rows, PostgreSQL copies them N times."""
    now = clock.now()
    async with rt.sessionmaker.begin() as s:
        await store.ensure_default(s, tenant, now)
    templates = template_rows(rt.outbox, tenant, now)
    for lo in range(0, n, SEED_CHUNK):
        hi = min(n, lo + SEED_CHUNK) - 1
        async with rt.sessionmaker.begin() as s:
            for table, rows in templates.items():
                for row in rows:
                    params = {"lo": lo, "hi": hi, "t": tenant, "row": to_json(row).decode()}
                    await s.execute(_replicate(table, row), params)


async def seed_pending(rt: Runtime, n: int) -> None:
    """N pending timers due in ten years (other tenants' future): the table's size."""
    if n <= 0:
        return
    tenant = f"bg-{uuid.uuid4().hex[:6]}"
    far = rt.clock.now() + timedelta(days=3650)
    async with rt.sessionmaker.begin() as s:
        await s.execute(
            text(
                "INSERT INTO journeys.journey_timers"
                " (id, tenant_id, customer_id, instance_id, kind, key, due_at, payload,"
                "  state, created_at)"
                " SELECT :t || '-' || g, :t, 'c' || g, 'i' || g, 'stage_due', '1:due',"
                "  CAST(:far AS timestamptz) + g * interval '1 second', '{}'::jsonb,"
                "  'pending', :far"
                " FROM generate_series(1, :n) g"
            ),
            {"t": tenant, "far": far, "n": n},
        )


async def park_due_soon(rt: Runtime, horizon: timedelta) -> None:
    """Move the pending timers due within ``horizon`` (the follow-ups of customers fired
    before: a survey reminder is due 3 days after the check-in, and each measurement
    moves the clock 4 days) twenty years ahead. They stay pending, so the table keeps
    its size, but a measurement fires only its own customers: without this the cost
    per timer at the second size also paid for the first cohort's reminders."""
    soon = rt.clock.now() + horizon
    async with rt.sessionmaker.begin() as s:
        await s.execute(
            update(JourneyTimer)
            .where(JourneyTimer.state == "pending", JourneyTimer.due_at <= soon)
            .values(due_at=JourneyTimer.due_at + timedelta(days=7300))
        )


async def pending_count(rt: Runtime) -> int:
    async with rt.sessionmaker() as s:
        q = select(func.count()).select_from(JourneyTimer).where(JourneyTimer.state == "pending")
        return int(await s.scalar(q) or 0)


@dataclass(frozen=True)
class Window:
    """One measured window (timers fired, events applied): n items, the wall time and
    the CPU, this process's (the instance and this driver's polls) and PostgreSQL's
    (every backend: the engine's, the relay's, this driver's polls)."""

    n: int
    seconds: float
    python_cpu_s: float
    postgres_cpu_s: float
    # Every process on the machine (this one, PostgreSQL, the broker, the publisher,
    # the kernel); so a window held back by a full machine reads as such. Measured for
    # events only.
    machine_cpu_s: float | None = None
    # PostgreSQL's statements over the window (:func:`statements_since`), for events.
    statements: list[Any] | None = None

    @property
    def rate(self) -> float:
        return self.n / self.seconds

    def cpu_per(self, item: str) -> str:
        return (
            f"CPU per {item}: this process {self.python_cpu_s / self.n * 1e6:.0f} us,"
            f" PostgreSQL {self.postgres_cpu_s / self.n * 1e6:.0f} us"
        )


def process_cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


_TICKS = os.sysconf("SC_CLK_TCK")


def machine_busy_s() -> float:
    """CPU seconds spent by every core so far, idle and iowait left out (/proc/stat)."""
    fields = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    return (sum(fields[:8]) - fields[3] - fields[4]) / _TICKS


def _proc_cpu(stat: str) -> tuple[int, float]:
    """(parent pid, CPU seconds of the process and of its reaped children)."""
    fields = stat.rsplit(")", 1)[1].split()
    return int(fields[1]), sum(int(x) for x in fields[11:15]) / _TICKS


async def postgres_cpu_s(rt: Runtime) -> float:
    """CPU of this stack's PostgreSQL: the postmaster (with the backends it reaped) and
    its live children, from /proc (other stacks on the machine are left out)."""
    async with rt.sessionmaker() as s:
        data_dir = await s.scalar(text("SHOW data_directory"))
    return _cpu_of_tree(Path(str(data_dir)) / "postmaster.pid")


def _cpu_of_tree(pid_file: Path) -> float:
    postmaster = int(pid_file.read_text().split()[0])
    total = 0.0
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            ppid, cpu = _proc_cpu(stat.read_text())
        except (OSError, IndexError, ValueError):
            continue  # exited while listed
        if ppid == postmaster or stat.parent.name == str(postmaster):
            total += cpu
    return total


def fired_total() -> float:
    return float(TIMERS_FIRED._value.get())  # in-process counter: no query per poll


async def fire_all(rt: Runtime, clock: ManualClock, n: int) -> Window:
    """Seed n waiting customers, move the clock past their check-in, and measure the
    instance's timer loop firing all n."""
    tenant = f"bench-{uuid.uuid4().hex[:6]}"
    await seed_waiting(rt, clock, tenant, n)
    before = fired_total()
    pg0, py0 = await postgres_cpu_s(rt), process_cpu_s()
    t0 = time.perf_counter()
    clock.advance(timedelta(days=4))
    while fired_total() - before < n:  # noqa: ASYNC110 - the loop is the thing timed
        await asyncio.sleep(0.02)
    # The counter moves inside the round's transaction: the last round commits next.
    fired_q = (
        select(func.count())
        .select_from(JourneyTimer)
        .where(JourneyTimer.tenant_id == tenant, JourneyTimer.state == "fired")
    )
    await eventually(lambda: count(rt, fired_q), lambda v: v >= n, timeout=60, interval=0.01)
    seconds = time.perf_counter() - t0
    py1, pg1 = process_cpu_s(), await postgres_cpu_s(rt)
    # Every timer moved its instance (a timer whose instance the round cannot find is
    # marked fired too, and counted, with no engine step: that would not be a figure).
    stepped_q = (
        select(func.count())
        .select_from(JourneyInstance)
        .where(JourneyInstance.tenant_id == tenant, JourneyInstance.updated_at >= clock.now())
    )
    stepped = await count(rt, stepped_q)
    if stepped < n:
        raise RuntimeError(f"{n} timers fired but {stepped} instances stepped")
    return Window(n, seconds, py1 - py0, pg1 - pg0)


async def timers_floor(rt: Runtime, n: int, batch: int) -> float:
    tenant = f"floor-{uuid.uuid4().hex[:6]}"
    now = rt.clock.now()
    far = now + timedelta(days=3650 * 2)
    async with rt.sessionmaker.begin() as s:
        await s.execute(
            text(
                "INSERT INTO journeys.journey_timers"
                " (id, tenant_id, customer_id, instance_id, kind, key, due_at, payload,"
                "  state, created_at)"
                " SELECT :t || '-' || g, :t, 'c' || g, 'i' || g, 'stage_due', '1:due',"
                "  :now, '{}'::jsonb, 'pending', :now"
                " FROM generate_series(1, :n) g"
            ),
            {"t": tenant, "now": far - timedelta(days=1), "n": n},
        )
    t0 = time.perf_counter()
    done = 0
    while done < n:
        async with rt.sessionmaker.begin() as s:
            rows = await claim_due(s, far, batch, tenant)
            await s.execute(
                update(JourneyTimer)
                .where(JourneyTimer.id.in_([r.id for r in rows]))
                .values(state="fired", fired_at=now)
            )
            done += len(rows)
    return n / (time.perf_counter() - t0)


async def procrastinate_peer(database_url: str, n: int, concurrency: int = 16) -> float | None:
    """procrastinate firing n due jobs (a no-op task) on the same PostgreSQL."""
    try:
        import procrastinate
    except ImportError:
        return None
    conninfo = database_url.replace("postgresql+asyncpg://", "postgresql://")
    app = procrastinate.App(
        connector=procrastinate.PsycopgConnector(
            conninfo=conninfo, min_size=2, max_size=concurrency + 4
        )
    )

    @app.task(name="bench_fire", queue="bench")
    async def fire(i: int) -> None:
        return None

    async with app.open_async():
        await app.schema_manager.apply_schema_async()  # the stack is ephemeral: fresh
        for start in range(0, n, 1000):
            await fire.batch_defer_async(*({"i": i} for i in range(start, min(n, start + 1000))))
        t0 = time.perf_counter()
        await app.run_worker_async(
            queues=["bench"],
            concurrency=concurrency,
            wait=False,
            listen_notify=False,
            install_signal_handlers=False,
        )
        return n / (time.perf_counter() - t0)


async def count(rt: Runtime, q: object) -> int:
    async with rt.sessionmaker() as s:
        return int(await s.scalar(q) or 0)  # type: ignore[call-overload]


def order_records(tenant: str, n: int, placed_at: datetime) -> list[KafkaRecord]:
    """n order.placed of ``tenant``, as records (sent by bench/publisher.py's child)."""
    records = []
    for i in range(n):
        ev = CloudEvent.new(
            c.OrderPlaced(
                order_id=f"o{i}",
                platform="api",
                placed_at=placed_at,
                customer=c.CustomerInfo(),
                total=c.Money(amount=1000, currency="USD"),
            ),
            tenant_id=tenant,
            subject=f"c{i}",
            source="bench",
        )
        records.append(to_record(ev))
    return records


async def spawn_floor_child(kafka: KafkaConfig, spec: dict[str, Any]) -> asyncio.subprocess.Process:
    """This script again as the floor's child (``--floor-child``), given the broker and
    ``spec`` as JSON (read back by :func:`floor_child`); its stdout is a pipe."""
    kafka_spec = {"bootstrap": kafka.bootstrap_servers, "idempotence": kafka.enable_idempotence}
    return await asyncio.create_subprocess_exec(
        sys.executable,
        __file__,
        "--floor-child",
        to_json(kafka_spec | spec).decode(),
        stdout=asyncio.subprocess.PIPE,
    )


async def reset_statements(rt: Runtime) -> None:
    """Start pg_stat_statements' counts afresh (the embedded PostgreSQL preloads it)."""
    async with rt.engine.begin() as conn:
        await conn.execute(text("CREATE EXTENSION IF NOT EXISTS pg_stat_statements"))
        await conn.execute(text("SELECT pg_stat_statements_reset()"))


async def statements_since(rt: Runtime, top: int = 8) -> list[Any]:
    """PostgreSQL's statements since :func:`reset_statements`, by execution time spent
    in the server, most first: the instance's (its consumer, relay and timer loop), not
    this driver's polls. Timed by PostgreSQL, not by the client, whose clock would
    include the waits of an event loop busy with the other partitions."""
    q = text(
        f"SELECT calls, rows, total_exec_time AS ms, query, true AS {BENCH_TAG}"  # noqa: S608
        " FROM pg_stat_statements"
        " WHERE dbid = (SELECT oid FROM pg_database WHERE datname = current_database())"
        " AND query NOT LIKE :driver ORDER BY total_exec_time DESC LIMIT :top"
    )
    async with rt.engine.connect() as conn:
        return list((await conn.execute(q, {"driver": f"%{BENCH_TAG}%", "top": top})).all())


def last_of_each_partition(records: list[KafkaRecord], partitions: int) -> list[str]:
    """The customer of each partition's last record (the producer's partitioner, the
    topic's partitions): a partition's events are applied in order, so once these
    customers have their instance every record before them has too."""
    parts = list(range(partitions))
    pick = KeyPartitioner()
    last = {pick(r.key, parts, parts): r.key.decode().split(":", 1)[1] for r in records}
    return list(last.values())


async def events_rate(rt: Runtime, clock: ManualClock, n: int, kafka: KafkaConfig) -> Window:
    """Events/s from publishing to the last instance row, and the CPU spent over that
    window: by this process (the instance and this driver's polls), by PostgreSQL, and
    by the whole machine (so a window held back by a full machine reads as such).

    The records are published by a child process (bench/publisher.py), as a shop's
    webhooks reach the instance from another service. The clock starts when the child
    is ready to send (records built, producer connected) and includes the sends; the
    child's CPU is its own (RUSAGE_SELF), on the same cores. The floor reads records
    that were all published before its clock."""
    tenant = f"bench-{uuid.uuid4().hex[:6]}"
    records = order_records(tenant, n, clock.now())
    last = last_of_each_partition(records, TOPICS_BY_NAME["afterglow.orders"].partitions)
    # Named (BENCH_TAG): statements_since leaves the driver's own polls out. While the
    # events flow, the poll looks up each partition's last customer (a dozen index
    # probes); a count of the whole tenant's instances, ~3% of PostgreSQL's time over
    # the window when it was the poll, only confirms the end.
    instances = f"SELECT count(*) AS {BENCH_TAG} FROM {JourneyInstance.__table__.fullname}"  # noqa: S608
    last_q = text(f"{instances} WHERE tenant_id = :t AND customer_id = ANY(:last)").bindparams(
        t=tenant, last=last
    )
    all_q = text(f"{instances} WHERE tenant_id = :t").bindparams(t=tenant)
    async with publishing(kafka, records) as go:
        await reset_statements(rt)
        pg0, busy0 = await postgres_cpu_s(rt), machine_busy_s()
        t0, cpu0 = time.perf_counter(), process_cpu_s()
        await go()
        await eventually(
            lambda: count(rt, last_q), lambda v: v >= len(last), timeout=600, interval=0.05
        )
        await eventually(lambda: count(rt, all_q), lambda v: v >= n, timeout=600, interval=0.05)
        seconds, cpu = time.perf_counter() - t0, process_cpu_s() - cpu0
        pg, busy = await postgres_cpu_s(rt) - pg0, machine_busy_s() - busy0
        statements = await statements_since(rt)
    return Window(n, seconds, cpu, pg, busy, statements)


# Timed passes of the floor over the same records (after one untimed pass): one pass of
# 3,000 records lasts ~30 ms, so one pass alone moved with every hiccup of the machine.
FLOOR_PASSES = 7


async def floor_passes(kafka: KafkaConfig, n: int, passes: int) -> list[float]:
    """The floor's side (``--floor-child``): a bare aiokafka consumer (no group, no DB,
    no handler; the client the instance consumes with, records decoded by its compiled
    extension) reading the n records of the orders topic from the beginning, ``passes``
    times after an untimed first pass (the connection to the partitions' leader, the
    offsets' look-up and the broker's first read of the segments are set-up, not
    consuming). Each pass's clock starts at the seek and includes every fetch. Returns
    each timed pass's records/s."""
    consumer = AIOKafkaConsumer(
        **kafka.connection_options(),
        group_id=None,
        enable_auto_commit=False,
        # The records are all there: a fetch never waits for new ones, except the one
        # in flight when a pass ends, which would otherwise hold the next pass's
        # first fetch for up to its wait (500 ms by default).
        fetch_max_wait_ms=10,
    )
    await consumer.start()
    try:
        parts = [
            TopicPartition("afterglow.orders", p)
            for p in sorted(consumer.partitions_for_topic("afterglow.orders") or [])
        ]
        consumer.assign(parts)
        rates = []
        for k in range(passes + 1):
            t0 = time.perf_counter()
            await consumer.seek_to_beginning(*parts)
            seen = 0
            while seen < n:
                batch_ = await consumer.getmany(timeout_ms=500, max_records=1000)
                seen += sum(len(recs) for recs in batch_.values())
            if k:  # pass 0 is the warm-up
                rates.append(seen / (time.perf_counter() - t0))
        return rates
    finally:
        await consumer.stop()


def floor_child(spec: str) -> None:
    """Entry point of the floor's child (``--floor-child JSON``): prints its rates."""
    args = json.loads(spec)
    kafka = KafkaConfig(args["bootstrap"], enable_idempotence=args["idempotence"])
    rates = served_loop.run(floor_passes(kafka, args["n"], args["passes"]))
    print(json.dumps(rates), flush=True)


async def consumer_floor(rt: Runtime, kafka: KafkaConfig, n: int) -> list[float]:
    """The bare consumer's records/s over the same n records, pass by pass.

    Measured in a process of its own once the instance is idle (its outbox relay has
    published every event the engine wrote). In this process, right after the engine's
    window, it shared the event loop with the relay still publishing the journey
    events of the last batches, the engine's consumer and the timer loop, and read the
    3,000 records once (~30 ms, its first fetch and offset look-up included): 13,000
    to 103,000/s from run to run."""
    unsent = text(
        f"SELECT count(*) FROM {rt.tables.outbox.schema}.outbox"  # noqa: S608 - our schema
        " WHERE sent_at IS NULL"
    )
    await eventually(lambda: count(rt, unsent), lambda v: v == 0, timeout=120, interval=0.05)
    child = await spawn_floor_child(kafka, {"n": n, "passes": FLOOR_PASSES})
    out, _ = await child.communicate()
    if child.returncode != 0:
        raise RuntimeError(f"the floor's child failed ({child.returncode})")
    return [float(r) for r in json.loads(out)]


def peak_rss_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # KiB on Linux


def engine_only() -> None:
    """The journey engine's consumer and timer loop alone: messaging's consumer and
    dispatcher (same service, same process) would otherwise share the CPU with it,
    delivering the messages the timers request, and be what the figure measures."""
    import dataclasses

    from afterglow.journeys import app, handlers
    from afterglow.journeys.messaging import dispatcher

    app.SPEC = dataclasses.replace(app.SPEC, consumers=handlers.CONSUMERS)
    dispatcher.messaging_workers = lambda runtime: []  # type: ignore[assignment]


async def bench(args: argparse.Namespace, database_url: str, kafka: KafkaConfig) -> None:
    if not args.with_messaging:
        engine_only()
    print(
        "one orchestrator instance: "
        + ("engine and messaging" if args.with_messaging else "the engine alone (no messaging)")
    )
    clock = ManualClock()
    timers_measured = args.timers > 0 or args.customers > 0
    settings = Settings(
        log_json=False,
        log_level="WARNING",
        # Polled every 50 ms when timers are measured (the ManualClock's jump is seen
        # at the next poll, not a second later). With --timers 0 the service's default:
        # two idle lanes claiming 40 times a second cost ~2 ms of this process's CPU a
        # round (~8% of a core), work a production instance polling once a second
        # does not do, inside the events' window.
        journeys_timer_poll_interval_s=0.05
        if timers_measured
        else Settings().journeys_timer_poll_interval_s,
        relay_poll_interval_s=0.2,
    )
    app = create_app(settings, clock)
    async with serve_app(app) as client:
        await eventually(lambda: client.get("/readyz"), lambda r: r.status_code == 200, timeout=90)
        rt: Runtime = app.state.runtime
        batch = settings.journeys_timer_batch

        if args.customers:
            fired = await fire_all(rt, clock, args.customers)
            print(f"customers: {args.customers} check-in timers fired by one instance")
            print(f"  wall time   {fired.seconds:8.1f} s  ({fired.rate:.0f} timers/s)")
            print(f"  {fired.cpu_per('timer')}")
            print(f"  peak RSS    {peak_rss_mb():8.0f} MiB")
            return

        n = args.timers
        if n <= 0:  # --timers 0: the events alone
            await events_phase(rt, clock, args, kafka)
            return
        floor = await timers_floor(rt, n, batch)
        fired = await fire_all(rt, clock, n)
        rate = fired.rate
        peer = None if args.skip_peer else await procrastinate_peer(database_url, n)
        print(f"timers: {n} fired by one instance (batch {batch})")
        print(f"  engine      {rate:8.0f} timers/s")
        print(f"  floor       {floor:8.0f} timers/s  (claim SKIP LOCKED + mark fired, no engine)")
        print(f"  ratio engine/floor: {rate / floor:.4f}")
        print(f"  {fired.cpu_per('timer')}")
        if peer is None:
            print("  peer        (skipped, or procrastinate not installed: --group bench)")
        else:
            print(
                f"  peer        {peer:8.0f} jobs/s  (procrastinate, {n} due no-op jobs, 16 workers)"
            )
            print(f"  ratio engine/procrastinate: {rate / peer:.1f}")

        for target in args.pending:
            await seed_pending(rt, target - await pending_count(rt))
            await park_due_soon(rt, timedelta(days=30))
            k = args.pending_fire
            fired = await fire_all(rt, clock, k)
            have = await pending_count(rt)
            print(
                f"  cost per timer with {have:>7} pending: {fired.seconds / k * 1e6:8.0f} us"
                f" ({k} fired; {fired.cpu_per('timer')})"
            )

        await events_phase(rt, clock, args, kafka)


async def events_phase(
    rt: Runtime, clock: ManualClock, args: argparse.Namespace, kafka: KafkaConfig
) -> None:
    if args.events > 0:
        # CPU per event is printed too: steadier than the rate on a shared machine.
        w = await events_rate(rt, clock, args.events, kafka)
        assert w.machine_cpu_s is not None  # events_rate measures it
        cores = os.cpu_count() or 1
        passes = sorted(await consumer_floor(rt, kafka, args.events))
        raw_rate = passes[len(passes) // 2]
        print(f"events: {args.events} order.placed consumed by one instance (publish to rows)")
        print(
            f"  engine      {w.rate:8.0f} events/s  ({w.cpu_per('event')};"
            f" {w.machine_cpu_s / w.seconds:.2f} of {cores} cores busy)"
        )
        # The instance is one process and its event loop one thread: the nearer this is
        # to a whole core, the more its Python sets the pace, and the less more
        # transactions in flight can give. Below it, the loop waits on PostgreSQL: at
        # 0.75-0.78 of a core that was the end of each poll, where a poll's largest
        # partitions ran alone (polls now overlap: afterglow.events.consumer).
        print(
            f"  instance    {w.python_cpu_s / w.seconds:8.2f} of one core  (this process:"
            " one event loop, one thread)"
        )
        print(
            f"  floor       {raw_rate:8.0f} events/s  (bare consumer reading the topic: median"
            f" of {len(passes)} passes, {passes[0]:.0f} to {passes[-1]:.0f})"
        )
        print(f"  ratio engine/floor: {w.rate / raw_rate:.4f}")
        # The machine's CPU per event bounds the rate on these cores, however the work
        # is spread over them: the ceiling shows what a ratio needs.
        machine_s = w.machine_cpu_s / w.n
        ceiling = cores / machine_s
        print(
            f"  machine     {machine_s * 1e6:8.0f} us CPU per event, every process:"
            f" {cores} cores hold at most {ceiling:.0f} events/s at that cost"
            f" ({ceiling / raw_rate:.4f} of the floor)"
        )
        if w.statements:
            print("  PostgreSQL's time per event by statement (server-side, most first):")
            for r in w.statements:
                print(
                    f"    {r.ms * 1000 / w.n:6.1f} us  {r.calls:5d} calls  {r.rows:7d} rows"
                    f"  {statement_label(r.query)}"
                )
    print(f"peak RSS      {peak_rss_mb():8.0f} MiB  (the instance and this driver)")


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--timers", type=int, default=3000)
    parser.add_argument("--events", type=int, default=3000)
    parser.add_argument(
        "--pending",
        type=lambda v: [int(x) for x in v.split(",") if x],
        default=[10_000, 200_000],
        help="table sizes (pending timers) to print the cost per timer at",
    )
    parser.add_argument("--pending-fire", type=int, default=2000)
    parser.add_argument(
        "--customers", type=int, default=0, help="only: fire N check-ins, print the wall time"
    )
    parser.add_argument(
        "--with-messaging", action="store_true", help="run messaging's consumer and dispatcher too"
    )
    parser.add_argument("--skip-peer", action="store_true", help="do not run procrastinate")
    parser.add_argument(
        "--profile", action="store_true", help="print cProfile's top entries of the process"
    )
    parser.add_argument("--floor-child", help=argparse.SUPPRESS)  # see consumer_floor
    args = parser.parse_args()
    if args.floor_child:
        floor_child(args.floor_child)
        return
    os.environ.setdefault("AFTERGLOW_ONLY_SERVICES", "journeys")
    profiler = cProfile.Profile() if args.profile else None
    with tempfile.TemporaryDirectory() as tmp, running_stack(Path(tmp), ephemeral=True) as stack:
        os.environ.update(stack.env())
        kafka = KafkaConfig(
            stack.kafka_bootstrap_servers, enable_idempotence=stack.kafka_enable_idempotence
        )
        if profiler:
            profiler.enable()
        served_loop.run(bench(args, stack.database_url, kafka))
        if profiler:
            profiler.disable()
            pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
            pstats.Stats(profiler).sort_stats("cumulative").print_stats(40)


if __name__ == "__main__":
    main()
