"""Opening a ticket for an escalation: what each helpdesk is sent, pure (no I/O).

Zendesk: ``POST /api/v2/tickets`` with API token auth (basic, ``{email}/token:{token}``)
and an ``Idempotency-Key`` (Zendesk answers a repeat with the ticket it already
created); before a retry the ticket is also looked up by its ``external_id``
(``GET /api/v2/tickets?external_id=``), which outlives the key's expiry.
Gorgias: ``POST /api/tickets`` with basic auth (username and API key), a customer
email and one incoming message; Gorgias takes no idempotency key, so before a retry
the ticket is looked up by its ``external_id`` (``GET /api/tickets?external_id=``).
Generic: a Standard Webhook whose ``webhook-id`` is
the escalation id, which receivers de-duplicate on.

Every ticket carries ``external_id`` = ``afterglow-escalation:<escalation id>`` and the
tags :data:`~afterglow.ingest.customers.ESCALATION_TAGS`, so that the helpdesk's own
webhook about it resolves to the escalated customer (afterglow.ingest.customers).
"""

from __future__ import annotations

import base64
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from afterglow.ingest.customers import ESCALATION_EXTERNAL_ID_PREFIX, ESCALATION_TAGS
from afterglow.kit import standard_webhooks

KINDS = ("zendesk", "gorgias", "webhook")


@dataclass(frozen=True)
class Connection:
    kind: str  # zendesk | gorgias | webhook
    api_base_url: str
    username: str | None
    secret: str


@dataclass(frozen=True)
class TicketDraft:
    """What the ticket says: the escalation, in the helpdesk's words."""

    escalation_id: str
    customer: str
    reason: str
    priority: str
    score: int | None
    comment: str | None
    order_id: str | None
    survey_id: str | None
    requester_email: str | None

    @property
    def external_id(self) -> str:
        return ESCALATION_EXTERNAL_ID_PREFIX + self.escalation_id

    @property
    def subject(self) -> str:
        score = f" (NPS {self.score}/10)" if self.score is not None else ""
        order = f" on order {self.order_id}" if self.order_id else ""
        return f"Follow up with a {self.reason}{score}{order}"[:250]

    @property
    def body(self) -> str:
        lines = [f"A customer answered the survey with {self.score}/10."]
        if self.score is None:
            lines = [f"Afterglow escalated this customer ({self.reason})."]
        lines.append("")
        lines.append(f"Their comment: {self.comment}" if self.comment else "No comment given.")
        lines.append("")
        if self.order_id:
            lines.append(f"Order: {self.order_id}")
        lines.append(f"Customer: {self.customer}")
        if self.survey_id:
            lines.append(f"Survey: {self.survey_id}")
        lines.append(
            "The customer's review request waits until this ticket is solved (opened by Afterglow)."
        )
        return "\n".join(lines)

    @property
    def tags(self) -> list[str]:
        return [*ESCALATION_TAGS, self.reason.replace(" ", "_")[:50]]


@dataclass(frozen=True)
class HttpCall:
    method: str
    url: str
    headers: dict[str, str]
    body: bytes | None = None
    params: dict[str, str] = field(default_factory=dict)


def _basic(user: str, password: str) -> str:
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


def _json(value: Any) -> bytes:
    return json.dumps(value, separators=(",", ":")).encode()


def create_call(conn: Connection, t: TicketDraft, now_s: int) -> HttpCall:
    base = conn.api_base_url.rstrip("/")
    headers = {"Content-Type": "application/json", "Accept": "application/json"}
    if conn.kind == "zendesk":
        ticket: dict[str, Any] = {
            "subject": t.subject,
            "comment": {"body": t.body, "public": False},
            "priority": t.priority if t.priority in ("low", "normal", "high", "urgent") else "high",
            "tags": t.tags,
            "external_id": t.external_id,
        }
        if t.requester_email:
            ticket["requester"] = {"email": t.requester_email}
        headers |= {
            "Authorization": _basic(f"{conn.username}/token", conn.secret),
            "Idempotency-Key": t.escalation_id,
        }
        return HttpCall("POST", f"{base}/api/v2/tickets", headers, _json({"ticket": ticket}))
    if conn.kind == "gorgias":
        customer = {"email": t.requester_email}
        message = {
            "channel": "api",
            "via": "api",
            "from_agent": False,
            "sender": customer,
            "subject": t.subject,
            "body_text": t.body,
        }
        body = {
            "customer": customer,
            "channel": "api",
            "via": "api",
            "from_agent": False,
            "subject": t.subject,
            "external_id": t.external_id,
            "tags": [{"name": tag} for tag in t.tags],
            "messages": [message],
        }
        headers["Authorization"] = _basic(conn.username or "", conn.secret)
        return HttpCall("POST", f"{base}/api/tickets", headers, _json(body))
    raw = _json(
        {
            "type": "support.escalation_requested",
            "escalation_id": t.escalation_id,
            "external_id": t.external_id,
            "customer_id": t.customer,
            "requester": {"email": t.requester_email},
            "subject": t.subject,
            "body": t.body,
            "score": t.score,
            "comment": t.comment,
            "order_id": t.order_id,
            "survey_id": t.survey_id,
            "priority": t.priority,
            "tags": t.tags,
        }
    )
    headers |= standard_webhooks.signed_headers(conn.secret, t.escalation_id, now_s, raw)
    return HttpCall("POST", base, headers, raw)


def lookup_call(conn: Connection, t: TicketDraft) -> HttpCall | None:
    """The request that finds a ticket an earlier attempt may have created (its answer
    lost to a timeout), or None where the helpdesk offers no such lookup (a generic
    receiver de-duplicates on the webhook id instead)."""
    base = conn.api_base_url.rstrip("/")
    if conn.kind == "zendesk":
        auth = _basic(f"{conn.username}/token", conn.secret)
        path = "/api/v2/tickets"
    elif conn.kind == "gorgias":
        # Without this a retry after a timeout would open a second ticket: Gorgias
        # has no Idempotency-Key, but lists tickets by the external_id we set.
        auth = _basic(conn.username or "", conn.secret)
        path = "/api/tickets"
    else:
        return None
    return HttpCall(
        "GET",
        base + path,
        {"Accept": "application/json", "Authorization": auth},
        params={"external_id": t.external_id},
    )


def user_call(conn: Connection, user_id: str) -> HttpCall | None:
    """Zendesk's ``GET /api/v2/users/{id}.json`` with the tenant's API token: its ticket
    events name the requester by ``requester_id`` only. None for other helpdesks."""
    if conn.kind != "zendesk" or not user_id.isdigit():
        return None
    return HttpCall(
        "GET",
        f"{conn.api_base_url.rstrip('/')}/api/v2/users/{user_id}.json",
        {
            "Accept": "application/json",
            "Authorization": _basic(f"{conn.username}/token", conn.secret),
        },
    )


def user_contact(answer: Mapping[str, Any]) -> tuple[str | None, str | None]:
    """The email and phone of a Zendesk user answer (``{"user": {...}}``)."""
    user = answer.get("user")
    if not isinstance(user, Mapping):
        return None, None
    email, phone = user.get("email"), user.get("phone")
    return (
        email if isinstance(email, str) and email else None,
        phone if isinstance(phone, str) and phone else None,
    )


def found_ticket(conn: Connection, answer: Mapping[str, Any]) -> str | None:
    """The ticket id in a lookup's answer, if one was found (Zendesk lists them under
    ``tickets``, Gorgias under ``data``)."""
    tickets = answer.get("data" if conn.kind == "gorgias" else "tickets")
    if isinstance(tickets, list) and tickets and isinstance(tickets[0], Mapping):
        ref = tickets[0].get("id")
        return f"{conn.kind}:{ref}" if ref is not None else None
    return None


def created_ticket(conn: Connection, answer: Mapping[str, Any], escalation_id: str) -> str:
    """The helpdesk's id for the ticket it created (the escalation's for a webhook)."""
    if conn.kind == "zendesk":
        ticket = answer.get("ticket")
        ref = ticket.get("id") if isinstance(ticket, Mapping) else None
    elif conn.kind == "gorgias":
        ref = answer.get("id")
    else:
        ref = escalation_id
    return f"{conn.kind}:{ref}"


def transient(status: int) -> bool:
    """Worth retrying: the helpdesk is busy or failing, not refusing the request."""
    return status in (408, 409, 425, 429) or status >= 500


def retry_delay_s(attempt: int, base_s: float, max_s: float) -> float:
    return float(min(max_s, base_s * 2 ** max(attempt - 1, 0)))
