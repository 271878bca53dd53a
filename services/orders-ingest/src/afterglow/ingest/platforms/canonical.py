"""Afterglow's canonical payloads, sent by Standard Webhooks senders and the REST API:
the catalog's own shapes, checked, with a ticket's requester resolved."""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from afterglow.events import catalog as c
from afterglow.ingest.customers import Requester
from afterglow.ingest.domain import (
    Emit,
    MissingField,
    NormalizationError,
    Normalized,
    OrderRecord,
    customer_subject,
    require,
)
from afterglow.kit.contact_hash import email_hash, phone_hash

ORDER_TYPES = frozenset(
    {
        "afterglow.order.placed.v1",
        "afterglow.order.fulfilled.v1",
        "afterglow.order.delivered.v1",
        "afterglow.order.refunded.v1",
        "afterglow.order.cancelled.v1",
    }
)
TICKET_TYPES = frozenset(
    {"afterglow.ticket.opened.v1", "afterglow.ticket.updated.v1", "afterglow.ticket.resolved.v1"}
)


def canonical_type(value: str) -> str:
    """Accepts ``order.placed``, ``afterglow.order.placed`` and the full type."""
    t = value.strip()
    if not t.startswith("afterglow."):
        t = "afterglow." + t
    if not re.search(r"\.v\d+$", t):
        t += ".v1"
    return t


def normalize_canonical(p: Mapping[str, Any], allowed: frozenset[str], platform: str) -> Normalized:
    """Afterglow's canonical payload: ``{"type": "order.placed", "customer_id": "...",
    "data": {...the catalog model's fields}}`` (Standard Webhooks senders and REST)."""
    from pydantic import ValidationError

    etype = canonical_type(str(require(p, "type")))
    if etype not in allowed:
        return Normalized(known_topic=False)
    data = p.get("data")
    if not isinstance(data, Mapping):
        raise MissingField("data")
    who = canonical_requester(p, data) if etype in TICKET_TYPES else None
    subject = who.fallback_subject if who is not None else str(require(p, "customer_id"))
    try:
        model = c.parse_data({**data, "type": etype})
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err["loc"][1:] if x != etype) or "data"
        raise NormalizationError(f"data.{loc}: {err['msg']}", f"data.{loc}") from exc
    out = Normalized(emits=[Emit(model, subject)], requester=who)
    if isinstance(model, c.OrderPlaced):
        platform_id = model.order_id.split(":", 1)[-1]
        out.order = OrderRecord(model.order_id, platform_id, subject, model.total)
    return out


def canonical_requester(p: Mapping[str, Any], data: Mapping[str, Any]) -> Requester:
    """A canonical ticket event names its customer (``customer_id``) or, when the
    helpdesk does not know the shop's customer id, its requester
    (``requester: {"email", "phone"}``), resolved through the orders' links."""
    ticket_id = str(require(data, "ticket_id", "data."))
    customer_id = p.get("customer_id")
    requester = p.get("requester")
    if not isinstance(requester, Mapping):
        requester = {}
    email, phone = requester.get("email"), requester.get("phone")
    eh, ph = email_hash(email), phone_hash(phone)
    if customer_id in (None, "") and not (eh or ph):
        raise MissingField("customer_id")
    fallback = (
        str(customer_id)
        if customer_id not in (None, "")
        else customer_subject(None, email, ticket_id, phone)
    )
    return Requester(
        ticket_id=ticket_id,
        fallback_subject=fallback,
        customer_id=str(customer_id) if customer_id not in (None, "") else None,
        email_hash=eh,
        phone_hash=ph,
    )
