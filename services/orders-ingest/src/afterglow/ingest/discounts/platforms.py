"""The platform calls for reward codes: find, create, disable, per platform.

Every call goes through the outbound guard (``check_destination``: no private address
unless the operator allows it) before it is made, since a stored API base may resolve
elsewhere later; the caller bounds each call with a timeout. An error is a
:class:`~afterglow.ingest.discounts.domain.PlatformError` saying whether a retry can
help.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable
from typing import Any

import httpx

from afterglow.ingest.discounts import domain
from afterglow.ingest.discounts.domain import Discount, PlatformError, ShopBucket
from afterglow.ingest.models import PlatformConnection
from afterglow.ingest.platforms.shopify import shopify_throttled
from afterglow.ingest.reconcile import SHOPIFY_API_VERSION
from afterglow.kit.outbound import ForbiddenDestination, check_destination

log = logging.getLogger(__name__)

# THROTTLED answers one call may wait out before it counts as a failed attempt.
MAX_THROTTLED = 5

Sleep = Callable[[float], Awaitable[None]]


class Shops:
    """The platform calls of one process: its HTTP client, the outbound rule, and each
    Shopify shop's cost bucket (keyed by tenant), shared by every call to that shop."""

    def __init__(
        self, http: httpx.AsyncClient, *, allow_private: bool, sleep: Sleep = asyncio.sleep
    ) -> None:
        self.http = http
        self.allow_private = allow_private
        self.sleep = sleep
        self.buckets: dict[str, ShopBucket] = {}

    async def _guard(self, conn: PlatformConnection) -> None:
        try:
            await check_destination(conn.api_base_url, allow_private=self.allow_private)
        except ForbiddenDestination as exc:
            raise PlatformError(f"api_base_url {exc}", permanent=True) from exc

    # --- the three operations, whatever the platform ----------------------------------

    async def find(self, conn: PlatformConnection, d: Discount) -> str | None:
        await self._guard(conn)
        if conn.platform == "shopify":
            body = await self._shopify(conn, domain.SHOPIFY_FIND, {"code": d.code})
            return domain.shopify_node_id(body, "codeDiscountNodeByCode")
        if conn.platform == "woocommerce":
            resp = await self._send(conn, "GET", "/wp-json/wc/v3/coupons", params={"code": d.code})
            found = [c for c in _list(resp) if str(c.get("code", "")).upper() == d.code]
            return str(found[0]["id"]) if found else None
        resp = await self._send(conn, "GET", "/v2/coupons", params={"code": d.code})
        found = [c for c in _list(resp) if str(c.get("code", "")).upper() == d.code]
        return str(found[0]["id"]) if found else None

    async def create(self, conn: PlatformConnection, d: Discount) -> str:
        """The platform's id of the new discount. A code the shop already holds (our
        earlier attempt, whose answer was lost) is found and adopted."""
        await self._guard(conn)
        if conn.platform == "shopify":
            return await self._shopify_create(conn, d)
        if conn.platform == "woocommerce":
            email = await self._woo_email(conn, d.customer_id)
            resp = await self._send(
                conn, "POST", "/wp-json/wc/v3/coupons", json=domain.woo_coupon(d, email)
            )
            if resp.status_code == 400 and "coupon_code_already_exists" in resp.text:
                return await self._adopt(conn, d)
            return str(_ok(resp).json()["id"])
        resp = await self._send(conn, "POST", "/v2/coupons", json=domain.bigcommerce_coupon(d))
        if resp.status_code == 409:  # "The coupon code ... is a duplicate"
            return await self._adopt(conn, d)
        return str(_ok(resp).json()["id"])

    async def disable(self, conn: PlatformConnection, d: Discount) -> None:
        await self._guard(conn)
        pid = d.platform_discount_id or await self.find(conn, d)
        if pid is None:
            return  # never reached the shop: nothing to disable
        if conn.platform == "shopify":
            body = await self._shopify(conn, domain.SHOPIFY_DEACTIVATE, {"id": pid})
            errors = domain.shopify_user_errors(body, "discountCodeDeactivate")
            if errors:
                raise PlatformError(f"Shopify refused: {_messages(errors)}", permanent=True)
        elif conn.platform == "woocommerce":
            # A coupon has no disabled state: deleting it is how WooCommerce withdraws one.
            resp = await self._send(
                conn, "DELETE", f"/wp-json/wc/v3/coupons/{pid}", params={"force": "true"}
            )
            if resp.status_code != 404:
                _ok(resp)
        else:
            resp = await self._send(conn, "PUT", f"/v2/coupons/{pid}", json={"enabled": False})
            if resp.status_code != 404:
                _ok(resp)

    async def _adopt(self, conn: PlatformConnection, d: Discount) -> str:
        pid = await self.find(conn, d)
        if pid is None:
            raise PlatformError("the shop says the code exists but cannot find it", permanent=False)
        return pid

    # --- Shopify ----------------------------------------------------------------------

    async def _shopify_create(self, conn: PlatformConnection, d: Discount) -> str:
        document, mutation, variables = domain.shopify_create(d)
        body = await self._shopify(conn, document, variables)
        errors = domain.shopify_user_errors(body, mutation)
        if domain.shopify_code_taken(errors):
            return await self._adopt(conn, d)
        if errors:
            raise PlatformError(f"Shopify refused: {_messages(errors)}", permanent=True)
        pid = domain.shopify_node_id(body, mutation)
        if pid is None:
            raise PlatformError("Shopify answered without a discount id", permanent=False)
        return pid

    async def _shopify(
        self, conn: PlatformConnection, document: str, variables: dict[str, Any]
    ) -> dict[str, Any]:
        """One GraphQL call within the shop's cost bucket; THROTTLED waits and asks again."""
        bucket = self.buckets.setdefault(conn.tenant_id, ShopBucket())
        url = f"{conn.api_base_url}/admin/api/{SHOPIFY_API_VERSION}/graphql.json"
        headers = {"X-Shopify-Access-Token": conn.access_token}
        for _ in range(MAX_THROTTLED):
            wait = bucket.wait_s(domain.SHOPIFY_MUTATION_COST)
            if wait > 0:
                await self.sleep(wait)
            try:
                resp = await self.http.post(
                    url, json={"query": document, "variables": variables}, headers=headers
                )
            except httpx.HTTPError as exc:
                raise PlatformError(f"{type(exc).__name__}: {exc}", permanent=False) from exc
            body = _ok(resp).json()
            bucket.observe(body)
            if shopify_throttled(body):
                log.info("Shopify throttled a discount call", extra={"tenant": conn.tenant_id})
                # The answer's bucket says how long the call's cost takes to come back.
                await self.sleep(max(bucket.wait_s(domain.SHOPIFY_MUTATION_COST), 0.05))
                continue
            if body.get("errors"):
                raise PlatformError(
                    f"Shopify GraphQL error: {_messages(body['errors'])}", permanent=True
                )
            return dict(body)
        raise PlatformError(f"Shopify answered THROTTLED {MAX_THROTTLED} times", permanent=False)

    # --- WooCommerce and BigCommerce --------------------------------------------------

    async def _woo_email(self, conn: PlatformConnection, customer_id: str) -> str | None:
        """The customer's email for ``email_restrictions``, read from the store (ingest
        keeps only its hash). A guest (subject not a store customer id) has none."""
        if not customer_id.isdigit():
            return None
        resp = await self._send(conn, "GET", f"/wp-json/wc/v3/customers/{customer_id}")
        if resp.status_code == 404:
            return None
        email = _ok(resp).json().get("email")
        return str(email) if email else None

    async def _send(
        self,
        conn: PlatformConnection,
        method: str,
        path: str,
        *,
        params: dict[str, str] | None = None,
        json: dict[str, Any] | None = None,
    ) -> httpx.Response:
        if conn.platform == "woocommerce":
            key, _, secret = conn.access_token.partition(":")
            auth: Any = (key, secret)
            headers = {"Accept": "application/json"}
        else:
            auth = None
            headers = {"X-Auth-Token": conn.access_token, "Accept": "application/json"}
        try:
            return await self.http.request(
                method,
                f"{conn.api_base_url}{path}",
                params=params,
                json=json,
                headers=headers,
                auth=auth,
            )
        except httpx.HTTPError as exc:
            raise PlatformError(f"{type(exc).__name__}: {exc}", permanent=False) from exc


def _ok(resp: httpx.Response) -> httpx.Response:
    """The response, or the PlatformError its status means: 429 and 5xx are worth a
    retry (429 after the wait the platform names); other 4xx are not (bad credentials
    or a refused body stay so until someone fixes them)."""
    if resp.status_code < 400:
        return resp
    detail = f"HTTP {resp.status_code}: {resp.text[:300]}"
    if resp.status_code == 429:
        raise PlatformError(
            detail, permanent=False, retry_after_s=domain.retry_after_s(resp.headers)
        )
    raise PlatformError(detail, permanent=resp.status_code < 500 and resp.status_code != 408)


def _list(resp: httpx.Response) -> list[dict[str, Any]]:
    if resp.status_code == 204:  # BigCommerce V2: nothing matched
        return []
    data = _ok(resp).json()
    return [c for c in data if isinstance(c, dict)] if isinstance(data, list) else []


def _messages(errors: Any) -> str:
    return "; ".join(str(e.get("message") if isinstance(e, dict) else e) for e in errors if e)[:400]
