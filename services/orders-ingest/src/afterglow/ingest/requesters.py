"""Zendesk names a ticket's requester by id only: the email is looked up, off the batch.

Zendesk's ticket events carry ``detail.requester_id`` and no email, so without a lookup
a real ticket never reaches the customer's journey (it would stay keyed to
``zendesk:<requester id>``). Before each processing round, :func:`prefetch` reads the
stored Zendesk deliveries waiting to be applied (one query), and for each requester not
yet known asks Zendesk ``GET /api/v2/users/{id}.json`` with the tenant's helpdesk API
token, through the outbound guard and with the helpdesk timeout, concurrently. Only
when it is due: at the first round, and after a round met a requester not yet seen
(:func:`first_unseen`). A shop that sends no Zendesk tickets pays no query per round
for them (at 50 orders/s a round holds one or two deliveries, and that query was 17%
of the processing worker's CPU). The
answers are cached in the process (an hour; a failure a minute, so a Zendesk outage
costs one call per requester per minute, not one per event).

Why before the round and not inside it: the round's transaction holds the applier lock
and the claimed rows; a slow helpdesk must not hold them across a network call (the
BigCommerce fetch avoids it the same way). Inside the round, :func:`enrich` only reads
the cache and gives the requester its email hash and phone hash; afterglow.ingest
.customers then resolves the ticket by the orders' links as for any email. A requester
the lookup could not name is resolved to nobody with the lookup's error as the reason.
A Zendesk event not looked up yet (stored while the lookups ran, or since the last
lookup) is left, with what follows it, for the next round (:func:`first_unseen`), which
looks it up first.

Tenants without a Zendesk API connection are not looked up (the reason stays "names
no email"). Escalation tickets and tickets with an external id need no lookup.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import httpx

from afterglow.ingest import domain, helpdesk, store
from afterglow.ingest.customers import Requester
from afterglow.ingest.group_commit import RECEIVED
from afterglow.ingest.platforms import zendesk
from afterglow.ingest.settings import IngestSettings
from afterglow.kit.app import Runtime
from afterglow.kit.jsonbody import JsonBodyError, loads_bounded
from afterglow.kit.outbound import ForbiddenDestination, check_destination

FOUND_TTL_S = 3600.0
FAILED_TTL_S = 60.0
MAX_ENTRIES = 10_000

Key = tuple[str, str]  # (tenant id, Zendesk user id)


@dataclass(frozen=True)
class Contact:
    email: str | None
    phone: str | None
    error: str | None
    expires: float  # time.monotonic()


class RequesterCache:
    """(tenant, user id) -> contact, bounded (the oldest entry goes first)."""

    def __init__(self, max_entries: int = MAX_ENTRIES) -> None:
        self._entries: OrderedDict[Key, Contact] = OrderedDict()
        self._max = max_entries
        # The next round's prefetch reads the waiting Zendesk deliveries: at the first
        # round, and after a round met a requester not in the cache.
        self.lookup_due = True

    def get(self, key: Key) -> Contact | None:
        found = self._entries.get(key)
        if found is None or found.expires < time.monotonic():
            return None
        return found

    def put(self, key: Key, contact: Contact) -> None:
        self._entries[key] = contact
        self._entries.move_to_end(key)
        while len(self._entries) > self._max:
            self._entries.popitem(last=False)


def wanted(body: bytes) -> str | None:
    """The requester id of a stored Zendesk ticket event that names no email, phone or
    external id (the only ones a lookup can help), else None."""
    try:
        payload = loads_bounded(body)
    except JsonBodyError:
        return None
    detail = payload.get("detail") if isinstance(payload, dict) else None
    if not isinstance(detail, dict) or detail.get("external_id"):
        return None
    requester = detail.get("requester")
    if isinstance(requester, dict) and (requester.get("email") or requester.get("phone")):
        return None
    return zendesk.zendesk_user_id(detail.get("requester_id"))


async def prefetch(runtime: Runtime, cache: RequesterCache, batch: int) -> bool:
    """When due, look up the requesters of the next ``batch`` Zendesk deliveries to
    apply, into ``cache`` (the process's, in IngestDeps). Whether it looked."""
    if not cache.lookup_due:
        return False
    cache.lookup_due = False
    await _look_up_next(runtime, cache, batch)
    return True


async def _look_up_next(runtime: Runtime, cache: RequesterCache, batch: int) -> None:
    async with runtime.sessionmaker() as session:
        rows = await store.zendesk_bodies_of_next_round(session, status=RECEIVED, batch=batch)
        keys = set()
        for tenant_id, body in rows:
            user_id = wanted(bytes(body))
            if user_id is not None and cache.get((tenant_id, user_id)) is None:
                keys.add((tenant_id, user_id))
        if not keys:
            return
        conns = {
            c.tenant_id: helpdesk.Connection(c.kind, c.api_base_url, c.username, c.secret)
            for c in await store.zendesk_connections(session, sorted({t for t, _ in keys}))
        }
    asking = sorted(k for k in keys if k[0] in conns)
    found = await asyncio.gather(*(_look_up(runtime, conns[t], u) for t, u in asking))
    for key, contact in zip(asking, found, strict=True):
        cache.put(key, contact)
    # Seen, with nothing to ask (no Zendesk connection): known, so not held back.
    for key in keys - set(asking):
        cache.put(key, Contact(None, None, None, time.monotonic() + FAILED_TTL_S))


async def _look_up(runtime: Runtime, conn: helpdesk.Connection, user_id: str) -> Contact:
    settings = runtime.settings
    assert isinstance(settings, IngestSettings)
    call = helpdesk.user_call(conn, user_id)
    assert call is not None  # a Zendesk connection and a numeric id
    http = runtime.http
    assert http is not None
    try:
        await check_destination(conn.api_base_url, allow_private=settings.outbound_allow_private)
        answer = await http.request(
            call.method, call.url, headers=call.headers, timeout=settings.ingest_helpdesk_timeout_s
        )
    except ForbiddenDestination as exc:
        return _failed(f"api_base_url {exc}")
    except httpx.HTTPError as exc:
        return _failed(f"{type(exc).__name__}: {exc}")
    if not answer.is_success:
        return _failed(f"zendesk answered {answer.status_code}: {answer.text[:200]}")
    try:
        body: Any = json.loads(answer.content or b"{}")
    except ValueError:
        body = {}
    email, phone = helpdesk.user_contact(body if isinstance(body, dict) else {})
    return Contact(email, phone, None, time.monotonic() + FOUND_TTL_S)


def _failed(error: str) -> Contact:
    return Contact(None, None, error[:300], time.monotonic() + FAILED_TTL_S)


def _by_id_only(r: Requester | None) -> str | None:
    """The helpdesk user id of a requester nothing else names, else None."""
    if r is None or r.helpdesk_user_id is None:
        return None
    if r.email_hash or r.phone_hash or r.customer_id or r.escalation_id:
        return None
    return r.helpdesk_user_id


def first_unseen(
    cache: RequesterCache, items: Sequence[tuple[str, domain.Normalized]], *, looked_up: bool
) -> int | None:
    """The index of the first item whose requester is not in the cache. The round
    applies the items before it and leaves the rest for the next round, whose prefetch
    (made due here) looks it up first. After this round's own prefetch (``looked_up``)
    the first item always applies, unseen or not (stored while the calls were in
    flight), so nothing can stall on it."""
    for i, (tenant_id, normalized) in enumerate(items):
        user_id = _by_id_only(normalized.requester)
        if user_id is None or cache.get((tenant_id, user_id)) is not None:
            continue
        if i == 0 and looked_up:
            continue
        cache.lookup_due = True
        return i
    return None


def enrich(cache: RequesterCache, items: Sequence[tuple[str, domain.Normalized]]) -> None:
    """Give requesters known by id only the contact the lookup found (cache only)."""
    for tenant_id, normalized in items:
        r = normalized.requester
        user_id = _by_id_only(r)
        if r is None or user_id is None:
            continue
        contact = cache.get((tenant_id, user_id))
        if contact is None:
            continue
        normalized.requester = dataclasses.replace(
            r,
            email_hash=domain.email_hash(contact.email),
            phone_hash=domain.phone_hash(contact.phone),
            lookup_error=contact.error,
        )
