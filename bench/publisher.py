"""Records published by a process of their own, as a service's events reach it from
the other services. Shared by the consumer benches (bench/consumer_rate.py,
bench/referrals, bench/journeys).

Built and sent in the measured process, the records shared its event loop and its CPU
with the consumer being measured: the producer's batching and murmur2 per record, and
``to_record`` where it ran in the window, took ~10% of the journeys instance's CPU in
its window and 11% of the referrals bench's samples. In a child, the records are built
and pickled before the clock starts, the child connects, looks the topics up and
encodes the records into record batches, then says ``ready``; the clock starts when it
is told to go (the sends are in the window); its CPU is its own, on the same cores.

A load generator that is light, as wrk is for HTTP: sent one ``send`` at a time, the
records cost the child ~50 us of CPU each inside the window (1.5 s for the journeys
bench's 30,000, most of a core during the first two seconds of an 11-second window),
CPU the instance under test competed for on a two-core machine. The batches are built
before the clock by aiokafka's compiled record builder, with the partitioner every
producer uses (what the outbox relay does); the window holds their sends only.

Usage (the child's side, spawned by :func:`publishing`): ``python bench/publisher.py
RECORDS_FILE SPEC_JSON``.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import pickle
import sys
import tempfile
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence

from aiokafka import AIOKafkaProducer
from aiokafka.producer.message_accumulator import BatchBuilder

from afterglow.devstack import served_loop
from afterglow.events import KafkaConfig, KafkaRecord, build_producer
from afterglow.events.kafka import KeyPartitioner


@contextlib.asynccontextmanager
async def publishing(
    kafka: KafkaConfig, records: Sequence[KafkaRecord], topic: str | None = None
) -> AsyncIterator[Callable[[], Awaitable[None]]]:
    """A child ready to send ``records`` (to ``topic`` if given, else each to its own).
    Yields ``go``: it tells the child to send and returns at once (start the clock
    just before it). On leaving, the child must have said it sent them all."""
    with tempfile.NamedTemporaryFile(suffix=".records") as f:
        pickle.dump(list(records), f)
        f.flush()
        spec = {
            "bootstrap": kafka.bootstrap_servers,
            "idempotence": kafka.enable_idempotence,
            "topic": topic,
        }
        child = await asyncio.create_subprocess_exec(
            sys.executable,
            __file__,
            f.name,
            json.dumps(spec),
            stdin=asyncio.subprocess.PIPE,
            stdout=asyncio.subprocess.PIPE,
        )
        assert child.stdin is not None and child.stdout is not None
        stdin, stdout = child.stdin, child.stdout
        try:
            if (await stdout.readline()).strip() != b"ready":
                raise RuntimeError("the publishing child did not start")

            async def go() -> None:
                stdin.write(b"go\n")
                await stdin.drain()

            yield go
            if (await stdout.readline()).strip() != b"sent":
                raise RuntimeError("the publishing child did not send every record")
        finally:
            if child.returncode is None:
                child.kill()
            await child.wait()


async def _batches(
    producer: AIOKafkaProducer, records: list[KafkaRecord], fixed: str | None
) -> list[tuple[str, int, BatchBuilder]]:
    """The records as closed record batches, in order: each record in its key's
    partition (the producers' partitioner), a partition's batches in record order."""
    pick = KeyPartitioner()
    parts: dict[str, list[int]] = {}
    open_: dict[tuple[str, int], BatchBuilder] = {}
    out: list[tuple[str, int, BatchBuilder]] = []
    for r in records:
        topic = fixed or r.topic
        if topic not in parts:
            parts[topic] = sorted(await producer.partitions_for(topic))
        tp = (topic, pick(r.key, parts[topic], parts[topic]))
        batch = open_.get(tp)
        if (
            batch is None
            or batch.append(timestamp=None, key=r.key, value=r.value, headers=r.headers) is None
        ):
            # New, or full: the record opens the partition's next batch (a batch's first
            # record always fits).
            batch = open_[tp] = producer.create_batch()
            out.append((*tp, batch))
            batch.append(timestamp=None, key=r.key, value=r.value, headers=r.headers)
    for _, _, batch in out:
        batch.close()
    return out


async def _publish(records: list[KafkaRecord], spec: dict[str, object]) -> None:
    kafka = KafkaConfig(str(spec["bootstrap"]), enable_idempotence=bool(spec["idempotence"]))
    fixed = str(spec["topic"]) if spec["topic"] else None
    producer = build_producer(kafka)
    await producer.start()
    try:
        # Every topic's metadata and every batch before the clock, as a load generator
        # has its requests ready.
        batches = await _batches(producer, records, fixed)
        print("ready", flush=True)
        await asyncio.get_running_loop().run_in_executor(None, sys.stdin.readline)
        futures = [
            await producer.send_batch(batch, topic, partition=partition)
            for topic, partition, batch in batches
        ]
        await asyncio.gather(*futures)
        print("sent", flush=True)
    finally:
        await producer.stop()


if __name__ == "__main__":
    with open(sys.argv[1], "rb") as f:
        records = pickle.load(f)  # noqa: S301 - written by publishing(), just before
    served_loop.run(_publish(records, json.loads(sys.argv[2])))
