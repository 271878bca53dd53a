"""orders-ingest's share of a customer's data export: the order book, raw deliveries
and the reward codes created in the shop for them.

Deliveries are found by the subjects they spoke about (recorded since migration 0003).
Their headers are left out: signatures, webhook ids and the sender's user agent are
about the platform, not the customer. Bodies are the payloads as received (blanked
ones read ``{}``: the customer or the shop was redacted).
"""

from __future__ import annotations

import json
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.ingest.models import (
    CustomerLink,
    Delivery,
    Escalation,
    Order,
    ShopDiscount,
    TicketCustomer,
)
from afterglow.kit.export import Records, rows

DELIVERY_COLUMNS_LEFT_OUT = ("headers", "dedupe_key")


async def collect(session: AsyncSession, tenant_id: str, customer_id: str) -> Records:
    orders = Order.__table__
    deliveries = Delivery.__table__
    discounts = ShopDiscount.__table__
    return {
        "orders": await rows(
            session,
            orders,
            orders.c.tenant_id == tenant_id,
            orders.c.subject == customer_id,
            order_by=["order_id"],
        ),
        # Support: the contacts linking them to helpdesk tickets, those tickets, and the
        # escalations (their survey comment) sent to the helpdesk.
        "customer_links": await _of(session, CustomerLink, tenant_id, customer_id),
        "ticket_customers": await _of(session, TicketCustomer, tenant_id, customer_id),
        "escalations": await _of(session, Escalation, tenant_id, customer_id),
        "deliveries": [
            _with_payload(row)
            for row in await rows(
                session,
                deliveries,
                deliveries.c.tenant_id == tenant_id,
                deliveries.c.subjects.contains([customer_id]),
                exclude=DELIVERY_COLUMNS_LEFT_OUT,
                order_by=["received_at", "id"],
            )
        ],
        # Reward codes created in the shop for them (the announcement left out: it is
        # the issuer's message, cleared once released).
        "shop_discounts": await rows(
            session,
            discounts,
            discounts.c.tenant_id == tenant_id,
            discounts.c.customer_id == customer_id,
            exclude=("announce",),
            order_by=["created_at", "code"],
        ),
    }


async def _of(
    session: AsyncSession, model: Any, tenant_id: str, customer_id: str
) -> list[dict[str, Any]]:
    table = model.__table__
    return await rows(
        session,
        table,
        table.c.tenant_id == tenant_id,
        table.c.subject == customer_id,
        order_by=[c.name for c in table.primary_key.columns],
    )


def _with_payload(row: dict[str, Any]) -> dict[str, Any]:
    """The body as JSON (it was JSON when accepted), not as an escaped string."""
    body = row.pop("body")
    try:
        row["payload"] = json.loads(body)
    except ValueError:
        row["payload"] = body
    return row
