"""BigCommerce: the webhook is stored and answered at once, and the fetch worker reads
the order from the store's API (a local fake), retrying with backoff on the app's
ManualClock, failing for good with the reason, and fetching again on replay."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

import httpx
import pytest

from afterglow.devstack.stack import Stack
from afterglow.devstack.testing import running_service
from afterglow.events.testing import eventually
from afterglow.ingest.app import create_app
from afterglow.ingest.settings import IngestSettings
from afterglow.kit.clock import ManualClock

from ..ingest_fakes import FakePlatforms
from ..ingest_support import (
    ADMIN,
    api_key,
    connect,
    delivery_count,
    fixture,
    outbox_count,
    register,
)

START = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
RETRY_BASE_S = 60.0
MAX_ATTEMPTS = 3
PLACED = "afterglow.order.placed.v1"


@pytest.fixture(scope="module")
def clock() -> ManualClock:
    return ManualClock(START)


# This module's app (overrides conftest's): the injected clock paces the retries, and
# the worker polls often, so a retry happens as soon as a test moves the clock.
@pytest.fixture(scope="module")
async def app_and_client(
    stack: Stack, settings: IngestSettings, clock: ManualClock
) -> AsyncIterator[tuple[object, httpx.AsyncClient]]:
    fast = settings.model_copy(
        update={
            "ingest_fetch_poll_interval_s": 0.05,
            "ingest_fetch_timeout_s": 8.0,
            "ingest_fetch_max_attempts": MAX_ATTEMPTS,
            "ingest_fetch_retry_base_s": RETRY_BASE_S,
            "ingest_fetch_retry_max_s": 600.0,
        }
    )
    async with running_service(stack, create_app, fast, clock=clock) as ingest:
        yield ingest.app, ingest.client


@dataclass
class Store:
    """One tenant's BigCommerce store: its webhook token, an operator's API key, and
    the fake store API's orders (the access token is the tenant id)."""

    client: httpx.AsyncClient
    fake: FakePlatforms
    tenant_id: str
    hook_headers: dict[str, str]
    auth: dict[str, str]

    def put_order(self, order: dict[str, Any]) -> None:
        self.fake.bigcommerce[f"{self.tenant_id}:{order['id']}"] = order

    async def post(self, hook: dict[str, Any]) -> httpx.Response:
        return await self.client.post(
            f"/webhooks/bigcommerce/{self.tenant_id}", json=hook, headers=self.hook_headers
        )

    async def delivery(self, did: str) -> dict[str, Any]:
        r = await self.client.get(f"/v1/deliveries/{did}", headers=self.auth)
        assert r.status_code == 200, r.text
        return dict(r.json())

    async def until(self, did: str, check: Callable[[dict[str, Any]], bool]) -> dict[str, Any]:
        return await eventually(lambda: self.delivery(did), check, timeout=20)

    async def until_retry_scheduled(self, did: str, attempt: int, clock: ManualClock) -> dict:
        """Wait until ``attempt`` failed and its retry was scheduled on the clock."""
        due = clock.now() + timedelta(seconds=RETRY_BASE_S * 2 ** (attempt - 1))
        return await self.until(
            did,
            lambda d: (
                d["attempts"] == attempt
                and d["next_attempt_at"] is not None
                and datetime.fromisoformat(d["next_attempt_at"]) == due
            ),
        )

    async def replay(self, did: str) -> httpx.Response:
        return await self.client.post(f"/v1/deliveries/{did}/replay", headers=self.auth)


@pytest.fixture
async def store(client: httpx.AsyncClient, fake: FakePlatforms, tenant_id: str) -> Store:
    await register(client, tenant_id)
    r = await client.post(f"/admin/tenants/{tenant_id}/secrets/bigcommerce", headers=ADMIN, json={})
    assert r.status_code == 201, r.text
    await connect(client, tenant_id, "bigcommerce", f"{fake.url}/stores/abc123", tenant_id)
    key = await api_key(client, tenant_id, "orders:read", "orders:write")
    return Store(
        client,
        fake,
        tenant_id,
        {"X-Afterglow-Webhook-Token": r.json()["secret"]},
        {"Authorization": f"Bearer {key}"},
    )


def of(tenant_id: str, etype: str = PLACED):  # type: ignore[no-untyped-def]
    return lambda e: e.tenantid == tenant_id and e.type == etype


async def order_events(tap: Any, tenant_id: str) -> list[Any]:
    """Every order event the tenant published so far (its API key's announcement aside)."""
    return [
        e
        for e in await tap.events(settle=0.5)
        if e.tenantid == tenant_id and e.type.startswith("afterglow.order.")
    ]


class TestReceiverAnswersAtOnce:
    async def test_store_api_down_is_200_then_the_worker_retries_once_it_is_back(
        self, store, tap, runtime, clock, fake, tenant_id
    ):
        store.put_order(fixture("bigcommerce_order"))
        fake.bc_status[tenant_id] = 503
        r = await store.post(fixture("bigcommerce_order_created"))
        assert r.status_code == 200, r.text
        assert r.json()["status"] == "fetch_pending" and r.json()["events"] == []
        did = r.json()["delivery_id"]

        d = await store.until_retry_scheduled(did, 1, clock)
        assert d["status"] == "fetch_pending" and "503" in d["last_error"]
        # The clock stands still: no second attempt however long the worker polls.
        await asyncio.sleep(0.5)
        assert fake.bc_request_count(tenant_id) == 1
        assert await outbox_count(runtime, tenant_id) == 0

        del fake.bc_status[tenant_id]
        clock.advance(timedelta(seconds=RETRY_BASE_S))
        [event] = await tap.wait_for(of(tenant_id))
        assert event.data.order_id == "bigcommerce:250" and event.subject == "11"
        assert event.data.total.amount == 2200
        assert event.data.line_items[0].sku == "SLCTBS"
        d = await store.until(did, lambda d: d["status"] == "processed")
        assert d["attempts"] == 2 and d["last_error"] is None and d["next_attempt_at"] is None
        assert d["event_ids"] == [event.id]
        assert await outbox_count(runtime, tenant_id) == 1

    async def test_a_hanging_store_api_does_not_hold_the_webhook(self, store, tap, fake, tenant_id):
        store.put_order(fixture("bigcommerce_order"))
        gate = threading.Event()
        fake.bc_gates[tenant_id] = gate
        try:
            r = await asyncio.wait_for(store.post(fixture("bigcommerce_order_created")), 5)
            assert r.status_code == 200 and r.json()["status"] == "fetch_pending"

            # The worker is the one waiting on the store.
            async def requests_seen() -> int:
                return fake.bc_request_count(tenant_id)

            await eventually(requests_seen, lambda n: n >= 1)
        finally:
            gate.set()
        [event] = await tap.wait_for(of(tenant_id))
        d = await store.until(r.json()["delivery_id"], lambda d: d["status"] == "processed")
        assert d["attempts"] == 1 and d["event_ids"] == [event.id]

    async def test_payload_checks_still_answer_at_once(self, store, runtime, tenant_id):
        hook = fixture("bigcommerce_order_created")
        bad = await store.client.post(
            f"/webhooks/bigcommerce/{tenant_id}",
            json=hook,
            headers={"X-Afterglow-Webhook-Token": "x"},
        )
        assert bad.status_code == 401
        no_id = await store.post(hook | {"data": {"type": "order"}, "hash": "h-no-id"})
        # Was 422: BigCommerce deactivates failing hooks, so it is stored as quarantined.
        assert no_id.status_code == 202 and no_id.json()["status"] == "quarantined"
        other = await store.post(hook | {"scope": "store/product/updated", "hash": "h-product"})
        assert other.status_code == 202 and other.json()["status"] == "archived"
        assert await delivery_count(runtime, tenant_id) == 2


class TestDeduplication:
    async def test_same_hash_yields_one_delivery_one_fetch_one_event(
        self, store, tap, runtime, fake, tenant_id
    ):
        store.put_order(fixture("bigcommerce_order"))
        hook = fixture("bigcommerce_order_created")
        # BigCommerce retrying while the first is in flight: the unique key decides.
        first, second = await asyncio.gather(store.post(hook), store.post(hook))
        assert sorted([first.json()["status"], second.json()["status"]]) == [
            "duplicate",
            "fetch_pending",
        ]
        assert first.json()["delivery_id"] == second.json()["delivery_id"]
        [event] = await tap.wait_for(of(tenant_id))
        await store.until(first.json()["delivery_id"], lambda d: d["status"] == "processed")
        late = await store.post(hook)
        assert late.status_code == 200 and late.json()["status"] == "duplicate"
        everything = await order_events(tap, tenant_id)
        assert [e.id for e in everything] == [event.id]
        assert await outbox_count(runtime, tenant_id) == 1
        assert await delivery_count(runtime, tenant_id) == 1
        assert fake.bc_request_count(tenant_id) == 2  # the order and its products, once


class TestFailures:
    async def test_failing_every_attempt_ends_failed_with_the_reason_then_replay(
        self, store, tap, runtime, clock, fake, tenant_id
    ):
        # Order 250 is not in the store (yet): 404 on every attempt.
        r = await store.post(fixture("bigcommerce_order_created"))
        did = r.json()["delivery_id"]
        for attempt in range(1, MAX_ATTEMPTS):
            await store.until_retry_scheduled(did, attempt, clock)
            clock.advance(timedelta(seconds=RETRY_BASE_S * 2 ** (attempt - 1)))
        d = await store.until(did, lambda d: d["status"] == "failed")
        assert d["attempts"] == MAX_ATTEMPTS and d["next_attempt_at"] is None
        assert "404" in d["last_error"] and "/v2/orders/250" in d["last_error"]
        listed = await store.client.get(
            "/v1/deliveries", params={"status": "failed"}, headers=store.auth
        )
        assert [(x["id"], x["last_error"]) for x in listed.json()["items"]] == [
            (did, d["last_error"])
        ]
        # Failed is final: a day later nothing was tried again.
        clock.advance(timedelta(days=1))
        await asyncio.sleep(0.5)
        assert fake.bc_request_count(tenant_id) == MAX_ATTEMPTS
        assert (await store.delivery(did))["status"] == "failed"
        assert await outbox_count(runtime, tenant_id) == 0

        # The operator fixes the store and replays: a new round of attempts.
        store.put_order(fixture("bigcommerce_order"))
        replay = await store.replay(did)
        assert replay.status_code == 200 and replay.json()["status"] == "fetch_pending"
        [event] = await tap.wait_for(of(tenant_id))
        d = await store.until(did, lambda d: d["status"] == "processed")
        assert d["attempts"] == 1 and d["replays"] == 1 and d["event_ids"] == [event.id]

    async def test_normalization_error_fails_at_once_naming_the_field(
        self, store, runtime, fake, tenant_id
    ):
        order = fixture("bigcommerce_order")
        del order["total_inc_tax"]
        store.put_order(order)
        r = await store.post(fixture("bigcommerce_order_created"))
        d = await store.until(r.json()["delivery_id"], lambda d: d["status"] == "failed")
        assert d["attempts"] == 1 and "total_inc_tax" in d["last_error"]
        assert await outbox_count(runtime, tenant_id) == 0

    async def test_destination_check_runs_before_each_fetch(
        self, store, tap, runtime, clock, fake, tenant_id
    ):
        # The connection was saved while private addresses were allowed (the suite's
        # fake is on 127.0.0.1); production refuses them at fetch time too.
        store.put_order(fixture("bigcommerce_order"))
        allowed = runtime.settings
        runtime.settings = allowed.model_copy(update={"outbound_allow_private": False})
        try:
            r = await store.post(fixture("bigcommerce_order_created"))
            did = r.json()["delivery_id"]
            d = await store.until_retry_scheduled(did, 1, clock)
            assert "127.0.0.1 is not a public address" in d["last_error"]
            assert fake.bc_request_count(tenant_id) == 0
        finally:
            runtime.settings = allowed
        clock.advance(timedelta(seconds=RETRY_BASE_S))
        await tap.wait_for(of(tenant_id))
        await store.until(did, lambda d: d["status"] == "processed")


class TestReplay:
    async def test_replay_fetches_again_and_repeats_only_its_own_event_ids(
        self, store, tap, runtime, fake, tenant_id
    ):
        order = fixture("bigcommerce_order")
        store.put_order(order)
        r = await store.post(fixture("bigcommerce_order_created"))
        did = r.json()["delivery_id"]
        [placed] = await tap.wait_for(of(tenant_id))
        await store.until(did, lambda d: d["status"] == "processed")

        replay = await store.replay(did)
        assert replay.status_code == 200 and replay.json()["status"] == "fetch_pending"
        d = await store.until(did, lambda d: d["status"] == "processed" and d["replays"] == 1)
        assert fake.bc_request_count(tenant_id) == 4  # fetched a second time
        # Published again under the same id (downstream inboxes drop it); nothing new.
        await tap.wait_for(lambda e: e.id == placed.id, count=2)
        assert d["event_ids"] == [placed.id]
        assert await outbox_count(runtime, tenant_id) == 1

        # The order shipped, then was cancelled, and no webhook told us: each replay
        # says the new fact once, under an id of its own.
        order["status_id"], order["date_shipped"] = 2, "Wed, 06 Mar 2026 10:00:00 +0000"
        await store.replay(did)
        [shipped] = await tap.wait_for(of(tenant_id, "afterglow.order.fulfilled.v1"))
        await store.until(did, lambda d: d["replays"] == 2 and d["status"] == "processed")
        order["status_id"] = 5
        await store.replay(did)
        [cancelled] = await tap.wait_for(of(tenant_id, "afterglow.order.cancelled.v1"))
        d = await store.until(did, lambda d: d["replays"] == 3 and d["status"] == "processed")
        assert d["event_ids"] == [placed.id, shipped.id, cancelled.id]
        assert await outbox_count(runtime, tenant_id) == 3
        everything = await order_events(tap, tenant_id)
        assert {e.id for e in everything} == {placed.id, shipped.id, cancelled.id}
        assert {e.type for e in everything if e.id == placed.id} == {PLACED}
