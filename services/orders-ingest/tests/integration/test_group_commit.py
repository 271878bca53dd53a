"""The webhook hot path: group commit, then processing from the stored deliveries.

A 2xx means stored, and what is stored is processed once (test_killed_ingest kills a
real process in between); past the bound of waiting requests the answer is 503 with
Retry-After; a client leaving mid-body is no server error.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from datetime import UTC, datetime
from typing import Any

import pytest
from sqlalchemy import func, select, text
from sqlalchemy.ext.asyncio import create_async_engine

from afterglow.ingest.deps import deps_of
from afterglow.ingest.group_commit import DeliveryWriter, NewDelivery, Overloaded
from afterglow.ingest.processing import (
    APPLIER_LOCK,
    QUIET_S,
    Pace,
    _pace,
    _round_size,
)

from ..hotpath_support import (
    database,
    headers,
    order_body,
    post_order,
    tenant_state,
    until_processed,
)
from ..ingest_support import delivery_count, register, settled


class TestGroupCommit:
    async def test_200_concurrent_webhooks_all_stored_and_each_emits_once(
        self, client, stack, tenant_id
    ):
        secret = (await register(client, tenant_id))["shopify"]
        answers = await asyncio.gather(
            *(post_order(client, tenant_id, secret, n) for n in range(200))
        )
        assert {r.status_code for r in answers} == {200}, {r.text for r in answers}
        assert {r.json()["status"] for r in answers} == {"received"}
        answered = {r.json()["delivery_id"] for r in answers}
        assert len(answered) == 200
        async with database(stack) as engine:
            state = await until_processed(engine, tenant_id, 200)
        assert set(state["deliveries"]) == answered
        assert {s for s, _ in state["deliveries"].values()} == {"processed"}
        events = [e for _, ids in state["deliveries"].values() for e in ids]
        assert len(events) == 200 and sorted(events) == sorted(state["placed"])

    async def test_a_retry_in_the_same_batch_is_its_duplicate(self, client, tenant_id):
        secret = (await register(client, tenant_id))["shopify"]
        body = order_body(1)
        h = headers(tenant_id, secret, body, "wh-twice")
        first, second = await asyncio.gather(
            client.post("/webhooks/shopify", content=body, headers=h),
            client.post("/webhooks/shopify", content=body, headers=h),
        )
        assert sorted(r.json()["status"] for r in (first, second)) == ["duplicate", "received"]
        assert first.json()["delivery_id"] == second.json()["delivery_id"]
        stored = first if first.json()["status"] == "received" else second
        done = await settled(client, tenant_id, stored)
        assert done.json()["status"] == "processed" and len(done.json()["events"]) == 1


class TestHeldConnection:
    async def test_a_writer_whose_connection_was_killed_stores_the_next_batch(
        self, stack, tenant_id
    ):
        # Each writer task keeps its connection between batches (no ping on checkout):
        # one the server dropped meanwhile is replaced, the batch is stored, no 503.
        name = f"writer-{tenant_id}"
        writer_engine = create_async_engine(
            stack.database_url, connect_args={"server_settings": {"application_name": name}}
        )
        now = datetime.now(UTC)
        new = [
            NewDelivery(tenant_id, "shopify", "orders/create", f"k{n}", {}, b"{}", now)
            for n in range(2)
        ]
        writer = DeliveryWriter(writer_engine, max_waiting=10, max_batch=10, retry_after_s=1)
        task = asyncio.ensure_future(writer.run())
        try:
            async with database(stack) as engine:
                assert await writer.store(new[0]) is True
                async with engine.connect() as conn:
                    killed = await conn.execute(
                        text(
                            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                            "WHERE application_name = :name"
                        ),
                        {"name": name},
                    )
                    assert killed.scalars().all() == [True]
                assert await writer.store(new[1]) is True
                state = await tenant_state(engine, tenant_id)
        finally:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
            await writer_engine.dispose()
        assert set(state["deliveries"]) == {d.id for d in new}


class TestOneApplier:
    async def test_while_another_process_applies_this_one_only_stores(
        self, client, stack, tenant_id
    ):
        # Two replicas each applying the oldest rows could commit an order's fulfilment
        # before its placement: one applier at a time keeps the shop's order.
        secret = (await register(client, tenant_id))["shopify"]
        async with database(stack) as engine, engine.connect() as other:
            await other.execute(select(func.pg_advisory_lock(APPLIER_LOCK)))
            answers = [await post_order(client, tenant_id, secret, n) for n in range(3)]
            assert {r.json()["status"] for r in answers} == {"received"}
            await asyncio.sleep(1.0)  # rounds run (woken by the commit) and find it busy
            state = await tenant_state(engine, tenant_id)
            assert [s for s, _ in state["deliveries"].values()] == ["received"] * 3
            await other.execute(select(func.pg_advisory_unlock(APPLIER_LOCK)))
            state = await until_processed(engine, tenant_id, 3)
        assert {s for s, _ in state["deliveries"].values()} == {"processed"}


class TestAnswersFirst:
    """The processing worker shares the event loop with the webhook requests: while
    they keep coming, its rounds are short (a full one held every request up)."""

    async def test_a_webhook_received_is_noted_as_an_arrival(self, client, runtime, tenant_id):
        secret = (await register(client, tenant_id))["shopify"]
        before = asyncio.get_running_loop().time()
        assert (await post_order(client, tenant_id, secret, 1)).status_code == 200
        assert deps_of(runtime).writer.last_arrival >= before

    async def test_while_webhooks_keep_arriving_a_round_is_short(self, runtime):
        # Nobody waits for a commit (the writer is idle between two arrivals), yet
        # one just arrived: a burst is under way.
        writer = deps_of(runtime).writer
        writer.last_arrival = asyncio.get_running_loop().time()
        assert writer.waiting == 0
        # A steady load, not a quiet moment: the round is sized to what arrived
        # (TestRoundsKeepUp), not a full one.
        assert await _pace(runtime, 0.5) is Pace.STEADY

    async def test_once_the_webhooks_stop_a_round_is_full(self, runtime):
        writer = deps_of(runtime).writer
        writer.last_arrival = asyncio.get_running_loop().time() - 10 * QUIET_S
        assert await _pace(runtime, 0.5) is Pace.QUIET


class TestRoundsKeepUp:
    """At a steady rate the rounds take what arrives; only a burst gets short rounds."""

    async def test_a_round_at_a_steady_load_takes_twice_what_arrived_since_the_last(self, runtime):
        settings = runtime.settings
        short, full = settings.ingest_process_busy_batch, settings.ingest_process_batch
        assert _round_size(settings, Pace.STEADY, stored=40) == 80
        assert _round_size(settings, Pace.STEADY, stored=1) == short
        assert _round_size(settings, Pace.STEADY, stored=10 * full) == full
        assert _round_size(settings, Pace.BURST, stored=10 * full) == short
        assert _round_size(settings, Pace.QUIET, stored=0) == full

    async def test_a_commit_that_ends_ends_the_deferral_at_once(
        self, client, stack, runtime, tenant_id
    ):
        # A request in its commit defers the round; its answer lets the round run then,
        # not at the next look.
        secret = (await register(client, tenant_id))["shopify"]
        writer = deps_of(runtime).writer
        async with database(stack) as engine, engine.connect() as other:
            await other.execute(text("LOCK TABLE ingest.deliveries IN EXCLUSIVE MODE"))
            posted = asyncio.create_task(post_order(client, tenant_id, secret, 1))
            for _ in range(1000):  # until it waits for its commit
                if writer.waiting:
                    break
                await asyncio.sleep(0.01)
            # The request waits for its commit all through the deferral: a burst.
            assert await _pace(runtime, 0.2) is Pace.BURST
            deferral = asyncio.create_task(_pace(runtime, 30.0))
            await asyncio.sleep(0.1)
            assert not deferral.done()
            await other.rollback()  # the table free: the request commits
            assert (await posted).status_code == 200
            # Over well before its 30 s: it ended with the commit, not at a deadline.
            assert await asyncio.wait_for(deferral, 5.0) is not Pace.BURST
        assert writer.waiting == 0


class TestOverload:
    async def test_past_the_bound_a_webhook_is_503_with_retry_after_and_nothing_stored(
        self, client, runtime, tenant_id
    ):
        secret = (await register(client, tenant_id))["shopify"]
        writer = deps_of(runtime).writer
        bound = writer.max_waiting
        writer.max_waiting = 0  # the bound reached: every webhook is turned away
        try:
            r = await post_order(client, tenant_id, secret, 1)
        finally:
            writer.max_waiting = bound
        assert r.status_code == 503
        assert r.headers["Retry-After"] == "1"
        assert r.json()["error"]["code"] == "overloaded"
        assert await delivery_count(runtime, tenant_id) == 0

    async def test_waiting_requests_are_bounded_and_released_by_the_commit(self, stack, tenant_id):
        async with database(stack) as engine:
            writer = DeliveryWriter(engine, max_waiting=2, max_batch=10, retry_after_s=3)
            now = datetime.now(UTC)
            new = [
                NewDelivery(tenant_id, "shopify", "orders/create", f"k{n}", {}, b"{}", now)
                for n in range(3)
            ]
            waiting = [asyncio.ensure_future(writer.store(d)) for d in new[:2]]
            await asyncio.sleep(0)  # both are queued; no writer task runs yet
            with pytest.raises(Overloaded) as refused:
                await writer.store(new[2])
            assert refused.value.headers == {"Retry-After": "3"}
            task = asyncio.ensure_future(writer.run())
            try:
                assert await asyncio.gather(*waiting) == [True, True]
            finally:
                task.cancel()
            state = await tenant_state(engine, tenant_id)
        assert set(state["deliveries"]) == {d.id for d in new[:2]}


class TestClientLeaves:
    async def test_a_disconnect_mid_body_is_logged_at_info_without_traceback(
        self, app_and_client, caplog
    ):
        app = app_and_client[0]
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "POST",
            "scheme": "http",
            "path": "/webhooks/shopify",
            "raw_path": b"/webhooks/shopify",
            "query_string": b"",
            "root_path": "",
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", b"5000"),
                (b"x-shopify-hmac-sha256", b"c2ln"),
                (b"x-shopify-shop-domain", b"nobody.myshopify.com"),
            ],
            "client": ("127.0.0.1", 1),
            "server": ("testserver", 80),
            "state": {},
        }
        messages = iter(
            [
                {"type": "http.request", "body": b'{"id": 1,', "more_body": True},
                {"type": "http.disconnect"},
            ]
        )

        async def receive() -> dict[str, Any]:
            return next(messages, {"type": "http.disconnect"})

        sent: list[dict[str, Any]] = []

        async def send(message: dict[str, Any]) -> None:
            sent.append(message)

        with caplog.at_level(logging.INFO):
            await app(scope, receive, send)
        left = [r for r in caplog.records if "disconnected" in r.getMessage()]
        assert [r.levelno for r in left] == [logging.INFO]
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR or r.exc_info]
