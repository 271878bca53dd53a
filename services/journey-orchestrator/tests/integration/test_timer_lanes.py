"""The timer loop's lanes (store.Lane): each claims its own customers' timers."""

from __future__ import annotations

from collections import defaultdict
from datetime import timedelta

import pytest
from sqlalchemy import text

from afterglow.journeys import store

from ..conftest import Orchestrator


async def test_lanes_split_the_due_timers_by_customer(orch: Orchestrator, tenant_id: str) -> None:
    # Due in ten years: the app's own timer loops (on the suite's clock) leave them alone.
    far = orch.clock.now() + timedelta(days=3650)
    async with orch.runtime.sessionmaker.begin() as s:
        await s.execute(
            text(
                "INSERT INTO journeys.journey_timers"
                " (id, tenant_id, customer_id, instance_id, kind, key, due_at, payload,"
                "  state, created_at)"
                " SELECT :t || '-' || g, :t, 'c' || (g % 30), 'i' || g, 'stage_due', '1:due',"
                "  CAST(:far AS timestamptz), '{}'::jsonb, 'pending', :far"
                " FROM generate_series(1, 90) g"
            ),
            {"t": tenant_id, "far": far},
        )
    lanes_of: dict[str, set[int]] = defaultdict(set)
    claimed: list[str] = []
    # One transaction: its own row locks do not hide rows from it, so a timer two lanes
    # both claimed would show up twice.
    async with orch.runtime.sessionmaker.begin() as s:
        for i in range(3):
            rows = await store.claim_due_timers(s, far, 1000, tenant_id, lane=store.Lane(i, 3))
            assert rows, f"lane {i} of 3 got none of 30 customers"
            for r in rows:
                lanes_of[r.customer_id].add(i)
                claimed.append(r.id)
        await s.rollback()
    assert sorted(claimed) == sorted(f"{tenant_id}-{g}" for g in range(1, 91))
    assert all(len(lanes) == 1 for lanes in lanes_of.values()), lanes_of


def test_a_lane_is_one_of_its_count() -> None:
    with pytest.raises(ValueError):
        store.Lane(2, 2)
