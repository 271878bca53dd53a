"""Use cases of the operators' routes that do more than one store call: replaying a
stored delivery through today's normalizers."""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.ingest import bigcommerce, domain, identity, intake, store
from afterglow.ingest.payloads import parse_payload
from afterglow.ingest.platforms import bigcommerce as bc
from afterglow.kit.app import Runtime
from afterglow.kit.errors import NotFound, Unprocessable


@dataclass(frozen=True)
class Replayed:
    delivery_id: str
    status: str
    events: list[str]


async def replay_delivery(
    session: AsyncSession, rt: Runtime, tenant_id: str, delivery_id: str
) -> Replayed:
    """Normalize a stored delivery again and emit its events (with their derived ids,
    so services that applied them drop the repeat); a BigCommerce order delivery is
    queued for a fresh fetch instead."""
    # Locked: two replays of one delivery at once must not both emit and count.
    d = await store.delivery_of_tenant(session, tenant_id, delivery_id, lock=True)
    if d is None:
        raise NotFound("no such delivery", field="delivery_id")
    if d.platform == bigcommerce.PLATFORM and d.topic in bc.BIGCOMMERCE_SCOPES:
        # The body holds only ids: the replay is a new fetch, done by the worker.
        bigcommerce.requeue(d, rt.clock.now())
        d.replays += 1
        return Replayed(delivery_id=d.id, status=d.status, events=[])
    try:
        normalized = await intake.normalize(
            session, d.tenant_id, d.platform, d.topic, parse_payload(d.body, d.platform)
        )
    except domain.NormalizationError as exc:
        raise Unprocessable(str(exc), field=exc.field) from exc
    # A quarantined delivery never emitted: its facts go through the fact table like a
    # first delivery's, so an order another delivery placed meanwhile is not placed twice.
    first_time = d.status == intake.QUARANTINED
    ids: list[str] = []
    status = "archived"
    if normalized.known_topic:
        status = "processed"
        # A ticket replays to the customer it was resolved to (pinned); orders relink.
        await identity.link_and_resolve(session, [(d.tenant_id, normalized)], d.received_at)
        emitted = await intake.emit(
            session,
            rt.outbox,
            rt.tables,
            tenant_id=d.tenant_id,
            delivery_id=d.id,
            platform=d.platform,
            dedupe_key=d.dedupe_key,
            normalized=normalized,
            received_at=d.received_at,
            replay=not first_time,
        )
        ids = emitted.ids
        d.subjects = intake.merge_subjects(d.subjects, emitted.subjects)
    d.status = status
    d.event_ids = ids
    d.last_error = None
    d.replays += 1
    return Replayed(delivery_id=d.id, status=status, events=ids)
