"""The customer's profile: the projection of their events that conditions read, and the
event as the engine sees it (:class:`Occurrence`)."""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from pydantic import BaseModel, Field

from afterglow.journeys.engine.event_types import (
    PLACED,
    SURVEY_RESPONDED,
    SURVEY_SENT,
    TICKET_OPENED,
    TICKET_RESOLVED,
)


class Profile(BaseModel):
    """The projection of a customer the conditions read."""

    orders_count: int = 0
    # The first currency the customer spent in and the spend in it (kept for the
    # profile's columns and older readers); ``spent`` has every currency, each apart.
    total_spent: int = 0
    currency: str | None = None
    spent: dict[str, int] = Field(default_factory=dict)
    first_order_at: datetime | None = None
    last_order_at: datetime | None = None
    open_tickets: list[str] = Field(default_factory=list)
    resolved_tickets: list[str] = Field(default_factory=list)
    consent: bool = True
    timezone: str | None = None
    tier: str | None = None
    last_surveyed_at: datetime | None = None
    last_nps: int | None = None
    last_band: str | None = None
    # order id -> {event type: when}; kept so an event that arrives before its order's
    # placed (out of order) still anchors the instance that placed starts later.
    orders: dict[str, dict[str, datetime]] = Field(default_factory=dict)

    def spent_in(self, currency: str) -> int:
        """Spend in one currency (minor units); amounts in others never count."""
        if currency in self.spent:
            return self.spent[currency]
        # A profile projected before ``spent`` existed knows its first currency only.
        return self.total_spent if self.currency == currency else 0

    def copied(self) -> Profile:
        """A copy a projection may change (see InstanceState.copied: same reason)."""
        return self.model_copy(
            update={
                "spent": dict(self.spent),
                "open_tickets": list(self.open_tickets),
                "resolved_tickets": list(self.resolved_tickets),
                "orders": {k: dict(v) for k, v in self.orders.items()},
            }
        )


MAX_REMEMBERED_TICKETS = 50
MAX_REMEMBERED_ORDERS = 30


@dataclass(slots=True)  # not frozen, as engine.state's values (one per event)
class Occurrence:
    """An event as the engine sees it: ``at`` is when it happened in the world."""

    id: str
    type: str
    at: datetime
    data: dict[str, Any] = field(default_factory=dict)

    @property
    def order_id(self) -> str | None:
        v = self.data.get("order_id")
        return str(v) if v is not None else None


def project(profile: Profile, ev: Occurrence) -> Profile:
    """Apply one event to the profile (pure; the inbox guarantees once per event id)."""
    p = profile.copied()
    d = ev.data
    oid = ev.order_id
    if oid and ev.type.startswith("afterglow.order."):
        seen = p.orders.setdefault(oid, {})
        seen.setdefault(ev.type, ev.at)
        if len(p.orders) > MAX_REMEMBERED_ORDERS:
            oldest = min(p.orders, key=lambda k: min(p.orders[k].values()))
            del p.orders[oldest]
    if ev.type == PLACED:
        p.orders_count += 1
        if isinstance(d.get("customer_orders_count"), int):
            p.orders_count = max(p.orders_count, d["customer_orders_count"])
        # Shop money when the order states it (the shop's own currency), each currency
        # summed apart: 100 EUR and 100 USD are not 200 of anything.
        total = d.get("shop_total") or d.get("total") or {}
        cur, amount = total.get("currency"), int(total.get("amount", 0))
        if cur:
            if not p.spent and p.currency is not None:
                p.spent = {p.currency: p.total_spent}  # a profile from before ``spent``
            p.spent[cur] = p.spent.get(cur, 0) + amount
            if p.currency in (None, cur):
                p.currency = cur
                p.total_spent += amount
        p.first_order_at = min(filter(None, [p.first_order_at, ev.at]))
        p.last_order_at = max(filter(None, [p.last_order_at, ev.at]))
        cust = d.get("customer") or {}
        if cust.get("timezone"):
            p.timezone = cust["timezone"]
        if cust.get("accepts_marketing") is not None:
            p.consent = bool(cust["accepts_marketing"])
    elif ev.type == TICKET_OPENED:
        tid = str(d.get("ticket_id"))
        # A resolution that overtook its opening closes it at once.
        if tid not in p.open_tickets and tid not in p.resolved_tickets:
            p.open_tickets.append(tid)
    elif ev.type == TICKET_RESOLVED:
        tid = str(d.get("ticket_id"))
        if tid in p.open_tickets:
            p.open_tickets.remove(tid)
        if tid not in p.resolved_tickets:
            p.resolved_tickets = [*p.resolved_tickets, tid][-MAX_REMEMBERED_TICKETS:]
    elif ev.type == SURVEY_SENT:
        p.last_surveyed_at = max(filter(None, [p.last_surveyed_at, ev.at]))
    elif ev.type == SURVEY_RESPONDED:
        if d.get("kind", "nps") == "nps":
            p.last_nps = d.get("score")
            p.last_band = d.get("band")
    elif ev.type == "afterglow.tier.changed.v1":
        p.tier = d.get("to_tier")
    elif ev.type == "afterglow.customer.unsubscribed.v1":
        p.consent = False
    return p


def erase(profile: Profile) -> Profile:
    """GDPR erasure: drop what identifies or describes the person; counts stay (aggregates)."""
    return Profile(orders_count=profile.orders_count, consent=False)
