"""Consumer lag per partition, as a Prometheus gauge, from what the consumer already has.

Lag = the partition's high watermark minus the next offset this consumer will process.
Both come without a round trip: aiokafka refreshes ``highwater(tp)`` with every fetch
response, and the next offset is the last record of the batch just read plus one, or
the first record of a batch read earlier and still being applied. A
partition absent from the batch keeps the next offset seen before (the consumer did not
move), so its lag still grows when its high watermark does; one never read since the
assignment is left out until its first batch. KEDA scales on the group's lag as the
broker sees it; this gauge is per pod and partition, for the alert on lag that keeps
growing and for the dashboards (deploy/).

Kept apart from consumer.py on purpose: the consumer calls :func:`observe_lag` once per
poll, and nothing else here depends on how it processes a batch.
"""

from __future__ import annotations

import contextlib
from collections.abc import Mapping, Sequence
from typing import Any

from aiokafka import AIOKafkaConsumer, TopicPartition
from prometheus_client import Gauge

LAG = Gauge(
    "afterglow_consumer_lag_records",
    "Records of the partition not yet read by this consumer (high watermark minus next offset)",
    ["consumer", "topic", "partition"],
)

# consumer name -> partition -> next offset to read, as of the last batch that had it
_next_offsets: dict[str, dict[TopicPartition, int]] = {}


def observe_lag(
    name: str,
    consumer: AIOKafkaConsumer,
    batch: Mapping[TopicPartition, Sequence[Any]],
    unapplied: Mapping[TopicPartition, int] | None = None,
) -> None:
    """Update the lag gauge of every assigned partition after a poll (no I/O).

    ``unapplied``: per partition, the first offset of the batches read before and still
    being applied. The consumer reads a poll ahead while the last one is applied (see
    afterglow.events.consumer), and what it has read but not applied is lag too: a
    consumer stuck on its database must not read as one poll less behind."""
    known = _next_offsets.setdefault(name, {})
    for tp, records in batch.items():
        if records:
            known[tp] = records[-1].offset + 1
    assigned = consumer.assignment()
    for tp in [tp for tp in known if tp not in assigned]:
        # revoked: another pod reports it now; a stale series here would double it
        del known[tp]
        # two consumers of one name in a process (tests) may both let it go
        with contextlib.suppress(KeyError):
            LAG.remove(name, tp.topic, str(tp.partition))
    for tp, read in known.items():
        position = min(read, unapplied.get(tp, read)) if unapplied else read
        highwater = consumer.highwater(tp)
        if highwater is not None:
            LAG.labels(name, tp.topic, str(tp.partition)).set(max(0, highwater - position))
