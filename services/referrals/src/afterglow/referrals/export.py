"""What the referrals service holds about one customer, for a data access request
(mounted with :func:`afterglow.kit.export.export_router`).

The customer's rows are their referral code, the orders we saw them place, and the
referrals they are a party to: as the advocate whose code brought a friend, as the
friend (referee) who ordered with someone's code, or as both (a self-referral).

No table here holds secrets or token hashes (``api_keys`` is the tenant's, not the
customer's, and is not read). What is left out is the *other* party's side of a
referral: the right of access must not adversely affect the rights of others (GDPR
art. 15(4)), and each side of a referral is the other's personal data.

Only rows under the customer's own id are read: rows pseudonymized by an erasure are no
longer theirs, and neither are orders of other customer ids that merely share a contact
hash with theirs (a shared family email must not pull one member's orders into the
other's export).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.kit.export import Records, by_customer, rows
from afterglow.referrals.models import Code, Order, Referral

CODES = Code.__table__
ORDERS = Order.__table__
REFERRALS = Referral.__table__

# Left out of the advocate's copy of a referral: the friend's customer id, the friend's
# order (its id, amounts and refunds: the advocate's reward is a fixed loyalty bonus and
# does not depend on them), the friend's discount code (a bearer value: the advocate
# could spend it) and the free-text detail (it can state the friend's order count or a
# reviewer's note about the friend). What the advocate keeps is what decided their own
# reward: the code, state, reason and the times (placed, fulfilled, due, decided) that
# the attribution window, cap and return window are measured on.
FRIEND_SIDE = (
    "referee_customer_id",
    "order_id",
    "order_total",
    "currency",
    "refunded_amount",
    "referee_reward_code",
    "detail",
)
# Left out of the friend's copy: the advocate's customer id (the friend knows the code
# they used, not whose account it is) and the detail, which can state the advocate's
# conversion count, their code's velocity or that the friend's contact matched the
# advocate's. The machine-readable reason of the decision stays.
ADVOCATE_SIDE = ("advocate_customer_id", "detail")


async def _referrals(
    session: AsyncSession, tenant_id: str, customer_id: str
) -> list[dict[str, Any]]:
    """One list, each row cut to the customer's side: the id column that is left
    (``advocate_customer_id``, ``referee_customer_id`` or both) says which side."""
    c = REFERRALS.c
    advocate = c.advocate_customer_id == customer_id
    referee = c.referee_customer_id == customer_id
    ours = c.tenant_id == tenant_id
    found = [
        # Both sides are the customer (self-referral by id): nobody else's data.
        *await rows(session, REFERRALS, ours, advocate, referee),
        *await rows(session, REFERRALS, ours, advocate, ~referee, exclude=FRIEND_SIDE),
        *await rows(session, REFERRALS, ours, referee, ~advocate, exclude=ADVOCATE_SIDE),
    ]
    return sorted(found, key=lambda row: (datetime.fromisoformat(row["placed_at"]), row["id"]))


async def collect(session: AsyncSession, tenant_id: str, customer_id: str) -> Records:
    # The email, phone and address hashes of orders stay: they are hashes of this
    # customer's own contact details, kept for fraud matching, i.e. data held about them.
    records = await by_customer(
        session, tenant_id, customer_id, [(ORDERS, ("placed_at", "order_id"))]
    )
    records[CODES.description] = await rows(
        session,
        CODES,
        CODES.c.tenant_id == tenant_id,
        CODES.c.advocate_customer_id == customer_id,
        order_by=["issued_at", "id"],
    )
    records[REFERRALS.description] = await _referrals(session, tenant_id, customer_id)
    return records
