"""The relay sends a claim as record batches per partition: what a consumer reads is
what one send per row gave, on the real broker."""

from __future__ import annotations

from aiokafka.partitioner import DefaultPartitioner

from afterglow.events import Outbox, OutboxRelay, from_record, to_record
from afterglow.events.testing import TopicTap

from .support import ticket_event

# Enough rows per key that a key's records fill several of the producer's batches
# (16 KiB each, a few hundred bytes per record), in one claim.
PER_KEY = 150
KEYS = ("c-a", "c-b", "c-c", "c-d")


async def test_a_claim_spanning_several_batches_keeps_each_keys_order_and_partition(
    tenant_id, engine, sessionmaker, tables, producer, kafka
):
    outbox = Outbox(tables)
    events = [
        ticket_event(tenant_id, customer, status=str(i))
        for i in range(PER_KEY)
        for customer in KEYS
    ]
    async with sessionmaker.begin() as s:
        await outbox.add(s, *events)
    relay = OutboxRelay(engine, tables, producer, batch_size=len(events))
    async with TopicTap(kafka.bootstrap_servers, "afterglow.tickets") as tap:
        assert await relay.publish_once() == len(events)
        records = await tap.wait_for_records(
            lambda r: r.key.startswith(f"{tenant_id}:".encode()), count=len(events), timeout=30
        )
    assert len(records) == len(events)  # each row once
    partitions = sorted(await producer.partitions_for("afterglow.tickets"))
    default = DefaultPartitioner()
    for customer in KEYS:
        key = f"{tenant_id}:{customer}".encode()
        mine = [r for r in records if r.key == key]
        # Where a send of its own (the default partitioner) puts the key, in id order.
        assert {r.partition for r in mine} == {default(key, partitions, partitions)}
        assert [from_record(r.key, r.value, r.headers).data.status for r in mine] == [
            str(i) for i in range(PER_KEY)
        ]
    # The bytes on the wire are those of to_record (key, value, headers).
    sent = {e.id: to_record(e) for e in events}
    for r in records:
        event = from_record(r.key, r.value, r.headers)
        assert (r.key, r.value, list(r.headers)) == (
            sent[event.id].key,
            sent[event.id].value,
            sent[event.id].headers,
        )
