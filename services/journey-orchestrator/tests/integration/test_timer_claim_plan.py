"""The timer claim's plan: due rows read through the partial index in due order.

A prepared statement runs on a generic plan after its fifth execution, and a generic
plan cannot use ``ix_journey_timers_due`` (``WHERE state = 'pending'``) unless the
claim names ``'pending'`` as a literal: with a bound value the claim read and sorted
every pending timer, so each round cost more as the table grew (27 ms at 200,000
pending, 0.2 ms through the index). The plan is read here with the generic plan forced.
"""

from __future__ import annotations

import json
from datetime import datetime
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.dialects import postgresql

from afterglow.journeys import store

from ..conftest import Orchestrator


def _literal(value: Any) -> str:
    if isinstance(value, int):
        return str(value)
    text = value.isoformat() if isinstance(value, datetime) else str(value)
    return "'" + text.replace("'", "''") + "'"


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    out = [plan]
    for child in plan.get("Plans", []):
        out.extend(_nodes(child))
    return out


@pytest.mark.parametrize("lanes", [1, 2])
async def test_the_claim_reads_due_timers_through_the_partial_index(
    orch: Orchestrator, lanes: int
) -> None:
    stmt = store.claim_statement(orch.clock.now(), 200, lane=store.Lane(lanes - 1, lanes))
    compiled = stmt.compile(dialect=postgresql.asyncpg.dialect())  # type: ignore[attr-defined]
    values = [compiled.params[name] for name in compiled.positiontup or []]
    async with orch.runtime.sessionmaker.begin() as s:
        # Through the session, so that its transaction has begun and SET LOCAL holds.
        await s.execute(text("SET LOCAL plan_cache_mode = force_generic_plan"))
        # A table of a few rows would be read whole whatever the query says: the sort
        # and the scan are priced out so the plan shows what the claim allows.
        await s.execute(text("SET LOCAL enable_seqscan = off"))
        await s.execute(text("SET LOCAL enable_sort = off"))
        raw = (await (await s.connection()).get_raw_connection()).driver_connection
        await raw.execute(f"PREPARE timer_claim AS {compiled}")
        # EXECUTE takes no bound parameters: the values go in as literals.
        args = ", ".join(_literal(v) for v in values)
        out = await raw.fetchval(f"EXPLAIN (FORMAT JSON) EXECUTE timer_claim({args})")
        await raw.execute("DEALLOCATE timer_claim")
        await s.rollback()
    plans = json.loads(out) if isinstance(out, str) else out  # the pool decodes json
    nodes = _nodes(plans[0]["Plan"])
    assert {n.get("Index Name") for n in nodes} & {"ix_journey_timers_due"}, nodes
    assert not [n for n in nodes if n["Node Type"] == "Sort"], nodes
