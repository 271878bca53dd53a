"""Support tickets as their events tell them: the rules, pure (no I/O).

A ticket's first-response time runs from its opening to the first agent's public reply;
its resolution time from its opening to its (latest) solve. Its CSAT survey is due 24
hours after the first solve (Zendesk's default) and asked once per ticket, unless the
customer was surveyed within the fatigue window (:func:`csat_decision`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import datetime, timedelta
from typing import Any

OPENED = "afterglow.ticket.opened.v1"
UPDATED = "afterglow.ticket.updated.v1"
RESOLVED = "afterglow.ticket.resolved.v1"

DUE, SENT, SKIPPED = "due", "sent", "skipped"


@dataclass(frozen=True)
class Ticket:
    tenant_id: str
    ticket_id: str
    customer_id: str
    helpdesk: str | None = None
    channel: str | None = None
    opened_at: datetime | None = None
    first_response_at: datetime | None = None
    resolved_at: datetime | None = None
    csat_status: str | None = None
    csat_due_at: datetime | None = None
    csat_reason: str | None = None


def _earliest(a: datetime | None, b: datetime | None) -> datetime | None:
    return b if a is None else a if b is None else min(a, b)


def apply(
    t: Ticket | None,
    etype: str,
    data: Any,
    tenant_id: str,
    customer_id: str,
    csat_delay: timedelta,
) -> Ticket:
    """The ticket after one of its events (events may come out of order: the earliest
    opening and the earliest agent reply win)."""
    if t is None:
        t = Ticket(tenant_id, str(data.ticket_id), customer_id)
    if etype == OPENED:
        return replace(
            t,
            opened_at=_earliest(t.opened_at, data.opened_at),
            helpdesk=t.helpdesk or data.helpdesk,
            channel=t.channel or data.channel,
        )
    if etype == UPDATED and data.agent_replied_at is not None:
        return replace(t, first_response_at=_earliest(t.first_response_at, data.agent_replied_at))
    if etype == RESOLVED:
        t = replace(t, resolved_at=max(t.resolved_at or data.resolved_at, data.resolved_at))
        if t.csat_status is None:  # once per ticket, from its first solve
            t = replace(t, csat_status=DUE, csat_due_at=data.resolved_at + csat_delay)
    return t


def csat_decision(last_surveyed: datetime | None, now: datetime, fatigue: timedelta) -> str | None:
    """Why a due CSAT survey is not sent (None: send it)."""
    if last_surveyed is not None and now - last_surveyed < fatigue:
        return f"surveyed {last_surveyed.isoformat()}, within the {fatigue.days}-day fatigue window"
    return None


def percentile(values: Sequence[float], q: float) -> float | None:
    """Linear interpolation between closest ranks (PostgreSQL's percentile_cont, which
    the metrics query uses): the reference for hand-computed expectations."""
    if not values:
        return None
    ordered = sorted(values)
    pos = q * (len(ordered) - 1)
    lo, hi = math.floor(pos), math.ceil(pos)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (pos - lo)
