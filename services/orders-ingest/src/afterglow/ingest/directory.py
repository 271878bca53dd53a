"""The receivers' view of the tenant registry, cached for a few seconds.

Every webhook needs its tenant (from a shop domain or store URL) and the tenant's
active secrets. Read per request, that was two queries and a pooled connection held
by each request in flight; at flash-sale rates the connections ran out before the
database did. Answers (unknown tenants included, so a flood of forged domains does
not reach the database either) are kept ``ttl_s`` seconds; concurrent misses of one
key share one query. The admin routes of this process clear the cache when they
change a tenant or a secret; another process sees the change within ``ttl_s``
(a rotated secret is accepted, an expired one refused, that much later).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from afterglow.ingest import registry, registry_store

T = TypeVar("T")

# A flood of forged shop domains must not grow the cache without end.
MAX_ENTRIES = 10_000


class TenantDirectory:
    def __init__(self, sessionmaker: async_sessionmaker[AsyncSession], ttl_s: float) -> None:
        self._sessionmaker = sessionmaker
        self._ttl_s = ttl_s
        self._entries: dict[tuple[str, ...], tuple[float, asyncio.Task[Any]]] = {}

    def forget(self) -> None:
        """A tenant or secret changed here: read everything again."""
        self._entries.clear()

    async def by_shop_domain(self, domain: str) -> str | None:
        async def load(s: AsyncSession) -> str | None:
            return await registry.tenant_by_shop_domain(s, domain)

        return await self._cached(("shop", domain.strip().lower()), load)

    async def by_store_url(self, url: str) -> str | None:
        async def load(s: AsyncSession) -> str | None:
            return await registry.tenant_by_store_url(s, url)

        return await self._cached(("store", registry.normalize_store_url(url)), load)

    async def active_secrets(
        self, tenant_id: str | None, platform: str, now: datetime
    ) -> list[str]:
        """As :func:`registry.active_secrets`: expiry is checked against ``now`` on
        every call, so a cached secret still stops working when its grace ends."""
        if tenant_id is None:
            return []

        async def load(s: AsyncSession) -> list[tuple[str, datetime | None]]:
            return await registry_store.unexpired_secrets_with_expiry(s, tenant_id, platform, now)

        secrets = await self._cached(("secrets", tenant_id, platform), load)
        return [s for s, expires in secrets if expires is None or expires > now]

    async def _cached(
        self, key: tuple[str, ...], load: Callable[[AsyncSession], Awaitable[T]]
    ) -> T:
        now = time.monotonic()
        entry = self._entries.get(key)
        if entry is None or entry[0] < now:

            async def query() -> T:
                async with self._sessionmaker() as session:
                    return await load(session)

            if len(self._entries) >= MAX_ENTRIES:
                self._entries.clear()
            entry = (now + self._ttl_s, asyncio.ensure_future(query()))
            self._entries[key] = entry
        task: asyncio.Task[T] = entry[1]
        try:
            # Shielded: one waiter cancelled (its client left) must not cancel the
            # query the others wait for.
            return await asyncio.shield(task)
        except Exception:
            if self._entries.get(key) is entry:
                del self._entries[key]  # a failed read is not remembered
            raise
