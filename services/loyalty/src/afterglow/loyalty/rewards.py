"""A redeemed reward as a code in the tenant's shop.

Only orders-ingest holds the shop's credentials, so the code is asked of it by event
(``discount.requested``), carrying the message that announces it: ingest releases that
message once the code exists in the shop (Shopify ``discountCodeBasicCreate``,
WooCommerce or BigCommerce coupons), so the member is never sent a code the checkout
refuses. Ingest answers ``discount.created``, ``discount.failed`` or, later,
``discount.used`` when an order spends it.
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Literal

from afterglow.events.catalog import DiscountRequested, MessageRequested, Money
from afterglow.loyalty.domain import Reward

# How long a reward code stays valid in the shop; past it, ingest disables it there.
REWARD_VALID_DAYS = 365

_KINDS: dict[str, Literal["fixed_amount", "percentage", "free_shipping"]] = {
    "fixed_discount": "fixed_amount",
    "percentage": "percentage",
    "free_shipping": "free_shipping",
}


def shop_discount(
    code: str,
    reward: Reward,
    currency: str,
    redemption_id: str,
    now: datetime,
    announce: MessageRequested,
) -> DiscountRequested:
    kind = _KINDS[reward.kind]
    amount = reward.amount_minor if kind == "fixed_amount" else None
    return DiscountRequested(
        code=code,
        title=f"Loyalty reward: {reward.name}"[:255],
        value_kind=kind,
        amount=Money(amount=amount, currency=currency) if amount is not None else None,
        percent=reward.percent if kind == "percentage" else None,
        starts_at=now,
        ends_at=now + timedelta(days=REWARD_VALID_DAYS),
        reference=redemption_id,
        announce=announce,
    )
