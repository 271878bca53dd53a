"""Test helpers that talk to the real broker: read what a topic received."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

from aiokafka import AIOKafkaConsumer
from aiokafka.structs import ConsumerRecord, TopicPartition

from afterglow.events.envelope import CloudEvent, from_record
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
