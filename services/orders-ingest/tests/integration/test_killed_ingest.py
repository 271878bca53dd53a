"""orders-ingest as a real uvicorn process, killed with SIGKILL: a 2xx means stored, and
what is stored is processed once, whether the service dies mid-burst or while its
worker holds a batch half applied.

Its own module: no in-process app runs here, whose processing worker would take the
deliveries of the killed process and hide what these tests check.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from afterglow.devstack.services import KillableService, killable_services
from afterglow.devstack.stack import Stack

from ..hotpath_support import database, post_order, tenant_state, until_processed
from ..ingest_support import ADMIN, register

pytestmark = pytest.mark.slow


INGEST_ENV = {
    "INGEST_ADMIN_TOKEN": ADMIN["Authorization"].removeprefix("Bearer "),
    "LOG_LEVEL": "WARNING",
    "INGEST_RECONCILE_INTERVAL_S": "3600",
    "INGEST_PROCESS_POLL_S": "0.2",
}


@pytest.fixture
def ingest_processes(stack: Stack, tmp_path: Path) -> Iterator[Callable[[], KillableService]]:
    with killable_services(stack, tmp_path) as start:
        yield lambda: start("ingest", INGEST_ENV)


class TestKilled:
    async def test_sigkill_mid_burst_loses_nothing_answered_and_retries_are_accepted_once(
        self, stack, ingest_processes, tenant_id
    ):
        first = ingest_processes()
        await first.ready()
        burst = 300
        answered: dict[int, str] = {}  # n -> delivery id answered 2xx
        killed = asyncio.Event()
        limits = httpx.Limits(max_connections=50)
        async with httpx.AsyncClient(base_url=first.url, limits=limits, timeout=30) as c:
            secret = (await register(c, tenant_id))["shopify"]

            async def send(n: int) -> None:
                try:
                    r = await post_order(c, tenant_id, secret, n)
                except httpx.HTTPError:
                    return  # no answer: the sender retries it
                assert r.status_code == 200, r.text
                answered[n] = r.json()["delivery_id"]
                if len(answered) == burst // 3 and not killed.is_set():
                    first.kill()  # in the middle of the burst
                    killed.set()

            await asyncio.gather(*(send(n) for n in range(burst)))
        assert killed.is_set() and len(answered) < burst

        async with database(stack) as engine:
            second = ingest_processes()
            await second.ready()
            stored = set((await tenant_state(engine, tenant_id))["deliveries"])
            assert set(answered.values()) <= stored  # every 2xx was committed
            async with httpx.AsyncClient(base_url=second.url, timeout=30) as c:
                retries = await asyncio.gather(
                    *(
                        post_order(c, tenant_id, secret, n)
                        for n in range(burst)
                        if n not in answered
                    )
                )
            assert {r.status_code for r in retries} == {200}
            for r in retries:
                # Stored before the kill without an answer: a duplicate now; else new.
                assert r.json()["status"] == (
                    "duplicate" if r.json()["delivery_id"] in stored else "received"
                )
            state = await until_processed(engine, tenant_id, burst)
        assert len(state["deliveries"]) == burst
        assert {s for s, _ in state["deliveries"].values()} == {"processed"}
        assert len(state["placed"]) == len(set(state["placed"])) == burst

    async def test_worker_killed_mid_batch_its_deliveries_are_processed_once_on_restart(
        self, stack, ingest_processes, tenant_id
    ):
        first = ingest_processes()
        await first.ready()
        async with database(stack) as engine, engine.connect() as blocker:
            # The order book locked: the worker claims the batch, normalizes it, then
            # waits on its first order upsert, holding the batch half applied.
            await blocker.execute(text("LOCK TABLE ingest.orders IN EXCLUSIVE MODE"))
            async with httpx.AsyncClient(base_url=first.url, timeout=30) as c:
                secret = (await register(c, tenant_id))["shopify"]
                answers = await asyncio.gather(
                    *(post_order(c, tenant_id, secret, n) for n in range(20))
                )
            assert {r.status_code for r in answers} == {200}
            async with asyncio.timeout(60):
                while True:
                    if await _worker_waits_on_a_lock(engine):
                        break
                    await asyncio.sleep(0.1)
            first.kill()
            await blocker.rollback()  # the lock goes; the dead worker's batch rolls back
        async with database(stack) as engine:
            state = await tenant_state(engine, tenant_id)
            assert {s for s, _ in state["deliveries"].values()} == {"received"}
            second = ingest_processes()
            await second.ready()
            state = await until_processed(engine, tenant_id, 20)
        assert {s for s, _ in state["deliveries"].values()} == {"processed"}
        events = [e for _, ids in state["deliveries"].values() for e in ids]
        assert len(events) == 20 and sorted(events) == sorted(state["placed"])


async def _worker_waits_on_a_lock(engine: AsyncEngine) -> bool:
    async with engine.connect() as conn:
        waiting = (
            await conn.execute(
                text(
                    "SELECT count(*) FROM pg_stat_activity WHERE application_name = 'ingest' "
                    "AND wait_event_type = 'Lock' AND query ILIKE '%ingest.orders%'"
                )
            )
        ).scalar_one()
        return int(waiting) > 0
