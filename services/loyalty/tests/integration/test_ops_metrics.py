"""What an operator's alerts read (deploy/observability.py), read the way Prometheus
reads it: from the running service's /metrics. A consumer that falls behind shows its
lag, a dead-lettered record moves the DLQ counter, and an outbox whose rows cannot
leave shows the age of its oldest row; each returns to normal once the cause is gone,
with nothing lost.

The loyalty app stands in for every service: these metrics come from afterglow.events
and afterglow.kit, which every service runs the same way.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text

from afterglow.devstack.stack import Stack
from afterglow.events import to_record
from afterglow.events.tables import OUTBOX_SHARDS
from afterglow.events.testing import (
    TopicTap,
    eventually,
    poison_record,
    record_id,
    wait_dead_letter,
)

from ..loyalty_support import Loyalty, new_id, running_loyalty

CONSUMER = "loyalty.ledger"
ORDERS = "afterglow.orders"
# A small poll: the consumer then reads a burst a few records at a time, and what the
# broker holds beyond them is its lag (the gauge is set after every poll).
MAX_RECORDS = 2
BURST = 10  # fits one producer batch (16 KiB)


@pytest.fixture(scope="module")
async def app(stack: Stack) -> AsyncIterator[Loyalty]:
    async with running_loyalty(stack, consumer_max_records=MAX_RECORDS) as running:
        yield running


async def sample(client: httpx.AsyncClient, name: str, labels: dict[str, str]) -> float | None:
    """The value of one series as GET /metrics serves it (None when it is absent)."""
    response = await client.get("/metrics")
    assert response.status_code == 200
    for family in text_string_to_metric_families(response.text):
        for s in family.samples:
            if s.name == name and s.labels == labels:
                return float(s.value)
    return None


async def send_in_one_batch(producer: Any, partition: int, events: list[Any]) -> None:
    """One record batch, appended to the partition at once: the consumer's first fetch
    sees all of it, so the high watermark it learns is past the whole burst."""
    batch = producer.create_batch()
    for event in events:
        r = to_record(event)
        assert batch.append(key=r.key, value=r.value, timestamp=None, headers=r.headers)
    batch.close()
    await (await producer.send_batch(batch, ORDERS, partition=partition))


async def test_a_consumer_that_falls_behind_raises_its_lag(app: Loyalty, tenant_id: str) -> None:
    customer = new_id("c")
    orders = [
        app.event(app.order(f"o-{i}", 1_000, customer_orders_count=3), tenant_id, customer)
        for i in range(BURST)
    ]
    labels = {"consumer": CONSUMER, "topic": ORDERS, "partition": "0"}
    # Holding the inbox keeps the ledger's first batch waiting on its claim: the
    # consumer cannot catch up, as when its database is slow.
    async with app.runtime.engine.connect() as conn:
        await conn.execute(text("LOCK TABLE loyalty.inbox IN EXCLUSIVE MODE"))
        await send_in_one_batch(app.producer, 0, orders)
        behind = await eventually(
            lambda: sample(app.client, "afterglow_consumer_lag_records", labels),
            lambda v: v is not None and v >= BURST - MAX_RECORDS,
            timeout=60,
        )
        await conn.rollback()
    assert behind is not None and behind >= BURST - MAX_RECORDS
    # Released: it catches up, the gauge falls to nothing and every order counted once.
    await eventually(
        lambda: sample(app.client, "afterglow_consumer_lag_records", labels),
        lambda v: v == 0,
        timeout=90,
    )
    await app.wait_account(tenant_id, customer, lambda a: a["pending"] == BURST * 50)
    assert await app.consistent(tenant_id, customer) == (0, BURST * 50)


async def test_a_dead_lettered_record_raises_the_dlq_counter(
    app: Loyalty, tenant_id: str, stack: Stack
) -> None:
    labels = {"consumer": CONSUMER, "topic": ORDERS, "outcome": "dead_lettered"}
    name = "afterglow_events_consumed_total"
    before = await sample(app.client, name, labels) or 0.0
    customer = new_id("c")
    poison = poison_record(
        app.event(app.order("o-x", 1_000, customer_orders_count=3), tenant_id, customer)
    )
    async with TopicTap(stack.kafka_bootstrap_servers, f"{ORDERS}.dlq") as dlq:
        await app.producer.send_and_wait(
            poison.topic, poison.value, key=poison.key, headers=poison.headers
        )
        await wait_dead_letter(dlq, record_id(poison), CONSUMER)
    after = await eventually(
        lambda: sample(app.client, name, labels), lambda v: v == before + 1, timeout=30
    )
    assert after == before + 1


async def test_a_stuck_outbox_raises_the_age_of_its_oldest_row(
    app: Loyalty, tenant_id: str
) -> None:
    relay = app.runtime.relay
    assert relay is not None
    labels = {"schema": "loyalty"}
    age = "afterglow_outbox_oldest_unsent_age_seconds"
    event = app.event(app.order("o-stuck", 1_000), tenant_id, new_id("c"))
    async with app.runtime.engine.connect() as locks:
        # Every shard's lock held elsewhere (a relay hung mid-batch on another pod):
        # this pod's relay publishes nothing, but still measures what waits.
        await locks.execute(
            text("SELECT pg_advisory_lock(:ns, s) FROM generate_series(0, :n - 1) AS s"),
            {"ns": relay.shard_lock_namespace, "n": OUTBOX_SHARDS},
        )
        await locks.commit()  # session locks: they outlive the transaction
        try:
            async with app.runtime.sessionmaker.begin() as s:
                await app.runtime.outbox.add(s, event)
                await s.execute(
                    text(
                        "UPDATE loyalty.outbox SET created_at = now() - interval '2 minutes' "
                        "WHERE event_id = :id"
                    ),
                    {"id": event.id},
                )
            oldest = await eventually(
                lambda: sample(app.client, age, labels),
                lambda v: v is not None and v >= 120,
                timeout=60,
            )
            assert oldest is not None and oldest < 600
            backlog = await sample(app.client, "afterglow_outbox_backlog_rows", labels)
            assert backlog is not None and backlog >= 1
        finally:
            await locks.execute(text("SELECT pg_advisory_unlock_all()"))
            await locks.commit()

    # Free again: the row leaves (nothing lost) and the age falls back under a minute.
    async def sent() -> bool:
        async with app.runtime.sessionmaker() as s:
            at = await s.scalar(
                text("SELECT sent_at FROM loyalty.outbox WHERE event_id = :id"), {"id": event.id}
            )
        return at is not None

    await eventually(sent, timeout=60)
    await eventually(
        lambda: sample(app.client, age, labels), lambda v: v is not None and v < 60, timeout=60
    )


async def test_a_redemption_counts_once_and_its_replay_not_again(
    app: Loyalty, tenant_id: str
) -> None:
    customer = new_id("c")
    h = await app.key(tenant_id)
    credit = await app.client.post(
        f"/v1/accounts/{customer}/adjustments",
        json={"points": 1_200, "reason": "goodwill"},
        headers=h,
    )
    assert credit.status_code == 201, credit.text
    kind = {"kind": "fixed_discount"}  # five-off: 500 points for 5.00 off
    before = await sample(app.client, "afterglow_loyalty_redemptions_total", kind) or 0.0
    points = await sample(app.client, "afterglow_loyalty_redeemed_points_total", kind) or 0.0
    for _ in range(2):  # the second is a replay of the first (same Idempotency-Key)
        r = await app.client.post(
            f"/v1/accounts/{customer}/redemptions",
            json={"reward_id": "five-off"},
            headers={**h, "Idempotency-Key": "k1"},
        )
        assert r.status_code == 201, r.text
    assert await sample(app.client, "afterglow_loyalty_redemptions_total", kind) == before + 1
    assert await sample(app.client, "afterglow_loyalty_redeemed_points_total", kind) == points + 500
