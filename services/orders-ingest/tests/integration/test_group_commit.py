"""The webhook hot path: group commit, then processing from the stored deliveries.

A 2xx means stored; what is stored is processed once, whoever dies in between: the
service killed mid-burst (SIGKILL, a real uvicorn process), or killed while its
worker holds a batch half applied.
"""

from __future__ import annotations

import asyncio

from hotpath_support import database, headers, order_body, post_order, until_processed
from ingest_support import register, settled


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
