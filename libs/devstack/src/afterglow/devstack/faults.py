"""The fault suite's and the soak's driver (signed webhooks at a steady rate) and checker
(public APIs).

The driver sends ``orders/create`` webhooks as Shopify does: one webhook id per order,
resent after any answer that is not 2xx or no answer at all, for as long as it takes.
An order counts as accepted when one of its deliveries was answered 2xx.

The checker reconciles each accepted order through every service's customer export
(the public ``/v1/customers/{id}/export``): exactly one order in ingest, one journey
instance and one welcome message in journeys, one points lot for the order in loyalty (a
first order also earns a first-order bonus lot, a cause of its own), one survey in
feedback; and no message kind (welcome, check-in, ...) twice in journeys, which is how a
timer fired twice shows. Each order is a new customer, so "one per customer" is "one per
order". Zero is a loss, two a double.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from afterglow.devstack.demo import Scenario, b64hmac, now_iso
from afterglow.kit.export import ExportIncomplete, gather_exports

ADMIN_TOKEN = "faults-admin-token"  # noqa: S105 (the suite's own stack, a test token)
# effect -> (service, table of its export, which rows are "the" effect of an order)
EFFECTS: dict[str, tuple[str, str, Callable[[dict[str, Any]], bool]]] = {
    "order": ("ingest", "orders", lambda row: True),
    "journey": ("journeys", "journey_instances", lambda row: True),
    "welcome": ("journeys", "messages", lambda row: row.get("kind") == "welcome"),
    "points": ("loyalty", "lots", lambda row: row.get("source") == "order"),
    "survey": ("feedback", "surveys", lambda row: True),
}


# counts' key for the most messages of one kind a customer got (only a double counts).
SAME_KIND = "most of one message kind"


@dataclass
class Order:
    customer: str
    order_id: int
    fault: str
    webhook_id: str = field(default_factory=lambda: str(uuid.uuid4()))
    attempts: int = 0
    non_2xx: Counter[int] = field(default_factory=Counter)  # status -> answers
    accepted_at: float | None = None
    complete_at: float | None = None
    counts: dict[str, int] = field(default_factory=dict)


@dataclass
class Fault:
    name: str
    began: float = 0.0  # the driving before the fault started
    started: float = 0.0
    ended: float = 0.0
    finished: float = 0.0  # its orders complete everywhere (or given up on)
    # service -> the first reason its /readyz gave for a 503 during the fault
    unready: dict[str, str] = field(default_factory=dict)


async def sample_readiness(
    http: httpx.AsyncClient, urls: dict[str, str], fault: Fault, stop: asyncio.Event
) -> None:
    """Poll every service's /readyz each second and keep the first 503 reason of each."""
    while not stop.is_set():
        for name, url in urls.items():
            try:
                r = await http.get(f"{url}/readyz", timeout=3)
            except httpx.HTTPError:
                continue  # the process is down: nothing to say
            if r.status_code == 503 and name not in fault.unready:
                fault.unready[name] = _reason(r.json().get("checks", {}))
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(1):
                await stop.wait()


def _reason(checks: dict[str, Any]) -> str:
    for check, value in checks.items():
        if isinstance(value, str) and value != "ok":
            return f"{check}: {value}"
        if isinstance(value, dict) and value.get("status") != "ok":
            problems = value.get("problems") or []
            return f"{check}: {value.get('status')}" + (f" ({problems[0]})" if problems else "")
    return "?"


class Driver:
    """Places orders at ``rate`` per second while ``drive`` runs."""

    def __init__(self, scenario: Scenario, rate: float) -> None:
        self.sc = scenario
        self.rate = rate
        self.orders: list[Order] = []
        self._tasks: set[asyncio.Task[None]] = set()
        self._base = int(uuid.uuid4().int % 10**8) * 100

    @contextlib.asynccontextmanager
    async def drive(self, fault: str) -> AsyncIterator[None]:
        loop = asyncio.create_task(self._loop(fault))
        try:
            yield
        finally:
            loop.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await loop

    async def _loop(self, fault: str) -> None:
        while True:
            n = len(self.orders)
            order = Order(str(self._base + n), 9_000_000_000 + self._base + n, fault)
            self.orders.append(order)
            task = asyncio.create_task(self._deliver(order))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)
            await asyncio.sleep(1 / self.rate)

    async def settle(self, timeout: float = 300) -> None:  # noqa: ASYNC109
        """Wait for every order's delivery to be answered 2xx (Shopify retries for hours)."""
        async with asyncio.timeout(timeout):
            while self._tasks:
                await asyncio.gather(*list(self._tasks))

    async def _deliver(self, order: Order) -> None:
        """The order's placement, then (as a shop ships it) its fulfilment and delivery,
        which start the journey's check-in and survey waits."""
        payload = {
            "id": order.order_id,
            "name": f"#{order.order_id % 1_000_000}",
            "email": f"c{order.customer}@example.com",
            "created_at": now_iso(),
            "currency": "USD",
            "total_price": "50.00",
            "subtotal_price": "50.00",
            "customer": {
                "id": int(order.customer),
                "email": f"c{order.customer}@example.com",
                "first_name": "Fay",
                "orders_count": 1,
                "accepts_marketing": True,
            },
            "line_items": [
                {"sku": "MUG-1", "product_id": 42, "title": "Mug", "quantity": 1, "price": "50.00"}
            ],
        }
        await self._send(order, "orders/create", payload, order.webhook_id)
        order.accepted_at = time.monotonic()
        fulfilment = {
            "id": order.order_id + 7,
            "order_id": order.order_id,
            "created_at": now_iso(),
            "updated_at": now_iso(),
            "status": "success",
            "tracking_company": "UPS",
            "tracking_number": f"1Z{order.order_id}",
        }
        await self._send(order, "fulfillments/create", fulfilment, str(uuid.uuid4()))
        delivered = {**fulfilment, "shipment_status": "delivered", "updated_at": now_iso()}
        await self._send(order, "fulfillments/update", delivered, str(uuid.uuid4()))

    async def _send(self, order: Order, topic: str, payload: Any, webhook_id: str) -> None:
        """One webhook, resent as Shopify does until it is answered 2xx."""
        raw = json.dumps(payload).encode()
        headers = {
            "Content-Type": "application/json",
            "X-Shopify-Topic": topic,
            "X-Shopify-Shop-Domain": self.sc.shop_domain,
            "X-Shopify-Webhook-Id": webhook_id,
            "X-Shopify-Hmac-Sha256": b64hmac(self.sc.shopify_secret, raw),
            "X-Shopify-API-Version": "2025-01",
        }
        backoff = 0.5
        while True:
            order.attempts += 1
            try:
                r = await self.sc.http.post(
                    f"{self.sc.url('ingest')}/webhooks/shopify", content=raw, headers=headers
                )
                if 200 <= r.status_code < 300:
                    return
                order.non_2xx[r.status_code] += 1
            except httpx.HTTPError:
                pass  # the process is down: Shopify retries, so do we
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, 5)


class Checker:
    """Reconciles accepted orders through the services' public exports."""

    def __init__(self, scenario: Scenario, earliest_complete_s: float = 0.0) -> None:
        self.sc = scenario
        self.urls = {service: scenario.url(service) for service, _, _ in EFFECTS.values()}
        # No order can be complete sooner after it was accepted (the survey waits its
        # journey's days): ``watch`` does not ask about it before.
        self.earliest_complete_s = earliest_complete_s

    async def counts(self, order: Order) -> dict[str, int] | None:
        try:
            merged = await gather_exports(self.sc.http, self.urls, self.sc.key, order.customer)
        except (ExportIncomplete, httpx.HTTPError):
            return None  # a service is down: ask again later
        counts = {
            name: sum(1 for row in merged["services"][service].get(table, []) if effect(row))
            for name, (service, table, effect) in EFFECTS.items()
        }
        # Each message of the journey (welcome, check-in, ...) is sent once per order: a
        # timer fired twice (a clock jump, a redelivery) shows as a kind counted twice.
        kinds = Counter(
            row.get("kind") for row in merged["services"]["journeys"].get("messages", [])
        )
        counts[SAME_KIND] = max(kinds.values(), default=0)
        return counts

    async def _note_complete(self, orders: list[Order]) -> list[Order]:
        """Check orders (a few at a time); stamp the complete ones; return the others."""
        gate = asyncio.Semaphore(16)

        async def one(order: Order) -> bool:
            async with gate:
                counts = await self.counts(order)
            if counts and all(counts[name] >= 1 for name in EFFECTS):
                order.complete_at = order.complete_at or time.monotonic()
                return True
            return False

        done = await asyncio.gather(*(one(o) for o in orders))
        return [o for o, ok in zip(orders, done, strict=True) if not ok]

    async def watch(self, orders: list[Order], stop: asyncio.Event) -> None:
        """Note when each accepted order is first complete (for time-to-recover), once a
        second: every round asks five services per order in flight, on the same cores."""
        while not stop.is_set():
            ripe = time.monotonic() - self.earliest_complete_s
            await self._note_complete(
                [o for o in orders if o.accepted_at and o.accepted_at <= ripe and not o.complete_at]
            )
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout(1):
                    await stop.wait()

    @staticmethod
    async def until_watched(orders: list[Order], timeout: float) -> list[Order]:  # noqa: ASYNC109
        """Wait (boundedly) until ``watch`` has seen every accepted order of ``orders``
        complete; returns those it has not. Asks no service itself: polling the same
        orders next to the watcher doubled the load of the checker."""
        deadline = time.monotonic() + timeout
        pending = [o for o in orders if o.accepted_at and not o.complete_at]
        while pending and time.monotonic() < deadline:
            await asyncio.sleep(0.2)
            pending = [o for o in pending if not o.complete_at]
        return pending

    async def final(self, orders: list[Order], timeout: float) -> None:  # noqa: ASYNC109
        """Count every accepted order once, and again (boundedly) those not complete
        yet: one pass over all orders, where waiting for completion and then counting
        asked every service about every order twice."""
        gate = asyncio.Semaphore(16)

        async def count(order: Order) -> bool:
            async with gate:
                order.counts = await self.counts(order) or {}
            return bool(order.counts) and all(order.counts[name] >= 1 for name in EFFECTS)

        deadline = time.monotonic() + timeout
        pending = [o for o in orders if o.accepted_at]
        while pending:
            done = await asyncio.gather(*(count(o) for o in pending))
            pending = [o for o, ok in zip(pending, done, strict=True) if not ok]
            if not pending or time.monotonic() > deadline:
                return
            await asyncio.sleep(0.5)


def report(orders: list[Order], faults: list[Fault]) -> tuple[list[str], list[str]]:
    """Lines of the per-fault table, and the failures (any loss or double)."""
    lines = [
        f"{'fault':<24} {'accepted':>8} {'lost':>5} {'doubled':>7} {'fault_s':>7} "
        f"{'recover_s':>9} {'total_s':>7}  answers not 2xx (sender retried)"
    ]
    failures = []
    for fault in faults:
        mine = [o for o in orders if o.fault == fault.name and o.accepted_at]
        lost = [o for o in mine if not o.counts or min(o.counts[k] for k in EFFECTS) == 0]
        doubled = [o for o in mine if o.counts and max(o.counts.values()) > 1]
        done = [o.complete_at for o in mine if o.complete_at]
        recover = max(0.0, max(done) - fault.ended) if done else float("nan")
        non_2xx = sum((o.non_2xx for o in mine), Counter[int]())
        lines.append(
            f"{fault.name:<24} {len(mine):>8} {len(lost):>5} {len(doubled):>7} "
            f"{fault.ended - fault.started:>7.1f} {recover:>9.1f} "
            f"{fault.finished - fault.began:>7.1f}  {dict(non_2xx) or '-'}"
        )
        for service, reason in sorted(fault.unready.items()):
            lines.append(f"{'':<24} /readyz 503 at {service}: {reason[:150]}")
        # A signed webhook is never answered 500: an outage is a 503 with Retry-After.
        errors = {status: n for status, n in non_2xx.items() if status >= 500 and status != 503}
        if errors:
            failures.append(f"{fault.name}: webhooks answered {errors} (only 503 may be)")
        for o in lost[:5]:
            failures.append(f"{fault.name}: order {o.order_id} lost: {o.counts}")
        for o in doubled[:5]:
            failures.append(f"{fault.name}: order {o.order_id} doubled: {o.counts}")
    unaccepted = [o for o in orders if not o.accepted_at]
    if unaccepted:
        failures.append(f"{len(unaccepted)} webhooks never answered 2xx")
    return lines, failures
