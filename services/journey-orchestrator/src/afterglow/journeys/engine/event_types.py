"""The event names a journey may use: the engine's one list of consumed catalog events,
the short names accepted for them, and the constants the engine compares against."""

from __future__ import annotations

import re
from typing import Annotated, Any

from pydantic import BeforeValidator

from afterglow.events import catalog as c

# The events the engine consumes: what a journey may be triggered by, anchor a wait on,
# wait for, exit on or count as its goal, and what the dry run accepts. The one list:
# the engine's consumer group subscribes to exactly these (handlers.py), so a journey
# can never wait for an event that no handler delivers.
ENGINE_EVENTS: tuple[type[c.EventData], ...] = (
    c.OrderPlaced,
    c.OrderFulfilled,
    c.OrderDelivered,
    c.OrderRefunded,
    c.OrderCancelled,
    c.TicketOpened,
    c.TicketUpdated,
    c.TicketResolved,
    c.SurveySent,
    c.SurveyResponded,
    c.ReviewSubmitted,
    c.ReviewPublished,
    c.PointsEarned,
    c.PointsRedeemed,
    c.TierChanged,
    c.ReferralCodeIssued,
    c.ReferralConverted,
    c.CustomerUnsubscribed,
)

# Short names ("order.delivered") are accepted and normalised to the catalog type.
KNOWN_EVENTS = {
    re.sub(r"\.v\d+$", "", cls.model_fields["type"].default.removeprefix("afterglow."))
    for cls in ENGINE_EVENTS
}


def event_type(name: str) -> str:
    n = name.strip()
    short = n.removeprefix("afterglow.")
    short = re.sub(r"\.v\d+$", "", short)
    if short not in KNOWN_EVENTS:
        raise ValueError(f"unknown event type {name!r}")
    return f"afterglow.{short}.v1"


def _event_type(value: Any) -> Any:
    return event_type(value) if isinstance(value, str) else value


EventType = Annotated[str, BeforeValidator(_event_type)]

PLACED = "afterglow.order.placed.v1"
FULFILLED = "afterglow.order.fulfilled.v1"
DELIVERED = "afterglow.order.delivered.v1"
REFUNDED = "afterglow.order.refunded.v1"
CANCELLED = "afterglow.order.cancelled.v1"
TICKET_OPENED = "afterglow.ticket.opened.v1"
TICKET_RESOLVED = "afterglow.ticket.resolved.v1"
SURVEY_SENT = "afterglow.survey.sent.v1"
SURVEY_RESPONDED = "afterglow.survey.responded.v1"
