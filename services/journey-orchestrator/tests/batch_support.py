"""Driving one partition batch through a consumer group's own transaction
(:func:`afterglow.events.batch.apply_in_one_transaction`: the inbox claim and the
group's registered handlers), so that "in one batch" is certain rather than left to how
the broker groups records."""

from __future__ import annotations

from typing import Any

from afterglow.events import CloudEvent, ConsumerGroup
from afterglow.events.batch import apply_in_one_transaction, inbox_claim

from .conftest import Orchestrator


def event(orch: Orchestrator, tenant: str, customer: str, data: Any) -> CloudEvent[Any]:
    return CloudEvent.new(
        data, tenant_id=tenant, subject=customer, source="tests", time=orch.clock.now()
    )


async def apply_batch(
    orch: Orchestrator, group: ConsumerGroup[Any], inbox: str, *events: CloudEvent[Any]
) -> list[str]:
    """One partition batch of ``group`` (its inbox name ``inbox``, so that the live
    consumer skips what is applied here); the ids applied."""
    handlers = group.handlers(orch.runtime)
    claim = inbox_claim(orch.runtime.tables.inbox)
    async with orch.runtime.sessionmaker.begin() as s:
        done = await apply_in_one_transaction(
            s, claim, inbox, [(e, handlers[e.type]) for e in events]
        )
    return [e.id for e in done.applied]
