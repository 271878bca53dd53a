"""A PostgreSQL LISTEN connection that wakes a loop: the outbox relay's, the dispatcher's.

A loop that polls sets the pace of everything behind it (a message waited up to a whole
poll interval before it left). A :class:`Listener` sets an :class:`asyncio.Event` on
every NOTIFY of its channel, so the loop waits on the event with its poll interval as a
fallback only.

The connection is a bare asyncpg one, outside SQLAlchemy and its pool, and runs nothing
but LISTEN and the keepalive, never inside a transaction. PostgreSQL delivers a
notification only to a session outside any transaction: a keepalive ``SELECT 1`` on an
SQLAlchemy connection autobegan one that never ended, every NOTIFY after it waited in the
server's queue (relays fell back to their poll), and when that queue filled every
transaction that notifies failed.
"""

from __future__ import annotations

import asyncio
import logging
import random

import asyncpg
from sqlalchemy.ext.asyncio import AsyncEngine

log = logging.getLogger(__name__)

# Keys SQLAlchemy's asyncpg dialect accepts in a URL that asyncpg.connect does not.
_SQLALCHEMY_ONLY_OPTIONS = frozenset(
    {"prepared_statement_cache_size", "prepared_statement_name_func", "async_creator_fn"}
)


class Listener:
    """LISTEN on ``channel`` until cancelled; set ``wake`` on each NOTIFY, and once after
    each (re)connection (anything committed while it was away). Reconnects with capped
    backoff; the loop it wakes falls back to its own poll meanwhile."""

    def __init__(
        self,
        engine: AsyncEngine,
        channel: str,
        wake: asyncio.Event,
        *,
        name: str,
        connect_timeout_s: float = 15.0,
        keepalive_interval_s: float = 30.0,
        max_backoff_s: float = 30.0,
    ) -> None:
        self._engine = engine
        self.channel = channel
        self._wake = wake
        # The listening connection's name in pg_stat_activity.
        self.name = name[:63]
        self._connect_timeout = connect_timeout_s
        self._keepalive_interval = keepalive_interval_s
        self._max_backoff = max_backoff_s
        self.keepalives = 0
        self.notifications = 0

    async def run(self) -> None:
        backoff = 0.5
        while True:
            conn: asyncpg.Connection | None = None
            try:
                conn = await self._connect()
                await conn.add_listener(self.channel, self._on_notify)
                backoff = 0.5
                self._wake.set()  # anything committed while we were away
                while True:
                    await asyncio.sleep(self._keepalive_interval)
                    await self.keepalive(conn)
            except asyncio.CancelledError:
                raise
            except Exception:
                log.warning(
                    "LISTEN connection lost; polling meanwhile",
                    extra={"channel": self.channel},
                    exc_info=True,
                )
                await asyncio.sleep(backoff * (1 + random.random()))
                backoff = min(backoff * 2, self._max_backoff)
            finally:
                if conn is not None:
                    conn.terminate()  # no goodbye round trip: it may be dead already

    async def _connect(self) -> asyncpg.Connection:
        # The engine's own connection arguments (host, socket, credentials, TLS),
        # minus the options only SQLAlchemy's adapter understands.
        cargs, cparams = self._engine.dialect.create_connect_args(self._engine.url)
        options = {k: v for k, v in cparams.items() if k not in _SQLALCHEMY_ONLY_OPTIONS}
        async with asyncio.timeout(self._connect_timeout):
            return await asyncpg.connect(
                *cargs, **options, server_settings={"application_name": self.name}
            )

    async def keepalive(self, conn: asyncpg.Connection) -> None:
        """Notice a dead listening connection (a restarted server, a cut link)."""
        async with asyncio.timeout(self._connect_timeout):
            await conn.execute("SELECT 1")
        self.keepalives += 1

    def _on_notify(self, *_: object) -> None:
        self.notifications += 1
        self._wake.set()
