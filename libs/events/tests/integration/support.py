"""What the delivery tests share: an event factory, a consumer that records what it
applies, and a way to run loops for the length of a block."""

from __future__ import annotations

import asyncio
import contextlib
import uuid
from datetime import UTC, datetime

from sqlalchemy import func, select

from afterglow.events import CloudEvent, EventConsumer, RetryPolicy
from afterglow.events.catalog import TicketUpdated

EVENT_TYPE = "afterglow.ticket.updated.v1"


def ticket_event(tenant: str, customer: str = "c-1", status: str = "open", id: str | None = None):
    return CloudEvent.new(
        TicketUpdated(
            ticket_id=f"tk-{uuid.uuid4().hex[:6]}", updated_at=datetime.now(UTC), status=status
        ),
        tenant_id=tenant,
        subject=customer,
        source="tests",
        id=id,
    )


@contextlib.asynccontextmanager
async def running(*coros_or_objects):
    tasks = [asyncio.create_task(c) for c in coros_or_objects]
    try:
        yield
    finally:
        for t in tasks:
            t.cancel()
        for t in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await t


async def record_applied(session, applied, event, consumer: str) -> None:
    """The row a test's handler writes for an event it applied, in the handler's
    transaction (what :func:`applied_counts` counts)."""
    await session.execute(
        applied.insert().values(event_id=event.id, tenant_id=event.tenantid, consumer=consumer)
    )


def make_consumer(
    tenant,
    sessionmaker,
    tables,
    kafka,
    producer,
    applied,
    *,
    handler=None,
    group=None,
    retry=None,
    max_records=None,
    parallel_partitions=4,
    coalesce_below=0,
):
    group = group or f"test-{uuid.uuid4().hex[:8]}"

    async def record(session, event):
        if event.tenantid != tenant:
            return
        await record_applied(session, applied, event, group)

    return EventConsumer(
        name=group,
        kafka=kafka,
        sessionmaker=sessionmaker,
        tables=tables,
        handlers={EVENT_TYPE: handler or record},
        dlq_producer=producer,
        retry=retry or RetryPolicy(attempts=3, base_delay_s=0.05),
        max_records=max_records,
        parallel_partitions=parallel_partitions,
        coalesce_below=coalesce_below,
    )


async def applied_counts(sessionmaker, applied, tenant) -> dict[str, int]:
    async with sessionmaker() as s:
        rows = await s.execute(
            select(applied.c.event_id, func.count())
            .where(applied.c.tenant_id == tenant)
            .group_by(applied.c.event_id)
        )
        return {r[0]: r[1] for r in rows}
