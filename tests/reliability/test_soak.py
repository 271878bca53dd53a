"""An hour at a steady rate (``make soak``; not in CI): what leaks shows as growth between
the start and the end. Prints, every ``SOAK_SAMPLE_MIN`` minutes, each service's
resident memory, PostgreSQL's sessions by state (idle in transaction among them), the
notify queue's usage and the largest tables; then the checker's table: every webhook
answered 2xx is exactly one order, journey, welcome, points award and survey.

``SOAK_MINUTES`` (60) and ``SOAK_RATE`` (orders per second, 5) change the run.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from afterglow.devstack.demo import Receiver, Scenario
from afterglow.devstack.faults import ADMIN_TOKEN, Checker, Driver, Fault, report
from afterglow.devstack.services import RunningServices
from afterglow.devstack.stack import Stack

MINUTES = float(os.environ.get("SOAK_MINUTES", "60"))
RATE = float(os.environ.get("SOAK_RATE", "5"))
SAMPLE_MIN = float(os.environ.get("SOAK_SAMPLE_MIN", "10"))

pytestmark = [pytest.mark.timeout(int(MINUTES * 60) + 1200), pytest.mark.slow]


def rss_mb(pid: int) -> float:
    """Resident memory of a process and its children (uvicorn workers), from /proc."""
    total = 0.0
    pids = [pid]
    children = Path(f"/proc/{pid}/task/{pid}/children")
    if children.exists():
        pids += [int(p) for p in children.read_text().split()]
    for p in pids:
        status = Path(f"/proc/{p}/status")
        if not status.exists():
            continue
        for line in status.read_text().splitlines():
            if line.startswith("VmRSS:"):
                total += int(line.split()[1]) / 1024
    return total


async def snapshot(services: RunningServices, engine: AsyncEngine) -> dict[str, Any]:
    async with engine.connect() as c:
        sessions: dict[str, int] = dict(
            (
                await c.execute(
                    text(
                        "SELECT coalesce(state, 'none'), count(*) FROM pg_stat_activity"
                        " WHERE datname = current_database() GROUP BY 1"
                    )
                )
            ).all()
        )
        notify = (await c.execute(text("SELECT pg_notification_queue_usage()"))).scalar_one()
        tables = (
            await c.execute(
                text(
                    "SELECT schemaname || '.' || relname, pg_total_relation_size(relid)"
                    " FROM pg_stat_user_tables ORDER BY 2 DESC LIMIT 8"
                )
            )
        ).all()
    return {
        "rss_mb": {
            f"{name}-{i}": round(rss_mb(p.proc.pid), 1)
            for name, procs in services.processes.items()
            for i, p in enumerate(procs)
        },
        "sessions": sessions,
        "notify_queue": float(notify),
        "tables_kb": {name: size // 1024 for name, size in tables},
    }


def show(label: str, snap: dict[str, Any]) -> None:
    print(f"soak {label}: rss MB {snap['rss_mb']}", flush=True)
    print(f"soak {label}: sessions {snap['sessions']} notify {snap['notify_queue']:.6f}")
    print(f"soak {label}: largest tables kB {snap['tables_kb']}", flush=True)


async def test_an_hour_at_a_steady_rate(services: RunningServices, stack: Stack) -> None:
    urls = {n: [p.url for p in procs] for n, procs in services.processes.items()}
    engine = create_async_engine(stack.database_url, pool_size=1)
    try:
        with Receiver().running() as receiver:
            async with Scenario(urls, ADMIN_TOKEN, receiver, timeout=120) as sc:
                await sc.register_tenant()
                await sc.configure()
                driver, checker = Driver(sc, rate=RATE), Checker(sc)
                run = Fault("soak")
                start = await snapshot(services, engine)
                show("start", start)
                t0 = run.began = run.started = time.monotonic()
                async with driver.drive("soak"):
                    while (elapsed := time.monotonic() - t0) < MINUTES * 60:
                        await asyncio.sleep(min(SAMPLE_MIN * 60, MINUTES * 60 - elapsed))
                        show(f"{(time.monotonic() - t0) / 60:.0f} min", await snapshot(
                            services, engine
                        ))  # fmt: skip
                run.ended = time.monotonic()
                await driver.settle()
                await checker.final(driver.orders, timeout=600)
                run.finished = time.monotonic()
                end = await snapshot(services, engine)
                show("end", end)
    finally:
        await engine.dispose()
    lines, failures = report(driver.orders, [run])
    print("\n".join(lines), flush=True)
    growth = {k: round(v - start["rss_mb"].get(k, 0.0), 1) for k, v in end["rss_mb"].items()}
    print(f"soak: rss growth MB {growth}", flush=True)
    assert not failures, "\n".join(failures)
    # A session left idle in a transaction holds its locks and snapshot for ever.
    assert not end["sessions"].get("idle in transaction"), end["sessions"]
