"""History import: page through a shop's past orders and record them without messages.

A tenant that connects a shop with years of orders wants them in the order book and
the metrics (spend, tiers, counts, verified buyers), not a welcome email and a survey
about a parcel that arrived in 2023. Each past order goes through the same
normalization and de-duplication as a webhook (a raw delivery, one event per fact), and
every event is marked historical (``origin="import"``): journeys start nothing for it,
feedback asks nothing, loyalty credits it only when the tenant chose so
(``earn_points``) and never with a first-order bonus, referrals attribute nothing.

Credentials, the outbound guard and the HTTP client are reconciliation's: the
connection stored for the platform (``PUT /admin/tenants/{t}/connections/{p}``).

* Shopify: the Admin GraphQL ``orders`` connection, cursor pagination, within the
  cost-based throttle: each answer's ``extensions.cost`` says what is left in the
  bucket, and the next page waits until its cost is back; a ``THROTTLED`` answer waits
  and retries the same page.
* WooCommerce: ``/wp-json/wc/v3/orders?after=&page=&per_page=`` until
  ``X-WP-TotalPages``.
* BigCommerce: V2 ``/v2/orders?min_date_created=&page=&limit=`` until an empty page
  (204), each order's products, and its refunds when it has any.

One transaction per page: a page's deliveries and events commit together, and an
interrupted import run again skips what it already stored (same delivery keys).
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import httpx

from afterglow.ingest import bigcommerce, domain, intake, registry_store
from afterglow.ingest.models import PlatformConnection
from afterglow.ingest.platforms import bigcommerce as bc
from afterglow.ingest.platforms import shopify, woocommerce
from afterglow.kit.app import Runtime
from afterglow.kit.errors import NotFound, Unprocessable
from afterglow.kit.outbound import check_destination

log = logging.getLogger(__name__)

PLATFORMS = ("shopify", "woocommerce", "bigcommerce")
SHOPIFY_API_VERSION = "2025-01"
PAGE_SIZE = 50
MAX_PAGES = 10_000  # bounded: a paginator that never ends must not run for ever
MAX_THROTTLE_RETRIES = 10
SOURCE_HEADER = {"x-afterglow-source": "history-import"}

Sleep = Callable[[float], Awaitable[None]]
# One page: (topic, dedupe key, payload) per delivery the page's orders amount to.
Page = list[tuple[str, str, dict[str, Any]]]

# The fields the import reads from Shopify (shopify.shopify_graphql_order maps them).
SHOPIFY_ORDERS_QUERY = """
query HistoryOrders($first: Int!, $after: String, $query: String) {
  orders(first: $first, after: $after, query: $query, sortKey: CREATED_AT) {
    pageInfo { hasNextPage endCursor }
    nodes {
      id
      legacyResourceId
      name
      createdAt
      processedAt
      updatedAt
      cancelledAt
      cancelReason
      email
      phone
      customerLocale
      displayFulfillmentStatus
      discountCodes
      totalPriceSet { shopMoney { amount currencyCode } }
      subtotalPriceSet { shopMoney { amount currencyCode } }
      customer {
        legacyResourceId
        email
        phone
        firstName
        emailMarketingConsent { marketingState }
      }
      shippingAddress { firstName address1 address2 city zip countryCodeV2 phone }
      lineItems(first: 100) {
        nodes {
          sku
          title
          quantity
          originalUnitPriceSet { shopMoney { amount } }
          product { legacyResourceId }
        }
      }
      fulfillments { createdAt trackingInfo { number company } }
      refunds { legacyResourceId createdAt totalRefundedSet { shopMoney { amount currencyCode } } }
    }
  }
}
"""


@dataclass
class ImportResult:
    platform: str
    since: datetime
    earn_points: bool
    pages: int = 0
    orders: int = 0
    new_deliveries: int = 0
    events: int = 0
    failed: int = 0
    throttled_waits: int = 0
    error: str | None = None
    failures: list[str] = field(default_factory=list)

    def body(self) -> dict[str, Any]:
        return {
            "platform": self.platform,
            "since": self.since.isoformat(),
            "earn_points": self.earn_points,
            "pages": self.pages,
            "orders": self.orders,
            "new_deliveries": self.new_deliveries,
            "events": self.events,
            "failed": self.failed,
            "throttled_waits": self.throttled_waits,
            "error": self.error,
            "failures": self.failures[:20],
        }


async def import_history(
    runtime: Runtime,
    tenant_id: str,
    platform: str,
    since: datetime,
    *,
    earn_points: bool = False,
    page_size: int | None = None,
    sleep: Sleep = asyncio.sleep,
) -> ImportResult:
    """Import the orders created since ``since``. A platform error stops the import
    with what was stored so far kept (``error`` says why); running it again resumes.
    Pages are as large as reconciliation's (``ingest_reconcile_page_size``)."""
    if platform not in PLATFORMS:
        raise Unprocessable(f"history import supports {', '.join(PLATFORMS)}", field="platform")
    if since.tzinfo is None:
        raise Unprocessable("since needs a time zone", field="since")
    assert runtime.http is not None
    async with runtime.sessionmaker() as session:
        conn = await registry_store.connection(session, tenant_id, platform)
    if conn is None:
        raise NotFound(f"no {platform} connection for this tenant", field="platform")
    result = ImportResult(platform, since, earn_points)
    settings = runtime.settings
    if page_size is None:
        page_size = getattr(settings, "ingest_reconcile_page_size", PAGE_SIZE)
    try:
        await check_destination(
            conn.api_base_url, allow_private=runtime.settings.outbound_allow_private
        )
        pages = _PAGERS[platform](runtime, conn, since, page_size, sleep, result)
        async for page in pages:
            result.pages += 1
            await _store_page(runtime, tenant_id, platform, page, since, earn_points, result)
    except (httpx.HTTPError, ValueError) as exc:
        result.error = f"{type(exc).__name__}: {exc}"[:500]
        log.warning("history import stopped", extra={"tenant": tenant_id, "error": result.error})
    return result


async def _store_page(
    runtime: Runtime,
    tenant_id: str,
    platform: str,
    page: Page,
    since: datetime,
    earn_points: bool,
    result: ImportResult,
) -> None:
    """A page's deliveries and events in one transaction. An order that cannot be
    normalized is stored as a failed delivery with the reason, and the rest go on."""
    now = runtime.clock.now()
    async with runtime.sessionmaker.begin() as session:
        for topic, dedupe_key, payload in page:
            if topic != "refunds/create":
                result.orders += 1
            body = json.dumps(payload, separators=(",", ":")).encode()
            try:
                normalized = await _normalize(session, tenant_id, platform, topic, payload)
            except domain.NormalizationError as exc:
                result.failed += 1
                result.failures.append(f"{dedupe_key}: {exc}")
                did = await intake.store_delivery(
                    session,
                    tenant_id=tenant_id,
                    platform=platform,
                    topic=topic,
                    dedupe_key=dedupe_key,
                    headers={**SOURCE_HEADER, "x-afterglow-error": str(exc)[:500]},
                    body=body,
                    received_at=now,
                )
                if did:
                    await intake.finish(session, did, "failed", [])
                continue
            normalized.emits = domain.mark_imported(
                normalized.emits, earn_points=earn_points, since=since
            )
            outcome = await intake.accept(
                session,
                runtime.outbox,
                runtime.tables,
                tenant_id=tenant_id,
                platform=platform,
                topic=topic,
                dedupe_key=dedupe_key,
                headers=dict(SOURCE_HEADER),
                body=body,
                normalized=normalized,
                received_at=now,
            )
            if outcome.status != "duplicate":
                result.new_deliveries += 1
                result.events += len(outcome.event_ids)


async def _normalize(
    session: Any, tenant_id: str, platform: str, topic: str, payload: dict[str, Any]
) -> domain.Normalized:
    if platform == "bigcommerce":
        return bc.normalize_bigcommerce_order(
            payload, payload.get("_products") or [], payload.get("_refunds") or []
        )
    return await intake.normalize(session, tenant_id, platform, topic, payload)


# --- Shopify: GraphQL, cursor pages, cost-based throttle -----------------------------


async def _shopify_pages(
    runtime: Runtime,
    conn: PlatformConnection,
    since: datetime,
    page_size: int,
    sleep: Sleep,
    result: ImportResult,
) -> AsyncIterator[Page]:
    assert runtime.http is not None
    url = f"{conn.api_base_url}/admin/api/{SHOPIFY_API_VERSION}/graphql.json"
    headers = {"X-Shopify-Access-Token": conn.access_token}
    # Shopify's search syntax; the date alone is the shop's midnight, so the full time.
    variables: dict[str, Any] = {
        "first": page_size,
        "after": None,
        "query": f"created_at:>='{since.isoformat()}'",
    }
    for _ in range(MAX_PAGES):
        body = await _shopify_query(runtime.http, url, headers, variables, sleep, result)
        orders = ((body.get("data") or {}).get("orders")) or {}
        page: Page = []
        for node in orders.get("nodes") or []:
            page += shopify.shopify_order_deliveries(shopify.shopify_graphql_order(node), "import")
        yield page
        info = orders.get("pageInfo") or {}
        if not info.get("hasNextPage") or not info.get("endCursor"):
            return
        variables = {**variables, "after": info["endCursor"]}
        # Respect the bucket before asking again: the next page costs what this one did.
        cost = shopify.ShopifyCost.of(body)
        wait = cost.wait_s() if cost else 0.0
        if wait > 0:
            result.throttled_waits += 1
            await sleep(wait)


async def _shopify_query(
    http: httpx.AsyncClient,
    url: str,
    headers: dict[str, str],
    variables: dict[str, Any],
    sleep: Sleep,
    result: ImportResult,
) -> dict[str, Any]:
    """One page; a THROTTLED answer waits for the bucket and asks again (bounded)."""
    for _ in range(MAX_THROTTLE_RETRIES):
        resp = await http.post(
            url, json={"query": SHOPIFY_ORDERS_QUERY, "variables": variables}, headers=headers
        )
        resp.raise_for_status()
        body: dict[str, Any] = resp.json()
        if shopify.shopify_throttled(body):
            cost = shopify.ShopifyCost.of(body)
            result.throttled_waits += 1
            await sleep(cost.wait_s() if cost and cost.wait_s() > 0 else 1.0)
            continue
        if body.get("errors"):
            first = body["errors"][0]
            message = first.get("message") if isinstance(first, dict) else str(first)
            raise ValueError(f"Shopify GraphQL error: {message}")
        return body
    raise ValueError(f"Shopify kept answering THROTTLED ({MAX_THROTTLE_RETRIES} tries)")


# --- WooCommerce: REST pages ----------------------------------------------------------


async def _woocommerce_pages(
    runtime: Runtime,
    conn: PlatformConnection,
    since: datetime,
    page_size: int,
    sleep: Sleep,
    result: ImportResult,
) -> AsyncIterator[Page]:
    assert runtime.http is not None
    key, _, secret = conn.access_token.partition(":")
    url = f"{conn.api_base_url}/wp-json/wc/v3/orders"
    for page in range(1, MAX_PAGES + 1):
        resp = await runtime.http.get(
            url,
            params={
                "after": since.replace(tzinfo=None).isoformat(timespec="seconds"),
                "dates_are_gmt": "true",
                "per_page": page_size,
                "page": page,
                "orderby": "date",
                "order": "asc",
            },
            auth=(key, secret),
        )
        resp.raise_for_status()
        orders = resp.json()
        # The webhook's key: an import and a re-sent webhook of the same version meet.
        yield [("order.updated", woocommerce.woo_dedupe_key(o), o) for o in orders]
        if page >= int(resp.headers.get("x-wp-totalpages", "1") or 1) or not orders:
            return


# --- BigCommerce: V2 pages ------------------------------------------------------------


async def _bigcommerce_pages(
    runtime: Runtime,
    conn: PlatformConnection,
    since: datetime,
    page_size: int,
    sleep: Sleep,
    result: ImportResult,
) -> AsyncIterator[Page]:
    assert runtime.http is not None
    headers = {"X-Auth-Token": conn.access_token, "Accept": "application/json"}
    url = f"{conn.api_base_url}/v2/orders"
    for page in range(1, MAX_PAGES + 1):
        resp = await runtime.http.get(
            url,
            params={
                "min_date_created": since.isoformat(),
                "page": page,
                "limit": page_size,
                "sort": "date_created:asc",
            },
            headers=headers,
        )
        resp.raise_for_status()
        # V2 answers an empty page with 204 and no body.
        orders = resp.json() if resp.status_code != 204 and resp.content else []
        if not orders:
            return
        out: Page = []
        for order in orders:
            products = await runtime.http.get(f"{url}/{order.get('id')}/products", headers=headers)
            products.raise_for_status()
            refunds = await bigcommerce.fetch_bigcommerce_refunds(runtime, conn, order)
            payload = {**order, "_products": products.json(), "_refunds": refunds}
            stamp = order.get("date_modified") or order.get("date_created")
            out.append(("store/order/history", f"import:{order.get('id')}@{stamp}", payload))
        yield out
        if len(orders) < page_size:
            return


_PAGERS: dict[
    str,
    Callable[
        [Runtime, PlatformConnection, datetime, int, Sleep, ImportResult], AsyncIterator[Page]
    ],
] = {
    "shopify": _shopify_pages,
    "woocommerce": _woocommerce_pages,
    "bigcommerce": _bigcommerce_pages,
}
