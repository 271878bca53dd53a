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

from afterglow.kit.db import Session
from afterglow.kit.export import Records, by_customer
from afterglow.loyalty.models import Account, EntryRow, LotRow, OrderRow, Redemption

# Tables keyed by customer, each with the columns that order its rows stably (time, then
# a unique id; entries have their insertion sequence). Everything of one customer is
# exported: a ledger is only meaningful whole, and each table is read on an index.
CUSTOMER_TABLES = (
    (Account.__table__, ("customer_id",)),
    (OrderRow.__table__, ("placed_at", "order_id")),
    (LotRow.__table__, ("earned_at", "id")),
    (EntryRow.__table__, ("seq",)),
    (Redemption.__table__, ("created_at", "id")),
)


async def collect(session: Session, tenant_id: str, customer_id: str) -> Records:
    """Every row loyalty holds about ``customer_id`` of ``tenant_id``, per table."""
    return await by_customer(session, tenant_id, customer_id, CUSTOMER_TABLES)
