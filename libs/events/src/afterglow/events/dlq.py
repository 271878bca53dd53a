"""Dead letters: read them, and put them back on their topic once their cause is fixed.

A record reaches ``<topic>.dlq`` with the consumer's verdict in ``x-*`` headers (see
:mod:`afterglow.events.consumer`). :func:`redrive` publishes dead letters again to the
topic they came from, in DLQ order, with their key, value and original headers (the
CloudEvents ``ce_*`` ones, hence the same event id) minus the ``x-*`` ones. Every
consumer group of that topic reads them again and its inbox drops the events it had
applied meanwhile (a repeat that got through, another group that never failed), so a
redrive applies each event at most once more, where it is missing.

Which letters were redriven is a consumer group's committed offset on the DLQ
(:data:`REDRIVE_GROUP`): a plain ``redrive`` takes every letter after it and moves it
on, so running it twice does not publish twice. Naming offsets redrives just those and
leaves the cursor alone.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from aiokafka import AIOKafkaConsumer, AIOKafkaProducer
from aiokafka.structs import ConsumerRecord, OffsetAndMetadata, RecordMetadata, TopicPartition

from afterglow.events.kafka import KafkaConfig, build_producer
from afterglow.events.shutdown import stop_within
from afterglow.events.topics import DLQ_SUFFIX

# The consumer group whose committed offsets on a DLQ mark what was redriven already.
REDRIVE_GROUP = "afterglow.dlq-redrive"
# Headers the consumer adds when it dead-letters a record (x-error, x-consumer, ...);
# dropped on the way back so the record is the one its producer sent.
ERROR_HEADER_PREFIX = "x-"
REDRIVEN_FROM = "x-redriven-from"


@dataclass(frozen=True)
class DeadLetter:
    """One record of a DLQ topic."""

    dlq_topic: str
    partition: int
    offset: int
    timestamp_ms: int
    key: bytes | None
    value: bytes
    headers: tuple[tuple[str, bytes], ...]

    @classmethod
    def of(cls, record: ConsumerRecord) -> DeadLetter:
        return cls(
            record.topic,
            record.partition,
            record.offset,
            record.timestamp,
            record.key,
            record.value or b"",
            tuple((k, bytes(v)) for k, v in record.headers),
        )

    def header(self, name: str) -> str | None:
        for k, v in self.headers:
            if k == name:
                return v.decode(errors="replace")
        return None

    @property
    def original_topic(self) -> str:
        # The dispatcher's own dead letters carry no x-original-topic: the name says it.
        return self.header("x-original-topic") or self.dlq_topic.removesuffix(DLQ_SUFFIX)

    @property
    def event_id(self) -> str | None:
        return self.header("ce_id")

    def redrive_headers(self) -> list[tuple[str, bytes]]:
        kept = [(k, v) for k, v in self.headers if not k.startswith(ERROR_HEADER_PREFIX)]
        return [*kept, (REDRIVEN_FROM, f"{self.dlq_topic}:{self.offset}".encode())]

    def summary(self) -> dict[str, object]:
        return {
            "offset": self.offset,
            "event_id": self.event_id,
            "type": self.header("ce_type"),
            "tenant": self.header("ce_tenantid"),
            "consumer": self.header("x-consumer"),
            "attempts": self.header("x-attempts") or self.header("x-error-attempts"),
            "error": self.header("x-error"),
            "topic": self.original_topic,
        }


@dataclass
class RedriveReport:
    dlq_topic: str
    redriven: list[DeadLetter] = field(default_factory=list)
    # Letters of an event already redriven in this run (several groups dead-lettered
    # it): one record back on the topic reaches every group.
    same_event: list[DeadLetter] = field(default_factory=list)
    published: list[RecordMetadata] = field(default_factory=list)  # where each went
    cursor: dict[int, int] = field(default_factory=dict)  # partition -> next offset


def dlq_name(topic: str) -> str:
    """``afterglow.orders`` or ``afterglow.orders.dlq`` -> ``afterglow.orders.dlq``."""
    return topic if topic.endswith(DLQ_SUFFIX) else topic + DLQ_SUFFIX


async def read_dead_letters(
    kafka: KafkaConfig, dlq_topic: str, *, pending_only: bool = False
) -> list[DeadLetter]:
    """Every retained letter of ``dlq_topic`` (or only those after the redrive cursor),
    up to the end as it is now, in offset order per partition."""
    async with _reader(kafka) as consumer:
        letters, _ = await _read(consumer, dlq_topic, pending_only=pending_only)
    return letters


async def redrive(
    kafka: KafkaConfig,
    dlq_topic: str,
    *,
    offsets: Iterable[int] | None = None,
    where: Callable[[DeadLetter], bool] | None = None,
    dry_run: bool = False,
) -> RedriveReport:
    """Publish dead letters back to their topics; see the module docstring.

    ``offsets`` or ``where`` (e.g. one tenant's letters) select letters among all those
    retained, and leave the cursor alone; without them, every letter after the cursor
    is redriven and the cursor moves past them.
    """
    wanted = None if offsets is None else set(offsets)
    selected = wanted is not None or where is not None
    report = RedriveReport(dlq_topic)
    async with _reader(kafka) as consumer:
        letters, ends = await _read(consumer, dlq_topic, pending_only=not selected)
        seen: set[str] = set()
        for letter in letters:
            if wanted is not None and letter.offset not in wanted:
                continue
            if where is not None and not where(letter):
                continue
            if letter.event_id is not None and letter.event_id in seen:
                report.same_event.append(letter)
                continue
            if letter.event_id is not None:
                seen.add(letter.event_id)
            report.redriven.append(letter)
        if dry_run:
            return report
        if report.redriven:
            producer = build_producer(kafka)
            await producer.start()
            try:
                report.published = await _publish(producer, report.redriven, kafka.send_timeout_s)
            finally:
                await stop_within(producer.stop, timeout_s=10, what="redrive producer")
        if not selected and ends:
            # Only after every send was acknowledged: a failed redrive is run again.
            await consumer.commit({tp: OffsetAndMetadata(end, "") for tp, end in ends.items()})
            report.cursor = {tp.partition: end for tp, end in ends.items()}
    return report


async def _publish(
    producer: AIOKafkaProducer, letters: list[DeadLetter], send_timeout_s: float
) -> list[RecordMetadata]:
    # Sent in DLQ order; one key keeps its order on the way back (same partition,
    # and the producer retries a batch before the next one of that partition).
    futures = [
        await producer.send(
            letter.original_topic,
            value=letter.value,
            key=letter.key,
            headers=letter.redrive_headers(),
        )
        for letter in letters
    ]
    async with asyncio.timeout(send_timeout_s + len(letters) * 0.01):
        return list(await asyncio.gather(*futures))


class _reader:
    """A consumer of the redrive group, assigned by hand (no group membership)."""

    def __init__(self, kafka: KafkaConfig) -> None:
        self._consumer = AIOKafkaConsumer(
            **kafka.connection_options(),
            client_id=f"{kafka.client_id}-dlq",
            group_id=REDRIVE_GROUP,
            enable_auto_commit=False,
            auto_offset_reset="earliest",
            request_timeout_ms=kafka.request_timeout_ms,
        )

    async def __aenter__(self) -> AIOKafkaConsumer:
        await self._consumer.start()
        return self._consumer

    async def __aexit__(self, *exc: object) -> None:
        await stop_within(self._consumer.stop, timeout_s=10, what="dlq reader")


async def _read(
    consumer: AIOKafkaConsumer, dlq_topic: str, *, pending_only: bool
) -> tuple[list[DeadLetter], dict[TopicPartition, int]]:
    partitions = consumer.partitions_for_topic(dlq_topic)
    if not partitions:
        await consumer._client.force_metadata_update()
        partitions = consumer.partitions_for_topic(dlq_topic)
    if not partitions:
        raise LookupError(f"no topic {dlq_topic} on the broker")
    tps = [TopicPartition(dlq_topic, p) for p in sorted(partitions)]
    consumer.assign(tps)
    ends = await consumer.end_offsets(tps)
    starts = await consumer.beginning_offsets(tps)
    letters: list[DeadLetter] = []
    for tp in tps:
        start = starts[tp]
        if pending_only:
            committed = await consumer.committed(tp)
            start = max(start, committed or 0)
        consumer.seek(tp, start)
    # Read each partition up to its end. Tansu's listed end can fall short of the last
    # record (see consumer.offset_ahead) while the high watermark of a fetch is right,
    # so every partition is fetched at least once and the target follows it.
    targets = dict(ends)
    pending, empty_polls = list(tps), 0
    while pending and empty_polls < 3:
        batch = await consumer.getmany(*pending, timeout_ms=500)
        empty_polls = 0 if batch else empty_polls + 1
        for records in batch.values():
            letters += [DeadLetter.of(r) for r in records]
        targets = {tp: max(end, consumer.highwater(tp) or 0) for tp, end in targets.items()}
        pending = [tp for tp in tps if await consumer.position(tp) < targets[tp]]
    letters.sort(key=lambda d: (d.partition, d.offset))
    positions = {tp: await consumer.position(tp) for tp in tps}
    return letters, positions
