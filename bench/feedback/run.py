"""The feedback consumer's events/s, and NPS over 1M answers.

Consumer (``--events N``, 0 to skip): the app in-process with its full lifespan on the
embedded stack; N events, half ``survey.requested`` (a survey row, a message request and
survey.sent in the outbox) and half ``order.placed`` with two line items, over 1,000
customers; events/s until the inbox holds all N, next to the bare batch-consumer floor
on the same records (bench/consumer_rate.py). ``--reviews``: a third of them
``review.requested`` instead (half of those reminders).

Metrics (``--rows N``, 0 to skip): the metrics query of the feedback service against a
bare count.

Inserts 1,000,000 NPS answers (generate_series, one tenant, spread over a year, 10% of
them superseded by a later change, plus 1M surveys sent and 200k rows of another tenant
as noise), then times the exact query ``GET /v1/metrics/nps`` runs (weekly buckets over
the year) and, as the floor, ``SELECT count(*)`` over the same rows. Prints the median
of several runs, the plan summary and the ratio.

Uses DATABASE_URL when set (it must already be migrated), else starts a throwaway
embedded PostgreSQL and migrates it.

    uv run python bench/feedback/run.py [--events 4000] [--reviews] [--rows 1000000] [--runs 7]
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
import uuid
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from sqlalchemy import text
from sqlalchemy.ext.asyncio import create_async_engine

from afterglow.devstack import served_loop
from afterglow.events import CloudEvent, KafkaConfig
from afterglow.events.catalog import (
    CustomerInfo,
    LineItem,
    Money,
    OrderPlaced,
    ReviewRequested,
    SurveyRequested,
)
from afterglow.feedback import metrics, metrics_store
from afterglow.feedback.app import SPEC
from afterglow.kit.migrations import upgrade

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from consumer_rate import (
    floor_rate,
    print_statements,
    report,
    service_consumer,
    service_rate,
    statements_of,
)

TENANT = "bench-nps"
START = datetime(2025, 1, 1, tzinfo=UTC)
END = datetime(2026, 1, 1, tzinfo=UTC)

# The n-th row lands n/N of the way through the year.
AT = "CAST(:start AS timestamptz) + interval '1 second' * g * (31536000.0 / CAST(:n AS int))"
SEED = """
INSERT INTO feedback.surveys (id, tenant_id, customer_id, request_id, kind, sent_at, expires_at,
                              first_answered_at)
SELECT 'bs-' || g, :tenant, 'c-' || (g % 50000), 'br-' || g, 'nps',
       {at},
       {at} + interval '14 days',
       CASE WHEN g % 3 = 0 THEN NULL
            ELSE {at} + interval '1 day' END
FROM generate_series(1, CAST(:n AS int)) AS g;

INSERT INTO feedback.responses (tenant_id, survey_id, customer_id, kind, score, order_id, source,
                                responded_at, superseded)
SELECT :tenant, 'bs-' || g, 'c-' || (g % 50000), 'nps', (g::bigint * 7919) % 11, 'o-' || g, 'page',
       {at}, g % 10 = 0
FROM generate_series(1, CAST(:n AS int)) AS g;

INSERT INTO feedback.responses (tenant_id, customer_id, kind, score, source, responded_at)
SELECT 'bench-other', 'c-' || g, 'nps', g % 11, 'api',
       {at_noise}
FROM generate_series(1, CAST(:n AS int) / 5) AS g;
""".format(at=AT, at_noise=AT.replace("CAST(:n AS int)", "(CAST(:n AS int) / 5)"))

FLOOR_SURVEYS = """
SELECT count(*) FROM feedback.surveys s
WHERE s.tenant_id = :tenant AND s.kind = 'nps' AND s.sent_at >= :start AND s.sent_at < :end
"""

FLOOR = """
SELECT count(*) FROM feedback.responses r
WHERE r.tenant_id = :tenant AND r.kind = 'nps' AND NOT r.superseded
  AND r.responded_at >= :start AND r.responded_at < :end
"""


def plan_summary(plan: dict[str, Any]) -> list[str]:
    out: list[str] = []

    def walk(node: dict[str, Any], depth: int) -> None:
        what = node["Node Type"]
        if "Index Name" in node:
            what += f" using {node['Index Name']}"
        elif "Relation Name" in node:
            what += f" on {node['Relation Name']}"
        rows = node.get("Actual Rows")
        ms = node.get("Actual Total Time")
        heap = node.get("Heap Fetches")
        extra = f" heap_fetches={heap}" if heap is not None else ""
        out.append(f"{'  ' * depth}{what} rows={rows} time={ms}ms{extra}")
        for child in node.get("Plans", []):
            walk(child, depth + 1)

    walk(plan["Plan"], 0)
    return out


async def bench(url: str, rows: int, runs: int) -> None:
    engine = create_async_engine(url)
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM feedback.responses WHERE tenant_id LIKE 'bench-%'"))
        await conn.execute(text("DELETE FROM feedback.surveys WHERE tenant_id LIKE 'bench-%'"))
    t0 = time.perf_counter()
    async with engine.begin() as conn:
        for stmt in SEED.split(";"):
            if stmt.strip():
                await conn.execute(text(stmt), {"tenant": TENANT, "start": START, "n": rows})
    seed_s = time.perf_counter() - t0
    async with engine.connect() as conn:
        await conn.execution_options(isolation_level="AUTOCOMMIT")
        await conn.execute(text("VACUUM ANALYZE feedback.responses"))
        await conn.execute(text("VACUUM ANALYZE feedback.surveys"))
    print(f"seeded {rows:,} answers (+{rows:,} surveys, +{rows // 5:,} noise) in {seed_s:.1f}s")

    window = metrics.Window(TENANT, "nps", START, END, "week")
    query = text(metrics_store.query_text(with_sku=False))
    floor = text(FLOOR)

    async def timed(stmt: Any, params: dict[str, Any]) -> tuple[float, Any]:
        async with engine.connect() as conn:
            t = time.perf_counter()
            result = (await conn.execute(stmt, params)).all()
            return (time.perf_counter() - t) * 1000, result

    await timed(query, window.params())  # warm the cache: we measure queries, not disks
    await timed(floor, {"tenant": TENANT, "start": START, "end": END})
    nps_ms, floor_ms, floor2_ms = [], [], []
    result: Any = None
    for _ in range(runs):
        ms, result = await timed(query, window.params())
        nps_ms.append(ms)
        ms, counted = await timed(floor, {"tenant": TENANT, "start": START, "end": END})
        floor_ms.append(ms)
        ms2, _ = await timed(text(FLOOR_SURVEYS), {"tenant": TENANT, "start": START, "end": END})
        floor2_ms.append(ms + ms2)
    answered = sum(int(r.top) + int(r.mid) + int(r.low) for r in result)
    top = sum(int(r.top) for r in result)
    low = sum(int(r.low) for r in result)
    print(f"answers counted (last per survey): {answered:,} = floor count {counted[0][0]:,}")
    print(f"NPS over the year: {round(100 * (top - low) / answered, 1)} ({len(result)} weeks)")
    med_nps, med_floor = statistics.median(nps_ms), statistics.median(floor_ms)
    print(f"NPS query (weekly series + sends, response rate): median {med_nps:.1f} ms")
    print(f"floor (bare SELECT count(*) over the same rows):  median {med_floor:.1f} ms")
    print(f"ratio NPS / floor: {med_nps / med_floor:.2f}x")
    # The query also counts the surveys sent (for the response rate): a second table.
    med_floor2 = statistics.median(floor2_ms)
    print(f"floor incl. a bare count over the 1M surveys it also reads: {med_floor2:.1f} ms")
    print(f"ratio NPS / (both counts): {med_nps / med_floor2:.2f}x")
    async with engine.connect() as conn:
        raw = (
            await conn.execute(
                text("EXPLAIN (ANALYZE, FORMAT JSON) " + metrics_store.query_text(with_sku=False)),
                window.params(),
            )
        ).scalar_one()
    plan = raw[0] if isinstance(raw, list) else json.loads(raw)[0]
    print("plan:")
    for line in plan_summary(plan):
        print("  " + line)
    async with engine.begin() as conn:
        await conn.execute(text("DELETE FROM feedback.responses WHERE tenant_id LIKE 'bench-%'"))
        await conn.execute(text("DELETE FROM feedback.surveys WHERE tenant_id LIKE 'bench-%'"))
    await engine.dispose()


def feedback_events(
    tenant: str, n: int, customers: int = 1000, reviews: bool = False
) -> list[CloudEvent[Any]]:
    """Half survey requests, half orders; with ``reviews``, every third event a review
    request (a reminder every other time) instead."""
    now = datetime.now(UTC)
    out: list[CloudEvent[Any]] = []
    for i in range(n):
        customer = f"c{i % customers}"
        data: Any
        if reviews and i % 3 == 2:
            data = ReviewRequested(
                request_id=f"rv{i}", order_id=f"o{i - 1}", requested_at=now, reminder=i % 2 == 0
            )
        elif i % 2:
            item = LineItem(
                title="Mug", sku="MUG", quantity=1, unit_price=Money(amount=900, currency="USD")
            )
            data = OrderPlaced(
                order_id=f"o{i}",
                platform="api",
                placed_at=now,
                customer=CustomerInfo(email=f"{customer}@example.com"),
                total=Money(amount=1800, currency="USD"),
                line_items=[item, item],
            )
        else:
            data = SurveyRequested(request_id=f"r{i}", kind="nps", requested_at=now)
        out.append(CloudEvent.new(data, tenant_id=tenant, subject=customer, source="bench"))
    return out


async def consumer_bench(n: int, reviews: bool) -> None:
    from afterglow.feedback.app import create_app
    from afterglow.feedback.settings import FeedbackSettings

    app = create_app(FeedbackSettings(log_level="WARNING"))
    tenant = f"bench-{uuid.uuid4().hex[:8]}"
    async with app.router.lifespan_context(app):
        rt = app.state.runtime
        settings = rt.settings
        kafka = KafkaConfig(settings.kafka_bootstrap_servers, settings.kafka_enable_idempotence)
        name = service_consumer(rt, "events")
        await service_rate(rt, name, feedback_events(f"warm-{tenant}", 200))
        with statements_of(rt) as seen:
            rate = await service_rate(rt, name, feedback_events(f"ev-{tenant}", n, reviews=reviews))
        floor = await floor_rate(rt, kafka, feedback_events(f"floor-{tenant}", n, reviews=reviews))
    mix = "survey.requested + order.placed" + (" + review.requested" if reviews else "")
    report(f"feedback consumer ({mix})", n, rate, floor)
    print(f"  target >= 2,000 events/s: {'met' if rate >= 2000 else 'NOT met'}")
    print_statements(seen, n)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--events", type=int, default=4000, help="0: skip the consumer")
    parser.add_argument("--rows", type=int, default=1_000_000, help="0: skip the metrics")
    parser.add_argument("--runs", type=int, default=7)
    parser.add_argument(
        "--reviews", action="store_true", help="a third of the events review requests"
    )
    args = parser.parse_args()
    url = os.environ.get("DATABASE_URL")  # before the consumer's stack sets its own
    if args.events:
        from afterglow.devstack.stack import running_stack

        os.environ.setdefault("AFTERGLOW_ONLY_SERVICES", "feedback")
        with running_stack(
            Path(".afterglow/bench-feedback"), ephemeral=True, services={"feedback"}
        ) as stack:
            os.environ.update(stack.env())
            served_loop.run(consumer_bench(args.events, args.reviews))
    if not args.rows:
        return
    if url:
        served_loop.run(bench(url, args.rows, args.runs))
        return
    from afterglow.devstack.postgres import EmbeddedPostgres

    with tempfile.TemporaryDirectory(prefix="afterglow-bench-") as tmp:
        pg = EmbeddedPostgres(Path(tmp) / "pgdata", ephemeral=True)
        url = pg.start()
        try:
            upgrade(SPEC.migrations, url)
            served_loop.run(bench(url, args.rows, args.runs))
        finally:
            pg.stop()


if __name__ == "__main__":
    main()
