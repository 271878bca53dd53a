"""The timer loop keeps its pooled connections without a liveness check on checkout
(workers.journey_workers): a connection the server dropped while idle fails one round,
and the next round, on a new connection, fires the timers. Nothing is lost or skipped."""

from __future__ import annotations

from sqlalchemy import text

from ..conftest import DAY, Orchestrator, new_customer
from .test_default_journey import kind, placed_and_delivered

# The pool the timer rounds run on (kit.app: the writers' pool of a service with an API).
TIMER_POOL = "journeys-writers"


async def test_a_timer_due_after_its_loops_connections_were_killed_still_fires(
    orch: Orchestrator, tenant_id: str
) -> None:
    customer = new_customer()
    h = await orch.headers(tenant_id)
    await placed_and_delivered(orch, tenant_id, customer, h)
    async with orch.runtime.engine.connect() as conn:
        killed = await conn.execute(
            text(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity"
                " WHERE application_name = :name"
            ),
            {"name": TIMER_POOL},
        )
        # The loops poll every 50 ms: their connections wait in the pool, and die there.
        assert True in killed.scalars().all()
    orch.clock.advance(3 * DAY)
    await orch.out(tenant_id, customer, lambda e: kind(e) == "check_in")
    await orch.tap.events(settle=0.5)
    kinds = [kind(e) for e in orch.seen(tenant_id, customer)]
    assert kinds.count("check_in") == 1, kinds
