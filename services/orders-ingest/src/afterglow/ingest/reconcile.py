"""Reconciliation: poll each tenant's platform API for orders changed since the last
watermark and feed them through the same normalization and de-duplication as webhooks,
so that a lost webhook still becomes exactly one event (and a late one, none more).
"""

from __future__ import annotations

import json
import logging
import re
from datetime import datetime
from typing import Any

import httpx

from afterglow.ingest import domain, intake, registry_store
from afterglow.ingest.models import PlatformConnection
from afterglow.ingest.platforms import shopify, woocommerce
from afterglow.ingest.settings import IngestSettings
from afterglow.kit.app import Runtime
from afterglow.kit.outbound import check_destination
from afterglow.kit.polling import PollingWorker

log = logging.getLogger(__name__)

SHOPIFY_API_VERSION = "2025-01"
FIRST_LOOKBACK_S = 86_400.0  # a new connection looks one day back
MAX_PAGES = 100  # bounded: a runaway paginator must not pin the worker
_LINK_NEXT = re.compile(r'<([^>]+)>;\s*rel="next"')


async def reconciliation_worker(runtime: Runtime) -> None:
    """Background loop (create_service_app workers=): every interval, every connection."""
    settings = runtime.settings
    assert isinstance(settings, IngestSettings)

    async def reconcile_round(now: datetime) -> int:
        return await reconcile_all(runtime)

    # No batch: a round is every connection, so it is never "full"; the next waits an
    # interval. Not one transaction: each platform call sits between short ones.
    await PollingWorker(
        "ingest-reconcile", reconcile_round, runtime.clock, settings.ingest_reconcile_interval_s
    ).run()


async def reconcile_all(runtime: Runtime) -> int:
    """One round: reconcile every connection; one that fails does not stop the others.
    Returns how many connections were tried."""
    async with runtime.sessionmaker() as session:
        conns = await registry_store.connections_of_platforms(session, ("shopify", "woocommerce"))
    for tenant_id, platform in conns:
        try:
            await reconcile(runtime, tenant_id, platform)
        except Exception:
            log.exception("reconciliation failed", extra={"tenant": tenant_id})
    return len(conns)


async def reconcile(runtime: Runtime, tenant_id: str, platform: str) -> dict[str, Any]:
    """One pass for one tenant and platform. Returns counts (for the admin route)."""
    settings = runtime.settings
    assert isinstance(settings, IngestSettings)
    assert runtime.http is not None
    async with runtime.sessionmaker() as session:
        conn = await registry_store.connection(session, tenant_id, platform)
    if conn is None:
        return {"error": "no connection"}
    now = runtime.clock.now()
    since = domain.reconcile_window_start(
        conn.watermark, now, settings.ingest_reconcile_overlap_s, FIRST_LOOKBACK_S
    )
    counts = {"seen": 0, "new_deliveries": 0, "events": 0}
    newest = conn.watermark
    error = None
    try:
        await check_destination(conn.api_base_url, allow_private=settings.outbound_allow_private)
        async for topic, dedupe_key, payload, changed_at in _changed_orders(
            runtime.http, conn, since, settings.ingest_reconcile_page_size
        ):
            counts["seen"] += 1
            outcome = await _feed(runtime, tenant_id, platform, topic, dedupe_key, payload, now)
            if outcome is not None:
                counts["new_deliveries"] += 1
                counts["events"] += len(outcome.event_ids)
            if changed_at and (newest is None or changed_at > newest):
                newest = changed_at
    except (httpx.HTTPError, ValueError) as exc:
        # The watermark stays where the last good order left it: the next pass resumes.
        error = f"{type(exc).__name__}: {exc}"[:500]
        log.warning("reconciliation poll failed", extra={"tenant": tenant_id, "error": error})
    async with runtime.sessionmaker.begin() as session:
        await registry_store.record_reconcile_run(
            session,
            tenant_id=tenant_id,
            platform=platform,
            watermark=newest,
            ran_at=now,
            error=error,
        )
    return {**counts, "error": error}


async def _feed(
    runtime: Runtime,
    tenant_id: str,
    platform: str,
    topic: str,
    dedupe_key: str,
    payload: dict[str, Any],
    now: datetime,
) -> intake.Outcome | None:
    """One order change, one transaction: a bad order does not block the others."""
    body = json.dumps(payload, separators=(",", ":")).encode()
    # The same cleaning pass as a webhook's payload (a NUL in a name must not cost the
    # order here either), and the same quarantine when it cannot be normalized.
    payload = domain.clean_payload(payload, html_encoded=platform in domain.HTML_ENCODED_PLATFORMS)
    async with runtime.sessionmaker.begin() as session:
        try:
            normalized = await intake.normalize(session, tenant_id, platform, topic, payload)
        except domain.NormalizationError as exc:
            await intake.quarantine(
                session,
                tenant_id=tenant_id,
                platform=platform,
                topic=topic,
                dedupe_key=dedupe_key,
                headers={"x-afterglow-source": "reconciliation"},
                body=body,
                reason=intake.quarantine_reason(exc),
                received_at=now,
            )
            return None
        outcome = await intake.accept(
            session,
            runtime.outbox,
            runtime.tables,
            tenant_id=tenant_id,
            platform=platform,
            topic=topic,
            dedupe_key=dedupe_key,
            headers={"x-afterglow-source": "reconciliation"},
            body=body,
            normalized=normalized,
            received_at=now,
        )
    return None if outcome.status == "duplicate" else outcome


async def _changed_orders(
    http: httpx.AsyncClient, conn: PlatformConnection, since: datetime, page_size: int
) -> Any:
    if conn.platform == "shopify":
        async for item in _shopify(http, conn, since, page_size):
            yield item
    elif conn.platform == "woocommerce":
        async for item in _woocommerce(http, conn, since, page_size):
            yield item


async def _shopify(
    http: httpx.AsyncClient, conn: PlatformConnection, since: datetime, page_size: int
) -> Any:
    url: str | None = f"{conn.api_base_url}/admin/api/{SHOPIFY_API_VERSION}/orders.json"
    params: dict[str, Any] | None = {
        "updated_at_min": since.isoformat(),
        "status": "any",
        "limit": page_size,
        "order": "updated_at asc",
    }
    headers = {"X-Shopify-Access-Token": conn.access_token}
    for _ in range(MAX_PAGES):
        if url is None:
            return
        resp = await http.get(url, params=params, headers=headers)
        resp.raise_for_status()
        for order in resp.json().get("orders", []):
            changed = domain.parse_time(order.get("updated_at"), "updated_at")
            for i, (topic, key, payload) in enumerate(
                shopify.shopify_order_deliveries(order, "reconcile")
            ):
                yield topic, key, payload, changed if i == 0 else None
        # Cursor pagination: the next page's URL (with page_info) is in the Link header.
        match = _LINK_NEXT.search(resp.headers.get("link", ""))
        url, params = (match.group(1), None) if match else (None, None)


async def _woocommerce(
    http: httpx.AsyncClient, conn: PlatformConnection, since: datetime, page_size: int
) -> Any:
    key, _, secret = conn.access_token.partition(":")
    url = f"{conn.api_base_url}/wp-json/wc/v3/orders"
    for page in range(1, MAX_PAGES + 1):
        resp = await http.get(
            url,
            params={
                "modified_after": since.replace(tzinfo=None).isoformat(timespec="seconds"),
                "dates_are_gmt": "true",
                "per_page": page_size,
                "page": page,
                "orderby": "modified",
                "order": "asc",
            },
            auth=(key, secret),
        )
        resp.raise_for_status()
        orders = resp.json()
        for order in orders:
            changed = domain.parse_time(
                order.get("date_modified_gmt") or order.get("date_modified"), "date_modified"
            )
            # Same key as the webhook's: a retried webhook and a poll meet here.
            yield "order.updated", woocommerce.woo_dedupe_key(order), order, changed
        if page >= int(resp.headers.get("x-wp-totalpages", "1") or 1) or not orders:
            return
