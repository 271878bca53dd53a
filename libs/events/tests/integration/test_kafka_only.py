"""What only Apache Kafka can show: the idempotent producer turning a retried send into
one record, and the consumer applying each event once.

A produce request reaches the broker, which appends the batch, but the response never
reaches the producer: :class:`FlakyLink`, a TCP relay on loopback between the producer
and the cluster, cuts the connection instead of forwarding the first Produce response.
The producer sees a broken connection (retriable), reconnects and sends the same batch
again. With idempotence on, the broker recognises the producer id and sequence number
and does not append it twice; with idempotence off it does (the contrast test), and only
the consumer's inbox stands between that duplicate and a double effect.

Runs only under ``make test-kafka`` (``AFTERGLOW_BROKER=kafka``): Tansu has no
idempotent producer.
"""

from __future__ import annotations

import asyncio
import contextlib
import struct
import uuid
from collections import Counter
from datetime import UTC, datetime

import pytest
from sqlalchemy import func, select

from afterglow.events import (
    CloudEvent,
    EventConsumer,
    KafkaConfig,
    RetryPolicy,
    build_producer,
    to_record,
)
from afterglow.events.catalog import TicketUpdated
from afterglow.events.envelope import from_record
from afterglow.events.testing import TopicTap, eventually

from .support import record_applied

pytestmark = pytest.mark.kafka_only

TOPIC = "afterglow.tickets"
EVENT_TYPE = "afterglow.ticket.updated.v1"
_PRODUCE, _METADATA = 0, 3


class FlakyLink:
    """A loopback relay in front of every broker of the cluster, for one client.

    Metadata responses are rewritten so that each broker is reached through a listener
    of this relay (else the client would go straight to the broker after bootstrapping).
    The first ``drop_produce_responses`` Produce responses are not forwarded: the
    connection is cut right after the broker answered, i.e. after it appended the batch.
    """

    def __init__(self, bootstrap_servers: str, *, drop_produce_responses: int) -> None:
        host, port = bootstrap_servers.split(",")[0].rsplit(":", 1)
        self._bootstrap = (host, int(port))
        self._listeners: dict[tuple[str, int], asyncio.Server] = {}
        self._ports: dict[tuple[str, int], int] = {}
        self._writers: set[asyncio.StreamWriter] = set()
        self.to_drop = drop_produce_responses
        self.dropped = 0
        self.produce_requests = 0

    @property
    def bootstrap_servers(self) -> str:
        return f"127.0.0.1:{self._ports[self._bootstrap]}"

    async def __aenter__(self) -> FlakyLink:
        await self._listen(self._bootstrap)
        return self

    async def __aexit__(self, *exc: object) -> None:
        for writer in list(self._writers):
            writer.close()
        for server in self._listeners.values():
            server.close()
            await server.wait_closed()

    async def _listen(self, upstream: tuple[str, int]) -> int:
        if upstream not in self._ports:
            server = await asyncio.start_server(
                lambda r, w: self._relay(upstream, r, w), "127.0.0.1", 0
            )
            self._listeners[upstream] = server
            self._ports[upstream] = server.sockets[0].getsockname()[1]
        return self._ports[upstream]

    async def _relay(
        self, upstream: tuple[str, int], reader: asyncio.StreamReader, writer: asyncio.StreamWriter
    ) -> None:
        up_reader, up_writer = await asyncio.open_connection(*upstream)
        self._writers |= {writer, up_writer}
        in_flight: dict[int, tuple[int, int]] = {}  # correlation id -> (api key, version)

        async def requests() -> None:
            while (frame := await _read_frame(reader)) is not None:
                api_key, version, correlation = struct.unpack_from(">hhi", frame, 4)
                in_flight[correlation] = (api_key, version)
                self.produce_requests += api_key == _PRODUCE
                up_writer.write(frame)
                await up_writer.drain()

        async def responses() -> None:
            while (frame := await _read_frame(up_reader)) is not None:
                (correlation,) = struct.unpack_from(">i", frame, 4)
                api_key, version = in_flight.pop(correlation, (-1, -1))
                if api_key == _PRODUCE and self.to_drop > 0:
                    self.to_drop -= 1
                    self.dropped += 1
                    return  # the batch is in the log; the producer will never know
                if api_key == _METADATA:
                    frame = await self._rewrite_metadata(frame, version)
                writer.write(frame)
                await writer.drain()

        tasks = [asyncio.create_task(requests()), asyncio.create_task(responses())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for task in tasks:
                with contextlib.suppress(asyncio.CancelledError, OSError):
                    await task
            for w in (writer, up_writer):
                w.close()
                self._writers.discard(w)

    async def _rewrite_metadata(self, frame: bytes, version: int) -> bytes:
        # Non-flexible Metadata responses (v0-v8; aiokafka speaks up to v5): the broker
        # list comes first, so rewrite it and copy the rest as is.
        assert version <= 8, f"Metadata v{version} is flexible: teach FlakyLink compact fields"
        body, pos = frame[4:], 4  # drop the size; keep the correlation id
        out = bytearray(body[:4])
        if version >= 3:  # throttle_time_ms
            out += body[pos : pos + 4]
            pos += 4
        (count,) = struct.unpack_from(">i", body, pos)
        pos += 4
        out += struct.pack(">i", count)
        for _ in range(count):
            node_id, host_len = struct.unpack_from(">ih", body, pos)
            pos += 6
            host = body[pos : pos + host_len].decode()
            pos += host_len
            (port,) = struct.unpack_from(">i", body, pos)
            pos += 4
            local = b"127.0.0.1"
            out += struct.pack(">ih", node_id, len(local)) + local
            out += struct.pack(">i", await self._listen((host, port)))
            if version >= 1:  # rack, a nullable string
                (rack_len,) = struct.unpack_from(">h", body, pos)
                end = pos + 2 + max(rack_len, 0)
                out += body[pos:end]
                pos = end
        out += body[pos:]
        return struct.pack(">i", len(out)) + bytes(out)


async def _read_frame(reader: asyncio.StreamReader) -> bytes | None:
    try:
        size = await reader.readexactly(4)
        return size + await reader.readexactly(struct.unpack(">i", size)[0])
    except (asyncio.IncompleteReadError, OSError):
        return None


def ticket_event(tenant: str, status: str) -> CloudEvent[TicketUpdated]:
    # One customer: one key, one partition, so the log order is the send order.
    return CloudEvent.new(
        TicketUpdated(ticket_id=f"tk-{status}", updated_at=datetime.now(UTC), status=status),
        tenant_id=tenant,
        subject="c-retried",
        source="tests",
    )


async def send_through_flaky_link(
    kafka: KafkaConfig, events: list[CloudEvent[TicketUpdated]], *, idempotence: bool
) -> FlakyLink:
    """Send events one by one with the project's producer settings; the first send's
    response is lost, so that send is retried by the producer itself."""
    async with FlakyLink(kafka.bootstrap_servers, drop_produce_responses=1) as link:
        producer = build_producer(
            KafkaConfig(link.bootstrap_servers, enable_idempotence=idempotence)
        )
        await producer.start()
        try:
            for event in events:
                r = to_record(event)
                send = producer.send_and_wait(r.topic, r.value, key=r.key, headers=r.headers)
                await asyncio.wait_for(send, 30)
        finally:
            await producer.stop()
    return link


async def log_and_applied(
    tenant: str, kafka: KafkaConfig, producer, sessionmaker, tables, applied, *, idempotence: bool
) -> tuple[FlakyLink, Counter[str], Counter[str], list[str]]:
    """Send three events through the flaky link and consume them with EventConsumer.

    Returns the link, how many times each event id is in the log, how many times each
    was applied, and the ids in send order. A sentinel sent afterwards on the same key
    marks the end: once it is read (applied), everything before it has been.
    """
    events = [ticket_event(tenant, str(i)) for i in range(3)]
    sentinel = ticket_event(tenant, "sentinel")
    group = f"kafka-only-{uuid.uuid4().hex[:8]}"

    async def record(session, event):
        if event.tenantid == tenant:
            await record_applied(session, applied, event, group)

    consumer = EventConsumer(
        name=group,
        kafka=kafka,
        sessionmaker=sessionmaker,
        tables=tables,
        handlers={EVENT_TYPE: record},
        dlq_producer=producer,
        retry=RetryPolicy(attempts=3, base_delay_s=0.05),
        topics=[TOPIC],
    )

    async def applied_ids() -> Counter[str]:
        async with sessionmaker() as s:
            rows = await s.execute(
                select(applied.c.event_id, func.count())
                .where(applied.c.tenant_id == tenant, applied.c.consumer == group)
                .group_by(applied.c.event_id)
            )
            return Counter({r[0]: r[1] for r in rows})

    async with TopicTap(kafka.bootstrap_servers, TOPIC) as tap:
        link = await send_through_flaky_link(kafka, events, idempotence=idempotence)
        r = to_record(sentinel)
        await producer.send_and_wait(r.topic, r.value, key=r.key, headers=r.headers)
        await tap.wait_for(lambda e: e.id == sentinel.id, timeout=30)
        in_log = Counter(
            e.id
            for e in (from_record(x.key, x.value, x.headers) for x in tap.records)
            if e.tenantid == tenant and e.id != sentinel.id
        )
    task = asyncio.create_task(consumer.run())
    try:
        done = await eventually(applied_ids, lambda c: sentinel.id in c, timeout=60)
    finally:
        task.cancel()
        with contextlib.suppress(asyncio.CancelledError, Exception):
            await task
    del done[sentinel.id]
    return link, in_log, done, [e.id for e in events]


async def test_idempotent_producer_retry_leaves_one_record_and_one_effect(
    tenant_id, kafka, producer, sessionmaker, tables, applied
):
    assert kafka.enable_idempotence, "make test-kafka runs with KAFKA_ENABLE_IDEMPOTENCE=true"
    link, in_log, done, ids = await log_and_applied(
        tenant_id, kafka, producer, sessionmaker, tables, applied, idempotence=True
    )
    # The first send reached the broker twice: the retry really happened...
    assert link.dropped == 1
    assert link.produce_requests == len(ids) + 1
    # ...and the broker kept one copy (same producer id and sequence), in order.
    assert in_log == Counter(ids)
    assert done == Counter(ids)


async def test_without_idempotence_the_retry_duplicates_and_only_the_inbox_saves_us(
    tenant_id, kafka, producer, sessionmaker, tables, applied
):
    link, in_log, done, ids = await log_and_applied(
        tenant_id, kafka, producer, sessionmaker, tables, applied, idempotence=False
    )
    assert link.dropped == 1
    assert link.produce_requests == len(ids) + 1
    # The contrast: the same lost response now leaves the first event twice in the log...
    assert in_log == Counter({ids[0]: 2, ids[1]: 1, ids[2]: 1})
    # ...and the consumer's inbox still applies it once.
    assert done == Counter(ids)
