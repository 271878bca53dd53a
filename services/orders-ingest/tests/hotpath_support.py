"""Helpers for the hot-path tests: distinct signed orders, and the stored state read
straight from the database (deliveries and their events, the outbox)."""

from __future__ import annotations

import asyncio
import contextlib
import copy
from collections.abc import AsyncIterator
from typing import Any

import httpx
from sqlalchemy import text
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from afterglow.devstack.stack import Stack

from .ingest_support import b64hmac, dumps, fixture, shop_domain

ORDER = fixture("shopify_order")


def order_body(n: int) -> bytes:
    order = copy.deepcopy(ORDER)
    order["id"] = 7_000_000 + n
    return dumps(order)


def headers(tenant_id: str, secret: str, body: bytes, webhook_id: str) -> dict[str, str]:
    return {
        "Content-Type": "application/json",
        "X-Shopify-Topic": "orders/create",
        "X-Shopify-Shop-Domain": shop_domain(tenant_id),
        "X-Shopify-Webhook-Id": webhook_id,
        "X-Shopify-Hmac-Sha256": b64hmac(secret, body),
    }


async def post_order(
    client: httpx.AsyncClient, tenant_id: str, secret: str, n: int
) -> httpx.Response:
    body = order_body(n)
    return await client.post(
        "/webhooks/shopify", content=body, headers=headers(tenant_id, secret, body, f"wh-{n}")
    )


@contextlib.asynccontextmanager
async def database(stack: Stack) -> AsyncIterator[AsyncEngine]:
    engine = create_async_engine(stack.database_url)
    try:
        yield engine
    finally:
        await engine.dispose()


async def tenant_state(engine: AsyncEngine, tenant_id: str) -> dict[str, Any]:
    """Per delivery: status and events; and the tenant's order.placed outbox rows."""
    async with engine.connect() as conn:
        deliveries = (
            await conn.execute(
                text("SELECT id, status, event_ids FROM ingest.deliveries WHERE tenant_id = :t"),
                {"t": tenant_id},
            )
        ).all()
        placed = (
            await conn.execute(
                text(
                    "SELECT event_id FROM ingest.outbox WHERE key LIKE :k "
                    "AND event_type LIKE '%order.placed%'"
                ),
                {"k": f"{tenant_id}:%"},
            )
        ).scalars()
        return {
            "deliveries": {d.id: (d.status, list(d.event_ids)) for d in deliveries},
            "placed": list(placed),
        }


async def until_processed(engine: AsyncEngine, tenant_id: str, count: int) -> dict[str, Any]:
    """Bounded wait: ``count`` deliveries stored and none still ``received``."""
    async with asyncio.timeout(60):
        while True:
            state = await tenant_state(engine, tenant_id)
            statuses = [s for s, _ in state["deliveries"].values()]
            if len(statuses) >= count and "received" not in statuses:
                return state
            await asyncio.sleep(0.1)
