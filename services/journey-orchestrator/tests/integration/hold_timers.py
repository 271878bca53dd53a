"""A stand-in for an orchestrator replica that dies mid-round: it claims a tenant's
timers with the worker's own claim query, says so, and hangs until SIGKILLed."""

from __future__ import annotations

import asyncio
import os
import sys
from datetime import UTC, datetime, timedelta

from sqlalchemy.ext.asyncio import create_async_engine

from afterglow.journeys.workers import claim_due


async def main(tenant: str) -> None:
    engine = create_async_engine(os.environ["DATABASE_URL"])
    async with engine.begin() as conn:
        from sqlalchemy.ext.asyncio import AsyncSession

        session = AsyncSession(bind=conn)
        # "Due" a year from now: the claim takes every pending timer of the tenant.
        rows = await claim_due(session, datetime.now(UTC) + timedelta(days=3650), 1000, tenant)
        print(f"held {len(rows)}", flush=True)
        await asyncio.sleep(3600)


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1]))
