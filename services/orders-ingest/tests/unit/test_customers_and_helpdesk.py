"""One customer across platform and helpdesk (customers), and what a helpdesk is sent
for an escalation (helpdesk): pure rules."""

from __future__ import annotations

import base64
import json
from datetime import UTC, datetime

from afterglow.events import catalog as c
from afterglow.ingest import domain, helpdesk
from afterglow.ingest.customers import Link, Requester, Resolution, merge, preferred, resolve
from afterglow.ingest.platforms import zendesk
from afterglow.kit import standard_webhooks

H = "a" * 64


def order(
    subject: str, email: str | None = None, phone: str | None = None
) -> tuple[c.OrderPlaced, str]:
    data = c.OrderPlaced(
        order_id=f"o-{subject}",
        platform="shopify",
        placed_at=datetime(2026, 3, 2, tzinfo=UTC),
        customer=c.CustomerInfo(email=email, phone=phone),
        total=c.Money(amount=100, currency="USD"),
    )
    return data, subject


class TestLinks:
    def test_a_platform_id_beats_a_guest_hash_and_the_later_order_wins_otherwise(self):
        assert preferred("123", "email:abc") == "123"
        assert preferred("email:abc", "123") == "123"
        assert preferred("123", "456") == "456"
        assert preferred(None, "email:abc") == "email:abc"

    def test_links_from_orders_hash_the_normalized_contact(self):
        from afterglow.ingest.customers import links_from

        links = links_from(
            [order("123", email=" Jon@Example.com", phone="+1 555 0100 99")],
            domain.email_hash,
            domain.phone_hash,
        )
        assert {(link.kind, link.value_hash, link.subject) for link in links} == {
            ("email", domain.email_hash("jon@example.com"), "123"),
            ("phone", domain.phone_hash("+1555010099"), "123"),
        }

    def test_anonymous_orders_link_nobody(self):
        from afterglow.ingest.customers import links_from

        anonymous = order(f"{c.ANONYMOUS_SUBJECT_PREFIX}o-1", email="a@b.c")
        assert links_from([anonymous], domain.email_hash, domain.phone_hash) == []

    def test_one_row_per_contact_for_one_upsert(self):
        merged = merge([Link("email", H, "email:x", "a@b.c"), Link("email", H, "123")])
        assert merged == [Link("email", H, "123", "a@b.c")]


class TestResolve:
    r = Requester("zendesk:1", "zendesk:99", email_hash=H)

    def test_by_email_link(self):
        got = resolve(self.r, pinned=None, escalations={}, links={("email", H): "123"})
        assert got == Resolution("123", "email")

    def test_pinned_wins_over_a_newer_link(self):
        pinned = Resolution("zendesk:99", "unresolved", "why")
        got = resolve(self.r, pinned=pinned, escalations={}, links={("email", H): "123"})
        assert got == pinned

    def test_escalation_tag_names_the_customer(self):
        r = Requester("zendesk:1", "zendesk:99", escalation_id="e1", email_hash=H)
        got = resolve(r, pinned=None, escalations={"e1": "cus"}, links={("email", H): "x"})
        assert got == Resolution("cus", "escalation")

    def test_unknown_requester_says_why(self):
        got = resolve(self.r, pinned=None, escalations={}, links={})
        assert (got.subject, got.resolved_by) == ("zendesk:99", "unresolved")
        assert got.reason and "no order links" in got.reason
        bare = resolve(Requester("t", "zendesk:9"), pinned=None, escalations={}, links={})
        assert bare.reason and "names no customer id, email or phone" in bare.reason

    def test_a_failed_requester_lookup_is_the_reason(self):
        r = Requester("t", "zendesk:9", helpdesk_user_id="9", lookup_error="zendesk answered 503")
        got = resolve(r, pinned=None, escalations={}, links={})
        assert (got.resolved_by, got.reason) == (
            "unresolved",
            "the requester's email could not be looked up: zendesk answered 503",
        )

    def test_zendesk_events_carry_the_requester_id_as_a_path_safe_id(self):
        assert zendesk.zendesk_user_id("8447388090494") == "8447388090494"
        assert zendesk.zendesk_user_id(42) == "42"
        assert [zendesk.zendesk_user_id(v) for v in ("../admin", "", None, True, "1" * 21)] == [
            None
        ] * 5


DRAFT = helpdesk.TicketDraft(
    escalation_id="esc-1",
    customer="123",
    reason="detractor",
    priority="high",
    score=3,
    comment="Crushed box",
    order_id="shopify:1",
    survey_id="s-1",
    requester_email="jon@example.com",
)


class TestHelpdeskCalls:
    def test_zendesk_token_auth_idempotency_key_and_tags(self):
        conn = helpdesk.Connection("zendesk", "https://acme.zendesk.com/", "agent@acme.com", "tok")
        call = helpdesk.create_call(conn, DRAFT, 1_700_000_000)
        assert (call.method, call.url) == ("POST", "https://acme.zendesk.com/api/v2/tickets")
        user = base64.b64decode(call.headers["Authorization"].removeprefix("Basic ")).decode()
        assert user == "agent@acme.com/token:tok"
        assert call.headers["Idempotency-Key"] == "esc-1"
        assert call.body is not None
        ticket = json.loads(call.body)["ticket"]
        assert ticket["external_id"] == "afterglow-escalation:esc-1"
        assert {"afterglow", "afterglow_escalation"} <= set(ticket["tags"])
        assert "3/10" in ticket["comment"]["body"] and "Crushed box" in ticket["comment"]["body"]
        assert ticket["requester"] == {"email": "jon@example.com"}
        lookup = helpdesk.lookup_call(conn, DRAFT)
        assert lookup is not None and lookup.params == {"external_id": "afterglow-escalation:esc-1"}

    def test_gorgias_customer_and_incoming_message(self):
        conn = helpdesk.Connection("gorgias", "https://acme.gorgias.com", "api-user", "key")
        call = helpdesk.create_call(conn, DRAFT, 0)
        assert call.url == "https://acme.gorgias.com/api/tickets"
        assert call.body is not None
        body = json.loads(call.body)
        assert body["customer"] == {"email": "jon@example.com"}
        [message] = body["messages"]
        assert (message["from_agent"], message["sender"]) == (False, body["customer"])
        # No idempotency key at Gorgias: a retry first lists tickets by external_id.
        lookup = helpdesk.lookup_call(conn, DRAFT)
        assert lookup is not None
        assert (lookup.method, lookup.url) == ("GET", "https://acme.gorgias.com/api/tickets")
        assert lookup.params == {"external_id": "afterglow-escalation:esc-1"}
        assert lookup.headers["Authorization"] == call.headers["Authorization"]
        assert helpdesk.found_ticket(conn, {"data": [{"id": 7001}]}) == "gorgias:7001"
        assert helpdesk.found_ticket(conn, {"data": []}) is None

    def test_zendesk_user_lookup_uses_the_api_token(self):
        conn = helpdesk.Connection("zendesk", "https://acme.zendesk.com/", "agent@acme.com", "tok")
        call = helpdesk.user_call(conn, "8447388090494")
        assert call is not None
        assert (call.method, call.url) == (
            "GET",
            "https://acme.zendesk.com/api/v2/users/8447388090494.json",
        )
        user = base64.b64decode(call.headers["Authorization"].removeprefix("Basic ")).decode()
        assert user == "agent@acme.com/token:tok"
        assert helpdesk.user_call(conn, "1/../../tickets") is None
        gorgias = helpdesk.Connection("gorgias", "https://acme.gorgias.com", "u", "k")
        assert helpdesk.user_call(gorgias, "1") is None
        answer = {"user": {"id": 1, "email": "jon@example.com", "phone": None}}
        assert helpdesk.user_contact(answer) == ("jon@example.com", None)
        assert helpdesk.user_contact({"error": "RecordNotFound"}) == (None, None)

    def test_generic_webhook_is_signed_with_the_escalation_as_its_id(self):
        conn = helpdesk.Connection("webhook", "https://hooks.example.com/x", None, "whsec_c2VjcmV0")
        call = helpdesk.create_call(conn, DRAFT, 1_700_000_000)
        assert call.body is not None
        assert call.headers["webhook-id"] == "esc-1"
        assert standard_webhooks.verify(
            ["whsec_c2VjcmV0"],
            "esc-1",
            call.headers["webhook-timestamp"],
            call.headers["webhook-signature"],
            call.body,
            1_700_000_000,
        )

    def test_what_is_retried(self):
        assert [helpdesk.transient(s) for s in (429, 500, 503, 409, 400, 401, 422)] == [
            True,
            True,
            True,
            True,
            False,
            False,
            False,
        ]
