"""What the journey engine and messaging hold about one customer of one tenant, table by
table, for ``GET /v1/customers/{id}/export`` (the route itself is afterglow.kit.export).

Left out because they are the tenant's, not the customer's: ``journey_definitions``,
``message_templates`` and ``messaging_settings`` (the tenant's endpoint with its sealed
signing secret, quiet hours, caps). Left out as transport: the platform's ``outbox`` and
``inbox`` (copies of events on their way, no tenant column; sent rows are purged within a
day) and ``api_keys``. No column of an exported table is left out: none holds a secret.
Unsubscribe links are signed when a message goes out and never stored (the signing key
is a setting, not a row).

Erasure here keeps the customer's own id: it wipes contact details, orders and message
variables, and keeps counts, transitions and unsubscribe marks (``handlers.erase``,
``messaging.store.erase``). Those rows are still keyed to the customer, so an erased
customer's export shows what remains rather than nothing.

Every table is exported whole for the customer: it grows with their orders and messages,
and a right-of-access answer that stops at a limit would be wrong, not merely short.
"""

from __future__ import annotations

from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.journeys.messaging.models import (
    Message,
    MessageContact,
    MessageDecision,
    MessageOrder,
)
from afterglow.journeys.models import (
    CustomerProfile,
    GoalConversion,
    JourneyInstance,
    JourneyTimer,
    JourneyTransition,
)
from afterglow.kit.export import Records, by_customer, through_parent

# Every table keyed by the customer's id, with a stable order (time, then a unique key).
BY_CUSTOMER = (
    (CustomerProfile.__table__, ("customer_id",)),
    (JourneyInstance.__table__, ("started_at", "id")),
    # identity: the order the engine wrote the history in
    (JourneyTransition.__table__, ("id",)),
    (JourneyTimer.__table__, ("due_at", "id")),
    (GoalConversion.__table__, ("converted_at", "instance_id")),
    # address, time zone, consent, unsubscribe marks
    (MessageContact.__table__, ("customer_id",)),
    (MessageOrder.__table__, ("placed_at", "order_id")),
    (Message.__table__, ("created_at", "id")),
)


async def collect(session: AsyncSession, tenant_id: str, customer_id: str) -> Records:
    records = await by_customer(session, tenant_id, customer_id, BY_CUSTOMER)
    # Decisions carry no customer id: they are the customer's through their messages.
    records["message_decisions"] = await through_parent(
        session,
        tenant_id,
        customer_id,
        MessageDecision.__table__,
        "message_id",
        Message.__table__,
        "id",
        order_by=["id"],
    )
    return records
