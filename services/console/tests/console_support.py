"""Every service as a real process on the real stack, and a seeded tenant.

The console owns no business data, so its tests need the services it reads: they all
run here as uvicorn processes (as under ``make dev``), in one pytest process of their
own (``afterglow.devstack.suite.ISOLATED``), and the tenant's data is put in through
the services' public APIs. Figures asserted on the pages are the hand-computed ones of
ingest's metric test (same book of orders)."""

from __future__ import annotations

import contextlib
import re
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from afterglow.devstack.demo import FAST_ENV
from afterglow.devstack.services import RunningServices, running_services
from afterglow.devstack.stack import Stack
from afterglow.events.testing import eventually

ADMIN_TOKEN = "console-tests-admin-token"
ADMIN = {"Authorization": f"Bearer {ADMIN_TOKEN}"}
PERIOD = {"from": "2026-01-01", "to": "2026-03-31"}

READ_SCOPES = [
    "console:read",
    "orders:read",
    "feedback:read",
    "loyalty:read",
    "journeys:read",
    "referrals:read",
    "messages:read",
    "customers:export",
    "dlq:read",
]
WRITE_SCOPES = [
    *READ_SCOPES,
    "console:write",
    "feedback:write",
    "journeys:write",
    "loyalty:write",
    "referrals:write",
    "messages:write",
    "dlq:write",
]
# Customer "a" gives this email at every shop (each tenant's tests look it up): typed as
# a person would, it must find this shop's "a" only.
EMAIL_OF_A = "ada.lovelace@example.com"

# (customer, order id, placed_at, total in cents): the book of ingest's metric test.
BOOK = [
    ("d", "o-d1", "2025-12-15T10:00:00Z", 4000),
    ("a", "o-a1", "2026-01-05T09:00:00Z", 10000),
    ("b", "o-b1", "2026-01-20T23:30:00Z", 20000),
    ("c", "o-c1", "2026-02-03T08:00:00Z", 3000),
    ("a", "o-a2", "2026-02-10T12:00:00Z", 5000),
    ("c", "o-c2", "2026-02-25T12:00:00Z", 7000),
    ("d", "o-d2", "2026-03-01T00:00:00Z", 6000),
    ("a", "o-a3", "2026-03-20T18:00:00Z", 2000),
]
# NPS answers in the period: two promoters and a detractor, NPS (2 - 1) / 3 = 33.3.
ANSWERS = [
    ("a", 10, "2026-02-02T10:00:00Z"),
    ("b", 6, "2026-02-03T10:00:00Z"),
    ("c", 9, "2026-03-02T10:00:00Z"),
]
# One spam signal (a link) holds a review for a person to look at.
HELD_REVIEW = {"rating": 4, "title": "Sturdy tent", "body": "Photos at https://example.com/tent"}


@pytest.fixture(scope="session")
def services(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServices]:
    logs = tmp_path_factory.mktemp("console-logs")
    with running_services(
        stack,
        logs,
        extra_env={**FAST_ENV, "INGEST_ADMIN_TOKEN": ADMIN_TOKEN},
        ready_timeout=300,
    ) as svc:
        yield svc


@dataclass
class Tenant:
    id: str
    urls: dict[str, str]
    keys: dict[str, str] = field(default_factory=dict)
    customers: dict[str, str] = field(default_factory=dict)  # role -> customer id
    review_id: str = ""

    def customer(self, role: str) -> str:
        return self.customers.setdefault(role, f"{role}-{uuid.uuid4().hex[:8]}")

    def auth(self, key: str = "seeder") -> dict[str, str]:
        return {"Authorization": f"Bearer {self.keys[key]}"}


async def new_tenant(http: httpx.AsyncClient, svc: RunningServices) -> Tenant:
    t = Tenant(f"t-{uuid.uuid4().hex[:12]}", {n: svc.url(n) for n in svc.processes})
    r = await http.post(
        t.urls["ingest"] + "/admin/tenants", headers=ADMIN, json={"tenant_id": t.id, "name": "Shop"}
    )
    assert r.status_code == 201, r.text
    for name, scopes in (
        ("seeder", ["*"]),  # puts the data in through the services' own APIs
        ("writer", WRITE_SCOPES),
        ("reader", READ_SCOPES),
        ("no_console", [s for s in READ_SCOPES if not s.startswith("console:")]),
    ):
        r = await http.post(
            f"{t.urls['ingest']}/admin/tenants/{t.id}/api-keys",
            headers=ADMIN,
            json={"scopes": scopes},
        )
        assert r.status_code == 201, r.text
        t.keys[name] = r.json()["key"]
    # A key is announced as an event: wait until every service (the console included)
    # has it before using it.
    for name, url in t.urls.items():
        if name == "console":
            continue  # it serves no API; signed_in waits for it

        async def answered(url: str = url) -> int:
            probe = url + "/v1/customers/nobody/export"
            return (await http.get(probe, headers=t.auth("reader"))).status_code

        await eventually(answered, lambda s: s != 401, timeout=120)
    return t


async def seed(http: httpx.AsyncClient, t: Tenant) -> Tenant:
    """The book of orders, three NPS answers and one review held for moderation."""
    for role, oid, at, total in BOOK:
        r = await http.post(
            t.urls["ingest"] + "/v1/orders",
            headers={**t.auth(), "Idempotency-Key": oid},
            json={
                "type": "order.placed",
                "customer_id": t.customer(role),
                "data": {
                    "order_id": oid,
                    "platform": "api",
                    "placed_at": at,
                    # "a" said no to marketing: a marketing message to her is suppressed.
                    "customer": {"email": EMAIL_OF_A, "accepts_marketing": False}
                    if role == "a"
                    else {},
                    "total": {"amount": total, "currency": "USD"},
                },
            },
        )
        assert r.status_code == 201, r.text
    for role, score, at in ANSWERS:
        r = await http.post(
            t.urls["feedback"] + "/v1/survey-responses",
            headers=t.auth(),
            json={
                "external_id": f"nps-{role}",
                "customer_id": t.customer(role),
                "kind": "nps",
                "score": score,
                "responded_at": at,
            },
        )
        assert r.status_code == 201, r.text
    r = await http.post(
        t.urls["feedback"] + "/v1/reviews",
        headers=t.auth(),
        json={"customer_id": t.customer("a"), "sku": "TENT-2P", **HELD_REVIEW},
    )
    assert r.status_code == 201, r.text
    assert r.json()["status"] == "pending", r.text
    t.review_id = str(r.json()["id"])
    return t


async def seed_held_referral(http: httpx.AsyncClient, t: Tenant) -> str:
    """Four first orders on one advocate's code within the hour: the fourth is held
    for review (referrals' velocity rule, three per hour). Returns its referral id."""
    r = await http.post(
        f"{t.urls['referrals']}/v1/advocates/{t.customer('a')}/code", headers=t.auth(), json={}
    )
    assert r.status_code in (200, 201), r.text
    code = r.json()["code"]
    states = []
    for i in range(4):
        oid = f"ref-{i}-{uuid.uuid4().hex[:6]}"
        r = await http.post(
            t.urls["ingest"] + "/v1/orders",
            headers={**t.auth(), "Idempotency-Key": oid},
            json={
                "type": "order.placed",
                "customer_id": t.customer(f"referee{i}"),
                "data": {
                    "order_id": oid,
                    "platform": "api",
                    # After the code was issued (its window opens then), within the hour.
                    "placed_at": datetime.now(UTC).isoformat(),
                    "customer": {},
                    "total": {"amount": 5000, "currency": "USD"},
                },
            },
        )
        assert r.status_code == 201, r.text

        async def attribute(oid: str = oid) -> httpx.Response:
            return await http.post(
                t.urls["referrals"] + "/v1/attributions",
                headers=t.auth(),
                json={"order_id": oid, "code": code},
            )

        # 404 until referrals has seen the order's event.
        r = await eventually(attribute, lambda r: r.status_code != 404, timeout=120)
        assert r.status_code == 201, r.text
        states.append((r.json()["state"], r.json()["reason"], r.json()["id"]))
    assert [s for s, _, _ in states] == ["pending"] * 3 + ["held"], states
    return states[-1][2]


_CSRF = re.compile(r'name="csrf" value="([^"]+)"')


def csrf_of(html: str) -> str:
    m = _CSRF.search(html)
    assert m, "the page has no form token"
    return m.group(1)


@contextlib.asynccontextmanager
async def signed_in(console_url: str, key: str) -> AsyncIterator[httpx.AsyncClient]:
    """A browser-like client (cookies kept) signed in to the console with ``key``."""
    async with httpx.AsyncClient(base_url=console_url, follow_redirects=False, timeout=30) as c:
        await _sign_in(c, key)
        yield c


async def _sign_in(c: httpx.AsyncClient, key: str) -> None:

    async def attempt() -> int:
        page = await c.get("/sign-in")
        r = await c.post("/sign-in", data={"csrf": csrf_of(page.text), "api_key": key})
        return r.status_code

    # 401 until the key's announcement reached the console.
    assert await eventually(attempt, lambda s: s != 401, timeout=120) == 303


def figure(html: str, name: str) -> str:
    m = re.search(rf'data-figure="{name}">([^<]*)<', html)
    assert m, f"no figure {name} on the page"
    return m.group(1).strip()


def screenshots_dir() -> Path:
    d = Path(".afterglow/screenshots")
    d.mkdir(parents=True, exist_ok=True)
    return d


def dump(obj: Any) -> str:
    return repr(obj)[:2000]


async def seed_suppressed_message(http: httpx.AsyncClient, t: Tenant) -> dict[str, Any]:
    """A marketing message to customer "a", who declined marketing: the orchestrator
    suppresses it (no_marketing_consent). Returns the message once decided."""
    customer = t.customer("a")
    r = await http.post(
        t.urls["journeys"] + "/v1/messages",
        headers=t.auth(),
        json={
            "customer_id": customer,
            "request_id": f"console-nudge-{customer}",
            "kind": "check_in",
            "category": "marketing",
        },
    )
    assert r.status_code == 202, r.text

    async def message() -> dict[str, Any]:
        got = await http.get(
            f"{t.urls['journeys']}/v1/customers/{customer}/messages", headers=t.auth()
        )
        return next(
            (m for m in got.json()["messages"] if m["request_id"].startswith("console-nudge")),
            {},
        )

    return await eventually(message, lambda m: m.get("status") == "suppressed", timeout=120)
