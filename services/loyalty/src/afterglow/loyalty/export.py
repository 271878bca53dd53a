"""Loyalty's share of a customer's data export (``afterglow.kit.export``).

Every loyalty table about a customer carries the customer id in its own row, so each is
read by (tenant, customer) alone, on the index it already has. An erasure replaced the
customer id by its pseudonym in all of them, so the customer's erased rows no longer
match. Not exported:
``program_rules`` (the tenant's program, about no one), ``api_keys`` (the merchant's
credentials), ``outbox``/``inbox`` (transport: event bytes kept a day after sending and
event ids; the lasting facts they carry are the rows below). A referral stores only its
id on the advocate's lot, never the friend, so a friend has nothing here.

No column is excluded: there is no secret in these rows. ``redemptions.code`` is the
customer's own reward code (it was sent to them); ``redemptions.request_hash`` is a
SHA-256 of the public request body (the reward id), an idempotency fingerprint, not a
credential; ``entries.actor`` names the API key id, never the key.
"""

from __future__ import annotations

from sqlalchemy import Table
from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.events.privacy import is_pseudonym
from afterglow.kit.export import Records, rows
from afterglow.loyalty.models import Account, Base, EntryRow, LotRow, OrderRow, Redemption

# Tables keyed by customer, each with the columns that order its rows stably (time, then
# a unique id; entries have their insertion sequence). Everything of one customer is
# exported: a ledger is only meaningful whole, and each table is read on an index.
CUSTOMER_TABLES: tuple[tuple[type[Base], tuple[str, ...]], ...] = (
    (Account, ("customer_id",)),
    (OrderRow, ("placed_at", "order_id")),
    (LotRow, ("earned_at", "id")),
    (EntryRow, ("seq",)),
    (Redemption, ("created_at", "id")),
)


def _table(model: type[Base]) -> Table:
    table = model.__table__
    assert isinstance(table, Table)  # declarative models map to a Table, typed FromClause
    return table


async def collect(session: AsyncSession, tenant_id: str, customer_id: str) -> Records:
    """Every row loyalty holds about ``customer_id`` of ``tenant_id``, per table."""
    if is_pseudonym(customer_id):
        # An erasure's alias stands for no one any more: asking for it by name must not
        # hand out the rows the erasure took away from the customer.
        return {_table(model).name: [] for model, _ in CUSTOMER_TABLES}
    records: Records = {}
    for model, order_by in CUSTOMER_TABLES:
        table = _table(model)
        records[table.name] = await rows(
            session,
            table,
            table.c.tenant_id == tenant_id,
            table.c.customer_id == customer_id,
            order_by=order_by,
        )
    return records
