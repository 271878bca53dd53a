"""Stored webhook deliveries processed per second (the processing worker's drain rate),
and SQL statements per delivery, against a claim-and-mark floor in the same run.

Real stack (embedded PostgreSQL unless DATABASE_URL is set), the app's runtime in the
``api`` role (no worker of its own: the rounds timed here are the only ones). A backlog
of ``--deliveries`` signed Shopify ``orders/create`` bodies (distinct orders,
``--customers`` customers, so customers repeat within a batch) is stored as the
webhook receivers store it, ``received``; then ``processing.process_received`` runs
rounds of ``--batch`` until none is left. Statements are counted with SQLAlchemy's
``before_cursor_execute`` (BEGIN/COMMIT are not cursor executions: not counted).

The floor, on an identical backlog of another tenant: each round claims a batch as the
worker does (``FOR UPDATE SKIP LOCKED``, oldest first) and marks it processed, nothing
else: what a round costs before any normalization, order book or outbox work.

``--one-by-one`` also times the fallback path (one transaction per delivery), and
``--profile`` prints cProfile's top entries for the timed part.

    uv run python bench/ingest/drain.py [--deliveries 5000] [--batch 200] [--customers 2000]
"""

from __future__ import annotations

import argparse
import copy
import cProfile
import json
import os
import pstats
import tempfile
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import event, text

from afterglow.devstack import served_loop
from afterglow.devstack.stack import running_stack

FIXTURE = (
    Path(__file__).resolve().parents[2] / "services/orders-ingest/tests/fixtures/shopify_order.json"
)
CLAIM_AND_MARK = text(
    """
    UPDATE ingest.deliveries SET status = 'processed'
    WHERE id IN (
        SELECT id FROM ingest.deliveries WHERE status = 'received'
        ORDER BY received_at, id LIMIT :n FOR UPDATE SKIP LOCKED
    )
    """
)


def backlog(tenant: str, n: int, customers: int, offset: int) -> dict[str, list[Any]]:
    """``n`` orders/create deliveries as the group commit stores them (its columns)."""
    from afterglow.ingest.group_commit import _COLUMNS, NewDelivery

    order = json.loads(FIXTURE.read_text())
    now = datetime.now(UTC)
    order["created_at"] = order["processed_at"] = now.isoformat(timespec="seconds")
    rows = []
    for i in range(n):
        body = copy.deepcopy(order)
        body["id"] = body["order_number"] = offset + i
        body["customer"]["id"] = 900_000 + i % customers
        raw = json.dumps(body, separators=(",", ":")).encode()
        headers = {"x-shopify-topic": "orders/create"}
        at = now + timedelta(microseconds=i)  # the order they arrived in
        rows.append(
            NewDelivery(tenant, "shopify", "orders/create", f"wh-{offset + i}", headers, raw, at)
        )
    cols = [d.row() for d in rows]
    return {name: [r[i] for r in cols] for i, name in enumerate(_COLUMNS)}


async def main(args: argparse.Namespace) -> None:
    from afterglow.ingest import intake_store, processing
    from afterglow.ingest.app import create_app
    from afterglow.ingest.settings import IngestSettings

    app = create_app(IngestSettings(log_level="WARNING", service_role="api"))
    async with app.router.lifespan_context(app):
        rt = app.state.runtime
        statements = 0

        def count(*_: Any) -> None:
            nonlocal statements
            statements += 1

        async def store(tenant: str, n: int, offset: int) -> None:
            async with rt.engine.begin() as conn:
                await conn.execute(
                    text("INSERT INTO ingest.tenants (tenant_id, name) VALUES (:t, :t)"),
                    {"t": tenant},
                )
                await intake_store.insert_raw_deliveries(
                    conn, backlog(tenant, n, args.customers, offset)
                )

        async def timed(
            label: str, n: int, round_: Callable[[], Awaitable[int]], profile: bool = False
        ) -> tuple[float, float]:
            nonlocal statements
            statements = 0
            profiler = cProfile.Profile() if profile else None
            event.listen(rt.engine.sync_engine, "before_cursor_execute", count)
            t0 = time.perf_counter()
            if profiler:
                profiler.enable()
            done = 0
            while (claimed := await round_()) != 0:
                done += max(claimed, 0)
            if profiler:
                profiler.disable()
            elapsed = time.perf_counter() - t0
            event.remove(rt.engine.sync_engine, "before_cursor_execute", count)
            rate = done / elapsed
            print(
                f"  {label:<44} {rate:8.0f} deliveries/s  "
                f"{statements / max(done, 1):6.2f} statements/delivery  ({done} in {elapsed:.1f} s)"
            )
            if profiler:
                pstats.Stats(profiler).sort_stats("cumulative").print_stats(30)
                pstats.Stats(profiler).sort_stats("tottime").print_stats(25)
            return rate, statements / max(done, 1)

        async def floor_round() -> int:
            async with rt.engine.begin() as conn:
                return int((await conn.execute(CLAIM_AND_MARK, {"n": args.batch})).rowcount)

        n, offset = args.deliveries, 10_000_000
        print(
            f"orders-ingest drain: {n} stored orders/create, batch {args.batch}, "
            f"{args.customers} customers, {os.cpu_count()} cores"
        )
        # Warm-up: statement caches, the prepared statements of one connection.
        await store(f"warm-{uuid.uuid4().hex[:6]}", 2 * args.batch, offset)
        offset += n
        await timed(
            "(warm-up)", 2 * args.batch, lambda: processing.process_received(rt, args.batch)
        )

        await store(f"floor-{uuid.uuid4().hex[:6]}", n, offset)
        offset += n
        floor, _ = await timed("floor: claim and mark processed", n, floor_round)

        await store(f"bench-{uuid.uuid4().hex[:6]}", n, offset)
        offset += n
        rate, _ = await timed(
            f"processing rounds of {args.batch}",
            n,
            lambda: processing.process_received(rt, args.batch),
            args.profile,
        )
        print(f"  {'ratio to floor':<44} {rate / floor:8.3f}")
        if args.one_by_one:
            one = min(n, 1000)
            await store(f"one-{uuid.uuid4().hex[:6]}", one, offset)
            offset += one
            await timed(
                "one transaction per delivery (fallback)",
                one,
                lambda: processing.process_one_by_one(rt, args.batch),
            )


def cli() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--deliveries", type=int, default=5000)
    parser.add_argument("--batch", type=int, default=200)
    parser.add_argument("--customers", type=int, default=2000)
    parser.add_argument("--one-by-one", action="store_true")
    parser.add_argument("--profile", action="store_true")
    args = parser.parse_args()
    os.environ.setdefault("AFTERGLOW_ONLY_SERVICES", "ingest")
    with tempfile.TemporaryDirectory() as tmp, running_stack(Path(tmp), ephemeral=True) as stack:
        os.environ.update(stack.env())
        served_loop.run(main(args))


if __name__ == "__main__":
    cli()
