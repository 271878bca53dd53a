"""What feedback holds about one customer of one tenant, for a data access request.

Every table with the customer's rows is exported whole: no column is left out, because
none of them is a secret. Survey and review links are HMAC-signed tokens computed on
demand from ``FEEDBACK_TOKEN_SECRET`` and never stored, so there is no token or hash
column to exclude. ``tenant_settings`` is the shop's, and the platform tables (outbox,
inbox, api_keys) hold plumbing and key hashes, not the customer's data.

An erasure replaces the customer id with ``erased`` (:func:`service.erase`; feedback
does not use ``afterglow.events.privacy.pseudonym``), so erased rows no longer match the
customer and are not exported.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.events.privacy import is_pseudonym
from afterglow.feedback import service
from afterglow.feedback.models import (
    Order,
    OrderItem,
    ReferralLink,
    Response,
    Review,
    Survey,
    SurveyReminder,
)
from afterglow.kit.export import Records, by_customer, through_parent

SURVEYS, ORDERS = Survey.__table__, Order.__table__
# Tables with the customer's id in their rows, each in a stable order.
BY_CUSTOMER = (
    (SURVEYS, ("sent_at", "id")),
    (Response.__table__, ("responded_at", "id")),
    (ORDERS, ("placed_at", "order_id")),
    (ReferralLink.__table__, ()),  # one link per customer (primary key)
    (Review.__table__, ("created_at", "id")),
)


def erased(customer_id: str) -> bool:
    """``erased`` is every erased customer of the tenant at once, not a customer:
    exporting it would hand out rows that belong to no one who can ask for them."""
    return customer_id == service.ERASED or is_pseudonym(customer_id)


async def collect(session: AsyncSession, tenant_id: str, customer_id: str) -> Records:
    records = await by_customer(session, tenant_id, customer_id, BY_CUSTOMER)
    # Reminders and order lines carry no customer id: they are the customer's through
    # their survey and their order.
    records["survey_reminders"] = await through_parent(
        session,
        tenant_id,
        customer_id,
        SurveyReminder.__table__,
        "survey_id",
        SURVEYS,
        "id",
        order_by=["requested_at", "request_id"],
    )
    records["order_items"] = await through_parent(
        session,
        tenant_id,
        customer_id,
        OrderItem.__table__,
        "order_id",
        ORDERS,
        "order_id",
        order_by=["order_id", "line_no"],
    )
    return records
