"""Helpers for orders-ingest tests: fixtures on disk, signing as each platform does."""

from __future__ import annotations

import asyncio
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


_READ_KEYS: dict[str, str] = {}


class Settled:
    """A webhook's answer, with the outcome of its processing.

    Receivers answer 200 ``received`` once the raw delivery is stored; the worker then
    normalizes it and emits its events. ``status_code`` and ``text`` are the answer's;
    ``json()`` is the delivery's final status and event ids as GET /v1/deliveries/{id}
    shows them (the answer itself when it was not ``received``: duplicate, quarantined
    at once, fetch_pending, errors)."""

    def __init__(self, answer: httpx.Response, outcome: dict[str, Any]) -> None:
        self.answer = answer
        self.status_code = answer.status_code
        self.text = answer.text
        self._outcome = outcome

    def json(self) -> dict[str, Any]:
        return self._outcome


async def settled(
    client: httpx.AsyncClient, tenant_id: str, answer: Any, timeout_s: float = 30
) -> Settled:
    """Wait (bounded) until the delivery ``answer`` names is no longer ``received``."""
    if isinstance(answer, Settled):
        return answer
    if answer.status_code >= 300 or answer.json().get("status") != "received":
        return Settled(answer, answer.json())
    if tenant_id not in _READ_KEYS:
        _READ_KEYS[tenant_id] = await api_key(client, tenant_id, "orders:read")
    auth = {"Authorization": f"Bearer {_READ_KEYS[tenant_id]}"}
    did = answer.json()["delivery_id"]
    async with asyncio.timeout(timeout_s):
        while True:
            d = await client.get(f"/v1/deliveries/{did}", headers=auth)
            assert d.status_code == 200, d.text
            if d.json()["status"] != "received":
                out = {"delivery_id": did, "status": d.json()["status"]}
                return Settled(answer, out | {"events": d.json()["event_ids"]})
            await asyncio.sleep(0.02)


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
    settle: bool = True,
) -> Any:
    """Post as Shopify does; with ``settle`` (default) wait for the delivery to be
    processed and return a :class:`Settled`, else the raw answer."""
    raw = body if body is not None else dumps(payload)
    r = await client.post(
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
    return await settled(client, tenant_id, r) if settle else r


async def post_woo(
    client: httpx.AsyncClient,
    tenant_id: str,
    secret: str,
    topic: str,
    payload: Any,
    settle: bool = True,
) -> Any:
    """Post as WooCommerce does; ``settle`` as for :func:`post_shopify`."""
    raw = dumps(payload)
    r = await client.post(
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
    return await settled(client, tenant_id, r) if settle else r


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
