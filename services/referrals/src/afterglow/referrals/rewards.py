"""The referee's reward as a code in the tenant's shop.

Only orders-ingest holds the shop's credentials, so the code is asked of it by event
(``discount.requested``), carrying the message that announces it: ingest releases that
message once the code exists in the shop, so the friend is never sent a code the
checkout refuses. A conversion rejected after the code was issued (the referred order
refunded or cancelled, a review that says no) claws the code back
(``discount.revoke_requested``): it is disabled in the shop unless already spent.
"""

from __future__ import annotations

from datetime import datetime, timedelta

from afterglow.events.catalog import (
    DiscountRequested,
    DiscountRevokeRequested,
    MessageRequested,
    Money,
)
from afterglow.referrals.domain import RefereeReward


def referee_discount(
    code: str,
    referral_id: str,
    now: datetime,
    announce: MessageRequested,
    reward: RefereeReward,
) -> DiscountRequested:
    """The tenant's reward (its settings, else domain.DEFAULT_REFEREE_REWARD) as the
    request for the code."""
    fixed = reward.kind == "fixed_amount"
    return DiscountRequested(
        code=code,
        title=f"Referral reward: {reward.label()}",
        value_kind=reward.kind,
        percent=None if fixed else reward.percent,
        amount=Money(amount=reward.amount, currency=reward.currency)
        if fixed and reward.amount is not None and reward.currency is not None
        else None,
        starts_at=now,
        ends_at=now + timedelta(days=reward.valid_days),
        reference=referral_id,
        announce=announce,
    )


def clawback(code: str, now: datetime) -> DiscountRevokeRequested:
    return DiscountRevokeRequested(code=code, reason="clawback", requested_at=now)
