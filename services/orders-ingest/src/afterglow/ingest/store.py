"""SQL of the internal REST API's Idempotency-Key store: a key is claimed with the
request's digest in the request's transaction, and its answer recorded there too, so a
retried request gets the first answer and a reused key with another body a 409."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.ingest.models import IdempotencyKey


async def claim_idempotency_key(
    session: AsyncSession, tenant: str, key: str, route_name: str, digest: str, now: datetime
) -> bool:
    """True when this request claimed the key; False when the key was claimed before."""
    # A concurrent request with the same key waits on the primary key until the first
    # commits, then finds its answer.
    claimed = await session.execute(
        pg_insert(IdempotencyKey)
        .values(
            tenant_id=tenant,
            key=key,
            route=route_name,
            body_hash=digest,
            status_code=0,
            response={},
            created_at=now,
        )
        .on_conflict_do_nothing()
        .returning(IdempotencyKey.key)
    )
    return claimed.scalar() is not None


async def claimed_idempotency_key(session: AsyncSession, tenant: str, key: str) -> IdempotencyKey:
    """The earlier claim of a key (its route, digest and recorded answer)."""
    prior = await session.get(IdempotencyKey, (tenant, key))
    assert prior is not None
    return prior


async def record_idempotent_answer(
    session: AsyncSession, tenant: str, key: str, status_code: int, response: dict[str, Any]
) -> None:
    await session.execute(
        update(IdempotencyKey)
        .where(IdempotencyKey.tenant_id == tenant, IdempotencyKey.key == key)
        .values(status_code=status_code, response=response)
    )
