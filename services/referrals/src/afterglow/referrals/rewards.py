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

from afterglow.events.catalog import DiscountRequested, DiscountRevokeRequested, MessageRequested

# The friend's half of the double-sided reward: a percentage off their next order, for
# a month (ReferralCandy's and Friendbuy's common default).
REFEREE_PERCENT_OFF = 10
REFEREE_VALID_DAYS = 30


def referee_discount(
    code: str, referral_id: str, now: datetime, announce: MessageRequested
) -> DiscountRequested:
    return DiscountRequested(
        code=code,
        title=f"Referral reward: {REFEREE_PERCENT_OFF}% off",
        value_kind="percentage",
        percent=REFEREE_PERCENT_OFF,
        starts_at=now,
        ends_at=now + timedelta(days=REFEREE_VALID_DAYS),
        reference=referral_id,
        announce=announce,
    )


def clawback(code: str, now: datetime) -> DiscountRevokeRequested:
    return DiscountRevokeRequested(code=code, reason="clawback", requested_at=now)
