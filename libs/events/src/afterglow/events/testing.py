"""Test helpers that talk to the real broker: read what a topic received, and send
records together so that a consumer gets them in one batch."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord, TopicPartition

from afterglow.events.envelope import CloudEvent, KafkaRecord, from_record, to_record
from afterglow.events.shutdown import stop_within

T = TypeVar("T")


class TopicTap:
    """Reads a topic from its current end onwards, as a fresh consumer group would.

    Start it before the action under test, then ``await tap.wait_for(predicate)``.
    """

    def __init__(self, bootstrap_servers: str, *topics: str) -> None:
        # No consumer group: joining one costs seconds per tap, and a tap needs no offsets.
        self._topics = topics
        self._consumer = AIOKafkaConsumer(
            bootstrap_servers=bootstrap_servers,
            group_id=None,
            enable_auto_commit=False,
        )
        self.records: list[ConsumerRecord] = []

    async def __aenter__(self) -> TopicTap:
        await self._consumer.start()
        partitions = []
        for topic in self._topics:
            found = self._consumer.partitions_for_topic(topic)
            deadline = time.monotonic() + 30
            while not found and time.monotonic() < deadline:
                await self._consumer._client.force_metadata_update()
                found = self._consumer.partitions_for_topic(topic)
            if not found:
                raise AssertionError(f"topic {topic} has no partitions")
            partitions += [TopicPartition(topic, p) for p in sorted(found)]
        self._consumer.assign(partitions)
        # Resolve the end offsets now, else they are resolved after the action and miss it.
        await self._consumer.seek_to_end(*partitions)
        for tp in partitions:
            await self._consumer.position(tp)
        return self

    async def __aexit__(self, *exc: object) -> None:
        await stop_within(self._consumer.stop, timeout_s=20, what="topic tap")

    async def _poll(self) -> None:
        batch = await self._consumer.getmany(timeout_ms=200)
        for records in batch.values():
            self.records.extend(records)

    async def wait_for_records(
        self,
        predicate: Callable[[ConsumerRecord], bool],
        *,
        count: int = 1,
        timeout: float = 20,  # noqa: ASYNC109
    ) -> list[ConsumerRecord]:
        deadline = time.monotonic() + timeout
        while True:
            found = [r for r in self.records if predicate(r)]
            if len(found) >= count:
                return found
            if time.monotonic() > deadline:
                raise AssertionError(f"only {len(found)} of {count} records within {timeout}s")
            await self._poll()

    async def wait_for(
        self,
        predicate: Callable[[CloudEvent[Any]], bool],
        *,
        count: int = 1,
        timeout: float = 20,  # noqa: ASYNC109
    ) -> list[CloudEvent[Any]]:
        """Wait for ``count`` well-formed events matching ``predicate``."""

        def match(record: ConsumerRecord) -> bool:
            try:
                return predicate(from_record(record.key, record.value, record.headers))
            except ValueError:
                return False

        records = await self.wait_for_records(match, count=count, timeout=timeout)
        return [from_record(r.key, r.value, r.headers) for r in records]

    async def events(self, settle: float = 0.5) -> list[CloudEvent[Any]]:
        """Everything well-formed seen so far, after polling for ``settle`` seconds."""
        deadline = time.monotonic() + settle
        while time.monotonic() < deadline:
            await self._poll()
        out = []
        for r in self.records:
            try:
                out.append(from_record(r.key, r.value, r.headers))
            except ValueError:
                continue
        return out


async def eventually(
    probe: Callable[[], Awaitable[T]],
    check: Callable[[T], bool] = bool,
    *,
    timeout: float = 20,  # noqa: ASYNC109 - a deadline between polls, not a cancel scope
    interval: float = 0.1,
) -> T:
    """Poll ``probe`` until ``check`` holds; return the last value or fail with it."""
    deadline = time.monotonic() + timeout
    while True:
        value = await probe()
        if check(value):
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout}s; last value: {value!r}")
        await asyncio.sleep(interval)


def poison_record(like: CloudEvent[Any]) -> KafkaRecord:
    """A record the consumer cannot apply, on ``like``'s topic and key (so in its
    partition, between its neighbours): ``like``'s headers under a fresh ``ce_id``,
    and a body that fails the event type's schema. Its ``ce_id`` is the returned
    record's ``poison_id`` header, for finding it in the DLQ."""
    good = to_record(like)
    poison_id = f"poison-{uuid.uuid4().hex}"
    headers = [(k, poison_id.encode() if k == "ce_id" else v) for k, v in good.headers]
    return KafkaRecord(good.topic, good.key, b'{"not": "this event"}', headers)


def record_id(record: KafkaRecord) -> str:
    return dict(record.headers)["ce_id"].decode()


async def send_together(producer: Any, *items: CloudEvent[Any] | KafkaRecord) -> None:
    """Send every item without waiting between them, then wait for all: they leave in
    one producer batch, so the consumer most likely reads them in one ``getmany``."""
    futures = []
    for item in items:
        r = to_record(item) if isinstance(item, CloudEvent) else item
        futures.append(await producer.send(r.topic, r.value, key=r.key, headers=r.headers))
    await asyncio.gather(*futures)


async def wait_dead_letter(
    tap: TopicTap,
    event_id: str,
    consumer: str,
    *,
    timeout: float = 60,  # noqa: ASYNC109
) -> ConsumerRecord:
    """The DLQ record of ``event_id`` that consumer group ``consumer`` dead-lettered."""

    def match(r: ConsumerRecord) -> bool:
        headers = dict(r.headers)
        return (
            headers.get("ce_id") == event_id.encode()
            and headers.get("x-consumer") == consumer.encode()
        )

    return (await tap.wait_for_records(match, timeout=timeout))[0]
