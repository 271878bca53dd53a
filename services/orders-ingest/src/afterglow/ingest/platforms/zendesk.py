"""Zendesk: ticket events (created, status changed, solved, agent replies) as catalog
events (its signature covers the timestamp too: ``domain.timestamp_fresh``)."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from afterglow.events import catalog as c
from afterglow.ingest.customers import Requester, escalation_of
from afterglow.ingest.domain import (
    Emit,
    Normalized,
    customer_subject,
    fit,
    parse_time,
    require,
)
from afterglow.kit.contact_hash import email_hash, normalize_email, phone_hash

_PRIORITIES = ("low", "normal", "high", "urgent")


def normalize_zendesk(p: Mapping[str, Any]) -> Normalized:
    """Zendesk event-subscription webhooks: ``{"type": "zen:event-type:ticket.created",
    "id", "time", "detail": {ticket}, "event": {...}}``."""
    etype = str(require(p, "type"))
    kind = etype.rsplit(":", 1)[-1]
    if not kind.startswith("ticket."):
        return Normalized(known_topic=False)
    detail = require(p, "detail")
    ticket_id = f"zendesk:{require(detail, 'id', 'detail.')}"
    when = parse_time(p.get("time") or detail.get("updated_at"), "time")
    requester = detail.get("requester") or {}
    if not isinstance(requester, Mapping):
        requester = {}
    external_id = str(detail["external_id"]) if detail.get("external_id") else None
    email = requester.get("email")
    subject = (
        external_id
        if external_id and escalation_of(external_id) is None
        else customer_subject(None, email, "")
        if normalize_email(email)
        else f"zendesk:{require(detail, 'requester_id', 'detail.')}"
    )
    who = Requester(
        ticket_id=ticket_id,
        fallback_subject=subject,
        customer_id=external_id if escalation_of(external_id) is None else None,
        email_hash=email_hash(email),
        phone_hash=phone_hash(requester.get("phone")),
        escalation_id=escalation_of(external_id),
        helpdesk_user_id=zendesk_user_id(detail.get("requester_id")),
    )
    status = str(detail.get("status") or "").lower()
    event = p.get("event") or {}
    current = str(event.get("current") or "").lower()
    priority = str(detail.get("priority") or "normal").lower()
    via = detail.get("via")
    channel = (
        str(via.get("channel"))[:50] if isinstance(via, Mapping) and via.get("channel") else None
    )
    out = Normalized(requester=who)
    replied = when if kind == "ticket.comment_added" and _agent_public_reply(event) else None
    if kind == "ticket.created":
        out.emits.append(
            Emit(
                fit(
                    c.TicketOpened,
                    ticket_id=ticket_id,
                    helpdesk="zendesk",
                    opened_at=parse_time(detail.get("created_at") or p.get("time"), "created_at"),
                    subject=detail.get("subject"),
                    priority=priority
                    if priority in ("low", "normal", "high", "urgent")
                    else "normal",
                    channel=channel,
                ),
                subject,
            )
        )
    elif "solved" in (status, current) or "closed" in (status, current):
        out.emits.append(Emit(c.TicketResolved(ticket_id=ticket_id, resolved_at=when), subject))
    else:
        out.emits.append(
            Emit(
                c.TicketUpdated(
                    ticket_id=ticket_id,
                    updated_at=when,
                    status=current or status,
                    agent_replied_at=replied,
                ),
                subject,
            )
        )
    return out


def zendesk_user_id(value: Any) -> str | None:
    """A Zendesk user id (digits), or None: it goes into an API path, so nothing else."""
    text = str(value) if isinstance(value, (int, str)) and not isinstance(value, bool) else ""
    return text if text.isdigit() and len(text) <= 20 else None


def _agent_public_reply(event: Any) -> bool:
    """A ``ticket.comment_added`` by an agent, public: the first one ends the ticket's
    first-response time (a customer's comment or an internal note does not)."""
    comment = event.get("comment") if isinstance(event, Mapping) else None
    if not isinstance(comment, Mapping):
        return False
    author = comment.get("author")
    staff = isinstance(author, Mapping) and author.get("is_staff") is True
    return staff and comment.get("is_public", True) is not False
