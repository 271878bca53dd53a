"""Two orchestrator replicas in one consumer group, and a replica killed while holding
due timers: no transition twice, no timer lost, none fired twice."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections import Counter
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from sqlalchemy import func, select

from afterglow.devstack.pytest_plugin import serve_app
from afterglow.events import catalog as c
from afterglow.events.testing import eventually
from afterglow.journeys.app import create_app
from afterglow.journeys.models import JourneyTimer, JourneyTransition

from ..conftest import DAY, Orchestrator, make_settings, new_customer, order_placed

HOLDER = Path(__file__).parent / "hold_timers.py"


@pytest.fixture(scope="module")
async def second(orch: Orchestrator) -> AsyncIterator[None]:
    """A second replica sharing the first one's clock (one world, two processes' worth of
    consumers and timer loops)."""
    app = create_app(make_settings(), orch.clock)
    async with serve_app(app) as client:
        await eventually(lambda: client.get("/readyz"), lambda r: r.status_code == 200, timeout=60)
        yield


async def transitions(orch: Orchestrator, tenant: str) -> list[tuple[str, str, str | None]]:
    async with orch.runtime.sessionmaker() as s:
        rows = await s.execute(
            select(
                JourneyTransition.instance_id, JourneyTransition.kind, JourneyTransition.to_stage
            ).where(JourneyTransition.tenant_id == tenant)
        )
        return [tuple(r) for r in rows]  # type: ignore[misc]


async def timer_states(orch: Orchestrator, tenant: str) -> dict[str, int]:
    async with orch.runtime.sessionmaker() as s:
        rows = await s.execute(
            select(JourneyTimer.state, func.count())
            .where(JourneyTimer.tenant_id == tenant)
            .group_by(JourneyTimer.state)
        )
        return {state: n for state, n in rows}


async def test_two_replicas_never_double_apply(
    orch: Orchestrator, second: None, tenant_id: str
) -> None:
    customers = [new_customer() for _ in range(24)]
    now = orch.clock.now()
    for cust in customers:
        await orch.publish(tenant_id, cust, order_placed(f"o-{cust}", now))
        await orch.publish(
            tenant_id,
            cust,
            c.OrderDelivered(order_id=f"o-{cust}", delivered_at=now, reported_by="api"),
        )

    async def pending() -> dict[str, int]:
        return await timer_states(orch, tenant_id)

    await eventually(pending, lambda t: t.get("pending", 0) == len(customers), timeout=40)
    for step, want in ((3 * DAY, 2), (4 * DAY, 3)):
        orch.clock.advance(step)
        await eventually(
            lambda: transitions(orch, tenant_id),
            lambda ts: (
                sum(1 for t in ts if t[1] == "stage") >= len(customers) * want  # noqa: B023 - awaited inside the loop
            ),
            timeout=40,
        )
    await asyncio.sleep(1.0)  # let any double application show up
    ts = await transitions(orch, tenant_id)
    dupes = [k for k, n in Counter(t for t in ts if t[1] in ("stage", "split")).items() if n > 1]
    assert dupes == []
    stages = Counter(t[2] for t in ts if t[1] == "stage")
    assert stages == {"onboarding": 24, "check_in": 24, "survey": 24}
    states = await timer_states(orch, tenant_id)
    # Each customer now waits for a survey answer: a reminder and a timeout pending.
    assert states["pending"] == 2 * len(customers)
    assert states["fired"] == 2 * len(customers)  # check-in and survey, once each


async def test_replica_killed_while_holding_due_timers_loses_nothing(
    orch: Orchestrator, second: None, tenant_id: str
) -> None:
    customers = [new_customer() for _ in range(5)]
    now = orch.clock.now()
    for cust in customers:
        await orch.publish(tenant_id, cust, order_placed(f"o-{cust}", now))
        await orch.publish(
            tenant_id,
            cust,
            c.OrderDelivered(order_id=f"o-{cust}", delivered_at=now, reported_by="api"),
        )
    await eventually(
        lambda: timer_states(orch, tenant_id), lambda t: t.get("pending", 0) == 5, timeout=40
    )

    proc = await asyncio.create_subprocess_exec(
        sys.executable, str(HOLDER), tenant_id, stdout=asyncio.subprocess.PIPE, env=dict(os.environ)
    )
    try:
        assert proc.stdout is not None
        line = await asyncio.wait_for(proc.stdout.readline(), timeout=30)
        assert line.decode().strip() == "held 5"
        orch.clock.advance(3 * DAY)  # every held timer is due now
        await asyncio.sleep(1.5)
        # Held by the hung replica: neither live replica may fire them.
        assert (await timer_states(orch, tenant_id)) == {"pending": 5}
    finally:
        proc.send_signal(signal.SIGKILL)
        await proc.wait()
    # Its transaction died with it; the locks are gone and the live replicas fire each once.
    await eventually(
        lambda: timer_states(orch, tenant_id), lambda t: t.get("fired", 0) == 5, timeout=40
    )
    for cust in customers:
        await orch.out(tenant_id, cust, lambda e: getattr(e.data, "kind", None) == "check_in")
    ts = await transitions(orch, tenant_id)
    check_ins = Counter(t[0] for t in ts if t[2] == "check_in" and t[1] == "stage")
    assert sorted(check_ins.values()) == [1] * 5
