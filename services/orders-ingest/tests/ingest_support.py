"""Helpers for orders-ingest tests: fixtures on disk, signing as each platform does."""

from __future__ import annotations

import base64
import copy
import hashlib
import hmac
import json
import time
import uuid
from pathlib import Path
from typing import Any

import httpx
from sqlalchemy import func, select

FIXTURES = Path(__file__).parent / "fixtures"
ADMIN = {"Authorization": "Bearer admin-token-for-tests"}


def fixture(name: str) -> dict[str, Any]:
    return copy.deepcopy(json.loads((FIXTURES / f"{name}.json").read_text()))


def b64hmac(secret: str, message: bytes) -> str:
    return base64.b64encode(hmac.new(secret.encode(), message, hashlib.sha256).digest()).decode()


def dumps(payload: Any) -> bytes:
    return json.dumps(payload).encode()


async def register(client: httpx.AsyncClient, tenant_id: str) -> dict[str, str]:
    """A tenant with a secret for every platform; returns the secrets."""
    r = await client.post(
        "/admin/tenants",
        headers=ADMIN,
        json={
            "tenant_id": tenant_id,
            "name": f"Shop {tenant_id}",
            "shopify_shop_domain": shop_domain(tenant_id),
            "platforms": ["shopify", "woocommerce", "standard", "zendesk", "aftership"],
        },
    )
    assert r.status_code == 201, r.text
    return r.json()["secrets"]


async def connect(
    client: httpx.AsyncClient, tenant_id: str, platform: str, url: str, token: str
) -> None:
    """The tenant's platform API credentials (reconciliation, BigCommerce fetch)."""
    r = await client.put(
        f"/admin/tenants/{tenant_id}/connections/{platform}",
        headers=ADMIN,
        json={"api_base_url": url, "access_token": token},
    )
    assert r.status_code == 200, r.text


async def api_key(client: httpx.AsyncClient, tenant_id: str, *scopes: str) -> str:
    r = await client.post(
        f"/admin/tenants/{tenant_id}/api-keys", headers=ADMIN, json={"scopes": list(scopes)}
    )
    assert r.status_code == 201, r.text
    return str(r.json()["key"])


def shop_domain(tenant_id: str) -> str:
    return f"{tenant_id}.myshopify.com"


async def post_shopify(
    client: httpx.AsyncClient,
    tenant_id: str,
    secret: str,
    topic: str,
    payload: Any,
    *,
    webhook_id: str | None = None,
    body: bytes | None = None,
    signature: str | None = None,
) -> httpx.Response:
    raw = body if body is not None else dumps(payload)
    return await client.post(
        "/webhooks/shopify",
        content=raw,
        headers={
            "Content-Type": "application/json",
            "X-Shopify-Topic": topic,
            "X-Shopify-Shop-Domain": shop_domain(tenant_id),
            "X-Shopify-Webhook-Id": webhook_id or str(uuid.uuid4()),
            "X-Shopify-Hmac-Sha256": signature or b64hmac(secret, raw),
            "X-Shopify-API-Version": "2025-01",
        },
    )


async def post_woo(
    client: httpx.AsyncClient, tenant_id: str, secret: str, topic: str, payload: Any
) -> httpx.Response:
    raw = dumps(payload)
    return await client.post(
        f"/webhooks/woocommerce/{tenant_id}",
        content=raw,
        headers={
            "Content-Type": "application/json",
            "X-WC-Webhook-Topic": topic,
            "X-WC-Webhook-Source": "https://shop.example.com/",
            # A fresh delivery id on every attempt, as WooCommerce does.
            "X-WC-Webhook-Delivery-ID": str(uuid.uuid4().int % 10**6),
            "X-WC-Webhook-Signature": b64hmac(secret, raw),
        },
    )


def standard_headers(
    secret: str, body: bytes, *, msg_id: str | None = None, ts: int | None = None
) -> dict[str, str]:
    msg_id = msg_id or f"msg_{uuid.uuid4().hex}"
    stamp = str(ts if ts is not None else int(time.time()))
    key = base64.b64decode(secret.removeprefix("whsec_"))
    sig = base64.b64encode(
        hmac.new(key, f"{msg_id}.{stamp}.".encode() + body, hashlib.sha256).digest()
    ).decode()
    return {
        "Content-Type": "application/json",
        "webhook-id": msg_id,
        "webhook-timestamp": stamp,
        "webhook-signature": f"v1,{sig}",
    }


def zendesk_headers(secret: str, body: bytes, ts: str | None = None) -> dict[str, str]:
    ts = ts or time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {
        "Content-Type": "application/json",
        "x-zendesk-webhook-id": "01GZ",
        "x-zendesk-webhook-invocation-id": str(uuid.uuid4().int % 10**9),
        "x-zendesk-webhook-signature-timestamp": ts,
        "x-zendesk-webhook-signature": b64hmac(secret, ts.encode() + body),
    }


async def outbox_count(runtime: Any, tenant_id: str) -> int:
    t = runtime.tables.outbox
    async with runtime.sessionmaker() as s:
        return int(
            (
                await s.execute(
                    select(func.count())
                    .select_from(t)
                    # API key announcements are not what these tests count.
                    .where(t.c.key.startswith(f"{tenant_id}:"), t.c.topic != "afterglow.tenants")
                )
            ).scalar_one()
        )


async def delivery_count(runtime: Any, tenant_id: str) -> int:
    from afterglow.ingest.models import Delivery

    async with runtime.sessionmaker() as s:
        return int(
            (
                await s.execute(
                    select(func.count())
                    .select_from(Delivery)
                    .where(Delivery.tenant_id == tenant_id)
                )
            ).scalar_one()
        )
