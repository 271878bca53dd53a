"""AfterShip: a tracking update tagged Delivered becomes order.delivered."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from afterglow.events import catalog as c
from afterglow.ingest.domain import (
    Emit,
    MissingField,
    Normalized,
    parse_time,
    require,
)


def normalize_aftership(p: Mapping[str, Any]) -> tuple[Normalized, str | None]:
    """Returns the events and the platform order id the tracking belongs to (the caller
    turns it into Afterglow's order id)."""
    msg = require(p, "msg")
    tag = str(msg.get("tag") or "")
    platform_order_id = msg.get("order_id") or msg.get("order_number")
    out = Normalized()
    if tag.lower() == "delivered":
        if not platform_order_id:
            raise MissingField("msg.order_id")
        delivered = msg.get("shipment_delivery_date") or msg.get("updated_at")
        out.emits.append(
            Emit(
                c.OrderDelivered(
                    order_id=str(platform_order_id),  # resolved by the caller
                    delivered_at=parse_time(delivered, "msg.shipment_delivery_date"),
                    reported_by="aftership",
                ),
                None,
            )
        )
    return out, str(platform_order_id) if platform_order_id else None
