"""A consumer or relay in a process of its own, so that tests can SIGKILL it.

python worker.py consume <group> <tenant> <delay_s>
python worker.py consume-crash <group> <tenant>   (commits the first transaction that
    applied one of the tenant's events, then dies before committing its offsets)
python worker.py relay-crash   (publishes one batch, then dies before marking it sent)
"""

from __future__ import annotations

import asyncio
import os
import sys

# Run as a script (python worker.py), so its own directory is already on sys.path.
from schema import TABLES, applied
from sqlalchemy.ext.asyncio import async_sessionmaker, create_async_engine
from support import record_applied

from afterglow.devstack.stack import kafka_config_from_env
from afterglow.events import EventConsumer, KafkaConfig, OutboxRelay, build_producer


def kafka() -> KafkaConfig:
    return kafka_config_from_env()


class CrashBeforeOffsetCommit(EventConsumer):
    """Dies between a batch's committed transaction and its offset commit."""

    applied_ours = False

    async def _commit_offsets(self, consumer, offsets):  # type: ignore[no-untyped-def]
        if self.applied_ours:
            print("transaction committed, dying before the offset commit", flush=True)
            os._exit(137)  # as abrupt as SIGKILL
        await super()._commit_offsets(consumer, offsets)


async def consume(group: str, tenant: str, delay: float, *, crash: bool = False) -> None:
    engine = create_async_engine(os.environ["DATABASE_URL"])
    producer = build_producer(kafka())
    await producer.start()

    async def handle(session, event):
        if event.tenantid != tenant:
            return
        await record_applied(session, applied, event, group)
        await asyncio.sleep(delay)  # slow enough to be killed in the middle of a batch
        if crash:
            consumer.applied_ours = True  # type: ignore[attr-defined]

    consumer = (CrashBeforeOffsetCommit if crash else EventConsumer)(
        name=group,
        kafka=kafka(),
        sessionmaker=async_sessionmaker(engine),
        tables=TABLES,
        handlers={"afterglow.ticket.updated.v1": handle},
        dlq_producer=producer,
    )
    print("consuming", flush=True)
    await consumer.run()


class CrashAfterPublish(OutboxRelay):
    async def _publish(self, rows):
        await super()._publish(rows)
        await self._producer.flush()
        print("published, dying before marking sent", flush=True)
        os._exit(137)  # as abrupt as SIGKILL: the open transaction dies with us


async def relay_crash() -> None:
    engine = create_async_engine(os.environ["DATABASE_URL"])
    producer = build_producer(kafka())
    await producer.start()
    await CrashAfterPublish(engine, TABLES, producer).publish_once()


if __name__ == "__main__":
    mode = sys.argv[1]
    if mode == "consume":
        asyncio.run(consume(sys.argv[2], sys.argv[3], float(sys.argv[4])))
    elif mode == "consume-crash":
        asyncio.run(consume(sys.argv[2], sys.argv[3], 0.0, crash=True))
    else:
        asyncio.run(relay_crash())
