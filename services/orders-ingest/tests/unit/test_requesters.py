"""Zendesk requesters known by id only: which stored events need a lookup, what the
round does with the cached answers (afterglow.ingest.requesters), without I/O."""

from __future__ import annotations

import json
import time
from typing import Any

from afterglow.ingest import domain, requesters
from afterglow.ingest.customers import Requester
from afterglow.ingest.requesters import Contact, RequesterCache


def zendesk_body(**detail: Any) -> bytes:
    return json.dumps({"type": "zen:event-type:ticket.created", "detail": detail}).encode()


def by_id(user_id: str, ticket: str = "zendesk:1") -> domain.Normalized:
    return domain.Normalized(
        requester=Requester(ticket, f"zendesk:{user_id}", helpdesk_user_id=user_id)
    )


def later(s: float = 60.0) -> float:
    return time.monotonic() + s


class TestWanted:
    def test_only_a_requester_named_by_id_alone_is_looked_up(self):
        assert requesters.wanted(zendesk_body(id="1", requester_id="8447388090494")) == (
            "8447388090494"
        )
        assert requesters.wanted(zendesk_body(requester_id=9, requester={"email": "a@b.c"})) is None
        assert requesters.wanted(zendesk_body(requester_id=9, external_id="cus-1")) is None
        assert requesters.wanted(zendesk_body(requester_id="../users")) is None
        assert requesters.wanted(b"[1, 2") is None


class TestRound:
    def test_the_first_event_unseen_by_the_prefetch_waits_for_the_next_round(self):
        cache = RequesterCache()
        cache.put(("t", "1"), Contact("a@b.c", None, None, later()))
        items = [
            ("t", by_id("1")),
            ("t", domain.Normalized()),
            ("t", by_id("2")),
            ("t", by_id("1")),
        ]
        cache.lookup_due = False
        assert requesters.first_unseen(cache, items, looked_up=True) == 2
        assert cache.lookup_due  # the next round's prefetch looks it up

    def test_the_first_event_applies_after_its_rounds_lookups(self):
        cache = RequesterCache()
        cache.lookup_due = False
        assert requesters.first_unseen(cache, [("t", by_id("2"))], looked_up=True) is None
        assert not cache.lookup_due

    def test_without_a_lookup_this_round_even_the_first_unseen_event_waits(self):
        cache = RequesterCache()
        cache.lookup_due = False
        items = [("t", by_id("2")), ("t", domain.Normalized())]
        assert requesters.first_unseen(cache, items, looked_up=False) == 0
        assert cache.lookup_due

    def test_the_found_email_is_the_requesters_and_a_failure_is_said(self):
        cache = RequesterCache()
        cache.put(("t", "1"), Contact("Jon@Example.com", None, None, later()))
        cache.put(("t", "2"), Contact(None, None, "zendesk answered 503", later()))
        found, failed, other_tenant = by_id("1"), by_id("2"), by_id("1")
        requesters.enrich(cache, [("t", found), ("t", failed), ("u", other_tenant)])
        assert found.requester is not None and failed.requester is not None
        assert found.requester.email_hash == domain.email_hash("jon@example.com")
        assert failed.requester.lookup_error == "zendesk answered 503"
        assert other_tenant.requester == by_id("1").requester  # another shop's user 1


class TestCache:
    def test_bounded_oldest_first_and_expiring(self):
        cache = RequesterCache(max_entries=2)
        for key in ("a", "b", "c"):
            cache.put(("t", key), Contact(None, None, None, later()))
        assert [cache.get(("t", k)) is not None for k in ("a", "b", "c")] == [False, True, True]
        cache.put(("t", "d"), Contact(None, None, None, time.monotonic() - 1))
        assert cache.get(("t", "d")) is None
