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

from typing import Any

from sqlalchemy import ColumnElement, Table, select
from sqlalchemy.ext.asyncio import AsyncSession

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
from afterglow.kit.export import Records, rows


def _table(model: Any) -> Table:
    table = model.__table__
    assert isinstance(table, Table)  # declarative __table__ is typed as a FromClause
    return table


SURVEYS = _table(Survey)
SURVEY_REMINDERS = _table(SurveyReminder)
RESPONSES = _table(Response)
ORDERS = _table(Order)
ORDER_ITEMS = _table(OrderItem)
REFERRAL_LINKS = _table(ReferralLink)
REVIEWS = _table(Review)
EXPORTED = (
    SURVEYS,
    SURVEY_REMINDERS,
    RESPONSES,
    ORDERS,
    ORDER_ITEMS,
    REFERRAL_LINKS,
    REVIEWS,
)


async def collect(session: AsyncSession, tenant_id: str, customer_id: str) -> Records:
    if customer_id == service.ERASED:
        # ``erased`` is every erased customer of the tenant at once, not a customer:
        # exporting it would hand out rows that belong to no one who can ask for them.
        return {table.name: [] for table in EXPORTED}

    def own(table: Table) -> list[ColumnElement[bool]]:
        return [table.c.tenant_id == tenant_id, table.c.customer_id == customer_id]

    # Reminders and order lines carry no customer id: they are the customer's through
    # their survey and their order.
    own_surveys = select(SURVEYS.c.id).where(*own(SURVEYS))
    own_orders = select(ORDERS.c.order_id).where(*own(ORDERS))
    return {
        SURVEYS.name: await rows(session, SURVEYS, *own(SURVEYS), order_by=["sent_at", "id"]),
        SURVEY_REMINDERS.name: await rows(
            session,
            SURVEY_REMINDERS,
            SURVEY_REMINDERS.c.tenant_id == tenant_id,
            SURVEY_REMINDERS.c.survey_id.in_(own_surveys),
            order_by=["requested_at", "request_id"],
        ),
        RESPONSES.name: await rows(
            session, RESPONSES, *own(RESPONSES), order_by=["responded_at", "id"]
        ),
        ORDERS.name: await rows(session, ORDERS, *own(ORDERS), order_by=["placed_at", "order_id"]),
        ORDER_ITEMS.name: await rows(
            session,
            ORDER_ITEMS,
            ORDER_ITEMS.c.tenant_id == tenant_id,
            ORDER_ITEMS.c.order_id.in_(own_orders),
            order_by=["order_id", "line_no"],
        ),
        # One link per customer (primary key), so no order to fix.
        REFERRAL_LINKS.name: await rows(session, REFERRAL_LINKS, *own(REFERRAL_LINKS)),
        REVIEWS.name: await rows(session, REVIEWS, *own(REVIEWS), order_by=["created_at", "id"]),
    }
