"""Outages and restarts lose nothing: webhooks at a steady rate while, one at a time,
each service is killed with SIGKILL and started again, PostgreSQL is stopped for 15 s,
the broker for 30 s, and poison records land on the orders topic. Then every webhook
answered 2xx must be exactly one order, one journey and one points award.

Prints per fault: orders accepted, lost, doubled, answers that were not 2xx (the
sender retried them) and the seconds from the end of the fault until the last of its
orders had reached every service; the next fault waits for that.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable

import pytest
from aiokafka import AIOKafkaProducer
from harness import ADMIN_TOKEN, Checker, Driver, Fault, report, sample_readiness
from sqlalchemy.ext.asyncio import create_async_engine

from afterglow.devstack.brokers import ApacheKafkaBroker
from afterglow.devstack.demo import SERVICES, Receiver, Scenario
from afterglow.devstack.outages import PostgresOutage, start_kafka, stop_kafka
from afterglow.devstack.services import RunningServices
from afterglow.devstack.stack import Stack
from afterglow.events.testing import TopicTap

pytestmark = [pytest.mark.timeout(1200), pytest.mark.slow]

RATE = 2.0  # orders per second
LEAD_S, TAIL_S = 3.0, 5.0  # driving before and after each fault
POISON_KEY = b"faults:poison"


async def test_outages_and_restarts_lose_nothing(
    services: RunningServices, stack: Stack, kafka_broker: ApacheKafkaBroker
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

    async def kafka_down() -> None:
        await asyncio.to_thread(stop_kafka, kafka_broker)
        await asyncio.sleep(30)
        await asyncio.to_thread(start_kafka, kafka_broker)

    async def poison() -> None:
        producer = AIOKafkaProducer(
            bootstrap_servers=stack.kafka_bootstrap_servers, enable_idempotence=True, acks="all"
        )
        await producer.start()
        try:
            await producer.send_and_wait("afterglow.orders", b"{not json", key=POISON_KEY)
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
            Scenario(urls, ADMIN_TOKEN, receiver, timeout=120) as sc,
            TopicTap(stack.kafka_bootstrap_servers, "afterglow.orders.dlq") as dlq,
        ):
            await sc.register_tenant()
            await sc.configure()
            driver, checker = Driver(sc, rate=RATE), Checker(sc)
            stop = asyncio.Event()
            watcher = asyncio.create_task(checker.watch(driver.orders, stop))

            async def inject(name: str, action: Callable[[], Awaitable[None]]) -> None:
                fault, sampled = Fault(name), asyncio.Event()
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
                await checker.until_complete(
                    [o for o in driver.orders if o.fault == name], timeout=240
                )

            t0 = time.monotonic()
            for name in SERVICES:
                await inject(f"kill -9 {name}", lambda n=name: kill(n))
            await inject("postgres down 15s", postgres_down)
            await inject("kafka down 30s", kafka_down)
            await inject("poison records", poison)
            await driver.settle()
            stop.set()
            await watcher
            await checker.final(driver.orders, timeout=300)
            dead = await dlq.wait_for_records(lambda r: r.key == POISON_KEY, count=2, timeout=60)
    lines, failures = report(driver.orders, faults)
    print(f"\nfaults: {len(driver.orders)} orders in {time.monotonic() - t0:.0f}s")
    print("\n".join(lines), flush=True)
    assert dead, "poison records are dead-lettered"
    for outage in (f for f in faults if f.name.startswith(("postgres", "kafka"))):
        assert outage.unready, f"/readyz said 503 somewhere during {outage.name}"
    assert not failures, "\n".join(failures)
