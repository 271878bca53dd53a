"""Outages and restarts lose nothing: webhooks at a steady rate while, one at a time,
each service is killed with SIGKILL and started again, PostgreSQL is stopped for 15 s and
for 60 s, the broker for 30 s, consumer groups rebalance again and again as instances
come and go, every PostgreSQL connection slot is taken for 15 s, and poison records land
on every topic. Then every webhook answered 2xx must be exactly one order, one journey,
one welcome message, one points award and one survey.

Prints per fault: orders accepted, lost, doubled, answers that were not 2xx (the
sender retried them) and the seconds from the end of the fault until the last of its
orders had reached every service; the next fault waits for that.

The clock jumped forward a week is injected per service process, not for the machine:
every service runs under libfaketime (afterglow.devstack.clockjump), and the suite moves
their wall clock by rewriting the offset file they read. PostgreSQL's now(), the broker
and the driver keep the machine's clock. The journeys are compressed (days last
seconds), so at the jump every timer pending (check-ins, surveys, review asks of the
orders in flight) is due at once: each must fire once (the checker also counts every
message kind of a customer: two is a double), nothing is lost and no webhook is answered
5xx. It is the last fault: the jump stays.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import time
from collections import Counter
from collections.abc import Awaitable, Callable

import asyncpg
import pytest
from aiokafka import AIOKafkaProducer
from sqlalchemy.ext.asyncio import create_async_engine

from afterglow.devstack.brokers import ApacheKafkaBroker
from afterglow.devstack.clockjump import ServiceClock
from afterglow.devstack.demo import SERVICES, Receiver, Scenario
from afterglow.devstack.faults import ADMIN_TOKEN, Checker, Driver, Fault, report, sample_readiness
from afterglow.devstack.outages import PostgresOutage, start_kafka, stop_kafka
from afterglow.devstack.services import RunningServices
from afterglow.devstack.stack import Stack
from afterglow.events.catalog import topic_for
from afterglow.events.testing import TopicTap
from afterglow.events.topics import TOPICS
from afterglow.kit.registry import discover_services

pytestmark = [pytest.mark.timeout(1800), pytest.mark.slow]

RATE = 2.0  # orders per second
LEAD_S, TAIL_S = 2.0, 4.0  # driving before and after each fault
POISON_KEY = b"faults:poison"
WEEK_S = 7 * 24 * 3600
# The services with consumer groups: a rebalance storm starts and stops more of them.
CONSUMING = ("journeys", "loyalty", "feedback", "referrals")
STORM_ROUNDS = 3
# A day of the compressed journey: an order is complete (surveyed) seven "days" after its
# delivery, and each fault waits for its orders, so this is paid once per fault.
SECONDS_PER_DAY = 0.5
SURVEY_AFTER_DAYS = 7  # the default journey's survey stage: P7D after order.delivered
# FAULTS="kill,poison" runs only the faults whose names contain one of those words.
ONLY = [w.strip() for w in os.environ.get("FAULTS", "").split(",") if w.strip()]


def consumed_topics() -> set[str]:
    """The topics some service's consumer group reads (its code says which)."""
    return {
        topic_for(event_type)
        for spec in discover_services().values()
        for group in spec.consumer_groups()
        for event_type in group.event_types
    }


async def until_dead_lettered(dlq: TopicTap, wanted: set[str], timeout_s: float) -> None:
    """Wait (boundedly) until poison has reached each of ``wanted``; the assertion after
    the run names what is missing."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        got = {r.topic for r in dlq.records if r.key == POISON_KEY}
        if wanted <= got:
            return
        with contextlib.suppress(AssertionError):
            await dlq.wait_for_records(lambda r: r.key == POISON_KEY, count=len(got) + 1, timeout=2)


def chosen(fault: str) -> bool:
    return not ONLY or any(word in fault for word in ONLY)


async def test_outages_and_restarts_lose_nothing(
    services: RunningServices,
    stack: Stack,
    kafka_broker: ApacheKafkaBroker,
    service_clock: ServiceClock,
) -> None:
    urls = {n: [p.url for p in procs] for n, procs in services.processes.items()}
    first_urls = {n: u[0] for n, u in urls.items()}
    engine = create_async_engine(stack.database_url)
    postgres = await PostgresOutage.of(engine)
    await engine.dispose()
    assert postgres is not None, "the fault suite stops its own embedded PostgreSQL"
    faults: list[Fault] = []

    async def kill(name: str) -> None:
        services.kill(name, 0)
        await asyncio.to_thread(services.restart, name, 0)

    async def postgres_down() -> None:
        await postgres.stop()
        await asyncio.sleep(15)
        await postgres.start()

    async def postgres_down_60s() -> None:
        await postgres.stop()
        await asyncio.sleep(60)
        await postgres.start()

    async def rebalance_storm() -> None:
        # Each round a second instance of every consuming service joins its groups, then
        # leaves them: two rebalances per group per round, with batches in flight.
        for _ in range(STORM_ROUNDS):
            added = await asyncio.gather(
                *(asyncio.to_thread(services.add_instance, name) for name in CONSUMING)
            )
            await asyncio.sleep(3)
            await asyncio.gather(
                *(
                    asyncio.to_thread(services.remove_instance, name, i)
                    for name, i in zip(CONSUMING, added, strict=True)
                )
            )

    async def connections_exhausted() -> None:
        # Every connection slot PostgreSQL has, held for 15 s: the services' pools cannot
        # grow or reconnect, as when another client leaks connections.
        dsn = stack.database_url.replace("postgresql+asyncpg://", "postgresql://")
        held: list[asyncpg.Connection] = []
        try:
            while True:
                try:
                    held.append(await asyncpg.connect(dsn, timeout=5))
                except (asyncpg.PostgresError, OSError, TimeoutError):
                    break
            print(f"faults: holding {len(held)} connections", flush=True)
            await asyncio.sleep(15)
        finally:
            await asyncio.gather(*(c.close() for c in held), return_exceptions=True)

    async def kafka_down() -> None:
        await asyncio.to_thread(stop_kafka, kafka_broker)
        await asyncio.sleep(30)
        await asyncio.to_thread(start_kafka, kafka_broker)

    async def clock_jump() -> None:
        service_clock.jump(WEEK_S)
        await service_clock.until_seen(
            sc.http, [p.url for ps in services.processes.values() for p in ps]
        )

    async def poison() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=stack.kafka_bootstrap_servers, enable_idempotence=True, acks="all"
        )
        await producer.start()
        try:
            # On every topic, a record that is not JSON; on orders, also one that parses
            # but fails its schema.
            for topic in TOPICS:
                await producer.send_and_wait(topic.name, b"{not json", key=POISON_KEY)
            await producer.send_and_wait(
                "afterglow.orders",
                b'{"order_id": 1}',
                key=POISON_KEY,
                headers=[
                    ("ce_specversion", b"1.0"),
                    ("ce_id", b"faults-poison-1"),
                    ("ce_type", b"afterglow.order.placed.v1"),
                    ("ce_source", b"faults"),
                ],
            )
        finally:
            await producer.stop()

    with Receiver().running() as receiver:
        async with (
            Scenario(
                urls, ADMIN_TOKEN, receiver, timeout=120, seconds_per_day=SECONDS_PER_DAY
            ) as sc,
            TopicTap(stack.kafka_bootstrap_servers, *(t.dlq for t in TOPICS)) as dlq,
        ):
            await sc.register_tenant()
            await sc.configure()
            driver, checker = (
                Driver(sc, rate=RATE),
                Checker(sc, earliest_complete_s=SURVEY_AFTER_DAYS * SECONDS_PER_DAY),
            )
            stop = asyncio.Event()
            watcher = asyncio.create_task(checker.watch(driver.orders, stop))

            async def inject(name: str, action: Callable[[], Awaitable[None]]) -> None:
                fault, sampled = Fault(name, began=time.monotonic()), asyncio.Event()
                async with driver.drive(name):
                    await asyncio.sleep(LEAD_S)
                    sampler = asyncio.create_task(
                        sample_readiness(sc.http, first_urls, fault, sampled)
                    )
                    fault.started = time.monotonic()
                    await action()
                    fault.ended = time.monotonic()
                    print(f"faults: {name} took {fault.ended - fault.started:.1f}s", flush=True)
                    await asyncio.sleep(TAIL_S)
                    sampled.set()
                    await sampler
                faults.append(fault)
                # Recovered before the next fault, so that its time-to-recover is its own.
                await driver.settle()
                mine = [o for o in driver.orders if o.fault == name]
                pending = await checker.until_watched(mine, timeout=240)
                fault.finished = time.monotonic()
                if pending:  # the final count says lost or doubled; this says where
                    sample = await checker.counts(pending[0])
                    print(
                        f"faults: {name}: {len(pending)} of {len(mine)} orders not complete"
                        f" after 240 s, e.g. {pending[0].order_id}: {sample}",
                        flush=True,
                    )
                # As each fault ends, not only in the table: a run cut short by its
                # timeout still says how long each fault it got through took.
                done = [o.complete_at for o in mine if o.complete_at]
                recovered = f"{max(done) - fault.ended:.1f}s" if done else "-"
                print(
                    f"faults: {name}: {len(mine)} orders, complete {len(done)}, recovered"
                    f" {recovered} after the fault, {fault.finished - fault.began:.1f}s in all",
                    flush=True,
                )

            t0 = time.monotonic()
            plan: list[tuple[str, Callable[[], Awaitable[None]]]] = [
                *((f"kill -9 {n}", lambda n=n: kill(n)) for n in SERVICES),
                ("postgres down 15s", postgres_down),
                ("postgres down 60s", postgres_down_60s),
                ("kafka down 30s", kafka_down),
                ("rebalance storm", rebalance_storm),
                ("connections exhausted", connections_exhausted),
                ("poison records", poison),
                ("clock jumped a week", clock_jump),
            ]
            for name, action in plan:
                if chosen(name):
                    await inject(name, action)
            await driver.settle()
            stop.set()
            await watcher
            await checker.final(driver.orders, timeout=300)
            if chosen("poison records"):
                await until_dead_lettered(dlq, {t + ".dlq" for t in consumed_topics()}, 90)
            dead = [r for r in dlq.records if r.key == POISON_KEY]
    lines, failures = report(driver.orders, faults)
    print(f"\nfaults: {len(driver.orders)} orders in {time.monotonic() - t0:.0f}s")
    print("\n".join(lines), flush=True)
    letters = Counter(r.topic for r in dead)
    print(f"faults: poison dead-lettered per topic: {dict(sorted(letters.items()))}")
    # Every consumed topic's poison is dead-lettered (by each group that reads it).
    missing = [t.dlq for t in TOPICS if t.name in consumed_topics() and not letters[t.dlq]]
    if chosen("poison records"):
        assert not missing, f"poison records not dead-lettered on {missing}"
    for outage in (f for f in faults if f.name.startswith(("postgres", "kafka"))):
        assert outage.unready, f"/readyz said 503 somewhere during {outage.name}"
    assert not failures, "\n".join(failures)
