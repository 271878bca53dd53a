"""The demo's client: one tenant's calls to the running services, as a shop and its
customers would make them (admin set-up, signed Shopify webhooks, the helpdesk's events,
the survey page, the public reads the story and the tests assert on)."""

from __future__ import annotations

import asyncio
import base64
import copy
import hashlib
import hmac
import json
import re
import secrets
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Self

import httpx

from afterglow.devstack.demo.compress import SECONDS_PER_DAY, compress_journey
from afterglow.devstack.demo.esp import Received, Receiver


def b64hmac(secret: str, body: bytes) -> str:
    return base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()


def now_iso() -> str:
    return datetime.now(UTC).isoformat()


@dataclass(frozen=True)
class Customer:
    role: str
    id: str  # Shopify's customer id: the subject every service keys the customer by
    name: str
    score: int | None  # the NPS answer given on the survey page; None: never answers
    order_id: int


class ScenarioError(AssertionError):
    """A step of the scenario did not happen in time: the message says which."""


@dataclass
class DemoClient:
    """One demo tenant and its five customers, against running services.

    ``urls`` maps each service to the base URLs of its instances; REST calls go to the
    first instance, key acceptance is awaited on all of them."""

    urls: dict[str, list[str]]
    admin_token: str
    receiver: Receiver
    tenant_id: str = field(default_factory=lambda: f"demo-{uuid.uuid4().hex[:8]}")
    say: Callable[[str], None] = lambda _: None
    timeout: float = 60.0
    # How long a day of the compressed journey lasts (configure).
    seconds_per_day: float = SECONDS_PER_DAY
    shopify_secret: str = field(default_factory=lambda: secrets.token_hex(16))
    key: str = ""
    customers: dict[str, Customer] = field(default_factory=dict)
    journey_definition: dict[str, Any] = field(default_factory=dict)
    _http: httpx.AsyncClient | None = None

    def __post_init__(self) -> None:
        base = int(uuid.uuid4().int % 10**9) * 10
        for i, (role, name, score) in enumerate(
            [
                ("promoter", "Ada", 10),
                ("passive", "Ben", 8),
                ("detractor", "Cleo", 3),
                ("refund", "Eve", None),
                ("friend", "Dan", None),
            ]
        ):
            self.customers[role] = Customer(role, str(base + i), name, score, 5_000_000 + base + i)

    # -- plumbing ---------------------------------------------------------------------

    def url(self, service: str) -> str:
        return self.urls[service][0]

    @property
    def http(self) -> httpx.AsyncClient:
        assert self._http is not None, "use `async with scenario`"
        return self._http

    async def __aenter__(self) -> Self:
        self._http = httpx.AsyncClient(timeout=15)
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._http is not None:
            await self._http.aclose()

    @property
    def auth(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.key}"}

    async def call(
        self,
        method: str,
        service: str,
        path: str,
        *,
        expect: tuple[int, ...] = (200, 201),
        **kw: Any,
    ) -> Any:
        headers = {**self.auth, **kw.pop("headers", {})}
        r = await self.http.request(method, self.url(service) + path, headers=headers, **kw)
        if r.status_code not in expect:
            raise ScenarioError(
                f"{method} {service}{path} answered {r.status_code}: {r.text[:500]}"
            )
        return r.json() if r.content and "json" in r.headers.get("content-type", "") else r.text

    async def until(
        self,
        what: str,
        probe: Callable[[], Any],
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> Any:
        """Poll ``probe`` (sync or async, truthy = done) until it holds; fail naming ``what``."""
        deadline = time.monotonic() + (timeout or self.timeout)
        last: Any = None
        while time.monotonic() < deadline:
            last = probe()
            if asyncio.iscoroutine(last):
                last = await last
            if last:
                return last
            await asyncio.sleep(0.2)
        raise ScenarioError(f"{what}: not within {timeout or self.timeout:.0f}s (last: {last!r})")

    # -- public reads (also what the test asserts on) ----------------------------------------

    async def journey(self, who: str) -> dict[str, Any] | None:
        r = await self.http.get(
            f"{self.url('journeys')}/v1/customers/{self.customers[who].id}/journey",
            headers=self.auth,
        )
        return r.json() if r.status_code == 200 else None

    async def messages(self, who: str) -> list[dict[str, Any]]:
        body = await self.call(
            "GET", "journeys", f"/v1/customers/{self.customers[who].id}/messages"
        )
        return list(body["messages"])

    async def account(self, who: str) -> dict[str, Any] | None:
        r = await self.http.get(
            f"{self.url('loyalty')}/v1/accounts/{self.customers[who].id}", headers=self.auth
        )
        return r.json() if r.status_code == 200 else None

    async def referrals(self, who: str) -> dict[str, Any] | None:
        r = await self.http.get(
            f"{self.url('referrals')}/v1/advocates/{self.customers[who].id}/referrals",
            headers=self.auth,
        )
        return r.json() if r.status_code == 200 else None

    async def nps(self) -> dict[str, Any]:
        return dict(await self.call("GET", "feedback", "/v1/metrics/nps"))

    async def referral_metrics(self) -> dict[str, Any]:
        return dict(await self.call("GET", "referrals", "/v1/metrics"))

    # -- set-up ------------------------------------------------------------------------------

    async def register_tenant(self) -> None:
        admin = {"Authorization": f"Bearer {self.admin_token}"}
        ingest = self.url("ingest")
        r = await self.http.post(
            f"{ingest}/admin/tenants",
            headers=admin,
            json={
                "tenant_id": self.tenant_id,
                "name": "Afterglow Demo Shop",
                "shopify_shop_domain": self.shop_domain,
            },
        )
        if r.status_code != 201:
            raise ScenarioError(f"registering the tenant answered {r.status_code}: {r.text}")
        # The merchant pastes the Shopify app's secret.
        r = await self.http.post(
            f"{ingest}/admin/tenants/{self.tenant_id}/secrets/shopify",
            headers=admin,
            json={"secret": self.shopify_secret},
        )
        if r.status_code != 201:
            raise ScenarioError(f"setting the Shopify secret answered {r.status_code}: {r.text}")
        r = await self.http.post(
            f"{ingest}/admin/tenants/{self.tenant_id}/api-keys",
            headers=admin,
            json={"scopes": ["*"]},
        )
        if r.status_code != 201:
            raise ScenarioError(f"issuing an API key answered {r.status_code}: {r.text}")
        self.key = r.json()["key"]
        # Every service learns the key from tenant.api_key_issued; wait until each
        # instance of each accepts it.
        probes = {
            "journeys": "/v1/journeys",
            "feedback": "/v1/settings",
            "loyalty": "/v1/rules",
            "referrals": "/v1/settings",
        }
        for service, path in probes.items():
            for base in self.urls.get(service, []):

                async def accepted(base: str = base, path: str = path) -> bool:
                    r = await self.http.get(base + path, headers=self.auth)
                    return r.status_code not in (401, 403)

                await self.until(f"{service} at {base} to accept the new API key", accepted, 30)
        self.say(f"tenant {self.tenant_id} registered; its API key is known to every service")

    @property
    def shop_domain(self) -> str:
        return f"{self.tenant_id}.myshopify.com"

    async def configure(self) -> None:
        await self.call(
            "PUT",
            "journeys",
            "/v1/messaging/endpoint",
            json={"url": self.receiver.url, "secret": self.receiver.secret},
        )
        # The demo shop messages at any hour and does not cap a five-message journey.
        await self.call(
            "PUT",
            "journeys",
            "/v1/messaging/settings",
            json={
                "quiet_hours_start": "00:00",
                "quiet_hours_end": "00:00",
                "frequency_cap": 20,
                "shop_name": "Afterglow Demo Shop",
            },
        )
        # A compressed copy of the tenant's default journey: the same stages, conditions
        # and actions, with days turned into seconds.
        default = await self.call("GET", "journeys", "/v1/journeys/default")
        self.journey_definition = compress_journey(default["definition"], self.seconds_per_day)
        await self.call("PUT", "journeys", "/v1/journeys/default", json=self.journey_definition)
        await self.call("POST", "journeys", "/v1/journeys/default/activate", json={})
        # Points become available as soon as an order is fulfilled (return window 0).
        rules = await self.call("GET", "loyalty", "/v1/rules")
        rules = copy.deepcopy(rules.get("rules", rules))
        for k in ("version", "updated_at", "tenant_id"):
            rules.pop(k, None)
        rules["return_window_days"] = 0
        await self.call("PUT", "loyalty", "/v1/rules", json=rules)
        # ... and a referral is confirmed as soon as the friend's order ships.
        await self.call(
            "PUT", "referrals", "/v1/settings", json={"return_window_days": 0}, expect=(200,)
        )
        await self.call(
            "PUT", "feedback", "/v1/settings", json={"name": "Afterglow Demo Shop"}, expect=(200,)
        )
        self.say("messaging endpoint, compressed journey, loyalty rules and shop name are set")

    # -- Shopify --------------------------------------------------------------------------

    async def shopify(self, topic: str, payload: dict[str, Any]) -> None:
        raw = json.dumps(payload).encode()
        r = await self.http.post(
            f"{self.url('ingest')}/webhooks/shopify",
            content=raw,
            headers={
                "Content-Type": "application/json",
                "X-Shopify-Topic": topic,
                "X-Shopify-Shop-Domain": self.shop_domain,
                "X-Shopify-Webhook-Id": str(uuid.uuid4()),
                "X-Shopify-Hmac-Sha256": b64hmac(self.shopify_secret, raw),
                "X-Shopify-API-Version": "2025-01",
            },
        )
        if r.status_code >= 300:
            raise ScenarioError(f"Shopify {topic} answered {r.status_code}: {r.text}")

    async def place_order(self, who: str, *, ref: str | None = None) -> None:
        c = self.customers[who]
        i = int(c.id) % 1000
        payload: dict[str, Any] = {
            "id": c.order_id,
            "name": f"#{c.order_id % 100000}",
            "email": f"{c.name.lower()}.{c.id}@example.com",
            "created_at": now_iso(),
            "currency": "USD",
            "total_price": "80.00",
            "subtotal_price": "80.00",
            "customer_locale": "en",
            "customer": {
                "id": int(c.id),
                "email": f"{c.name.lower()}.{c.id}@example.com",
                "first_name": c.name,
                "orders_count": 1,
                "accepts_marketing": True,
            },
            "shipping_address": {
                "first_name": c.name,
                "address1": f"{i} {c.name} Street",
                "city": "Springfield",
                "zip": f"{10000 + i}",
                "country_code": "US",
            },
            "line_items": [
                {"sku": "MUG-1", "product_id": 42, "title": "Mug", "quantity": 2, "price": "40.00"}
            ],
            "discount_codes": [{"code": ref, "amount": "0.00", "type": "fixed_amount"}]
            if ref
            else [],
            "landing_site": f"/?ref={ref}" if ref else "/",
        }
        await self.shopify("orders/create", payload)
        self.say(
            f"{c.name} ({c.role}) placed order {c.order_id}" + (f" with code {ref}" if ref else "")
        )

    async def fulfil_and_deliver(self, who: str) -> None:
        c = self.customers[who]
        fulfilment = {
            "id": c.order_id + 7,
            "order_id": c.order_id,
            "created_at": now_iso(),
            "updated_at": now_iso(),
            "status": "success",
            "tracking_company": "UPS",
            "tracking_number": f"1Z{c.order_id}",
        }
        await self.shopify("fulfillments/create", fulfilment)
        await self.shopify(
            "fulfillments/update",
            {**fulfilment, "shipment_status": "delivered", "updated_at": now_iso()},
        )
        self.say(f"{c.name}'s order was fulfilled and delivered")

    async def refund(self, who: str) -> None:
        c = self.customers[who]
        await self.shopify(
            "refunds/create",
            {
                "id": c.order_id + 9,
                "order_id": c.order_id,
                "created_at": now_iso(),
                "processed_at": now_iso(),
                "transactions": [
                    {"kind": "refund", "status": "success", "amount": "80.00", "currency": "USD"}
                ],
            },
        )
        self.say(f"{c.name}'s order was refunded in full")

    async def ticket(self, who: str, kind: str, ticket_id: str) -> None:
        c = self.customers[who]
        data: dict[str, Any] = {"ticket_id": ticket_id}
        if kind == "ticket.opened":
            data |= {
                "helpdesk": "zendesk",
                "opened_at": now_iso(),
                "subject": "Following up on your survey answer",
                "order_id": f"shopify:{c.order_id}",
            }
        else:
            data |= {"resolved_at": now_iso()}
        await self.call(
            "POST",
            "ingest",
            "/v1/support-events",
            json={"type": kind, "customer_id": c.id, "data": data},
            headers={"Idempotency-Key": f"{ticket_id}:{kind}"},
        )
        self.say(f"helpdesk: {kind} {ticket_id} for {c.name}")

    # -- the customer's side -----------------------------------------------------------------

    async def message(
        self,
        who: str,
        kind: str,
        timeout: float | None = None,  # noqa: ASYNC109
    ) -> Received:
        c = self.customers[who]
        found = await self.until(
            f"{kind} message to {c.name} ({c.role}) at the receiver",
            lambda: self.receiver.of(c.id, kind),
            timeout,
        )
        return found[0]

    async def answer_survey(self, who: str) -> None:
        c = self.customers[who]
        invite = await self.message(who, "survey_invite")
        m = re.search(r"https?://\S+/s/[A-Za-z0-9_.=\-]+", invite.text)
        if not m:
            raise ScenarioError(f"no survey link in the survey invite to {c.name}: {invite.text!r}")
        link = m.group(0).rstrip(".)")
        page = await self.http.get(link)
        if page.status_code != 200 or 'name="score"' not in page.text:
            raise ScenarioError(
                f"survey page {link} answered {page.status_code}: {page.text[:300]}"
            )
        # A browser posts the form back to its action (the same path), form-encoded.
        answer = await self.http.post(
            link, data={"score": str(c.score), "comment": f"{c.name} says {c.score}"}
        )
        if answer.status_code != 200:
            raise ScenarioError(
                f"posting {c.name}'s answer answered {answer.status_code}: {answer.text[:300]}"
            )
        self.say(f"{c.name} answered the survey on its page: {c.score}")
