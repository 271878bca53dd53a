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

from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.events import CloudEvent
from afterglow.events.catalog import DiscountFailed, DiscountRequested, MessageRequested, Money
from afterglow.events.subscriptions import ConsumerGroup, on_batch
from afterglow.kit.app import Runtime
from afterglow.loyalty import store
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


# --- answers from the shop ------------------------------------------------------------


class RewardAnswers:
    """``discount.failed``: the code could not be created in the shop, so the member
    never heard of it; the points spent on it go back (an ``adjust`` credit whose lot
    id is derived from the code, so a repeated answer credits nothing more).

    Rare (a shop refusing or unreachable for hours), so handled one event at a time."""

    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    async def discount_failed(
        self, session: AsyncSession, events: list[CloudEvent[DiscountFailed]]
    ) -> None:
        now = self.rt.clock.now()
        for e in events:
            redemption = await store.redemption_by_id(session, e.tenantid, e.data.reference)
            if redemption is None or redemption.code.upper() != e.data.code.upper():
                continue  # another issuer's code (a referral reward)
            rules = await store.load_rules(session, e.tenantid)
            account = await store.lock_account(
                session, e.tenantid, redemption.customer_id, now, rules, create=False
            )
            if account is None:
                continue
            refund_lot = f"reward-refund:{redemption.id}"
            if await store.lot_exists_by_id(session, refund_lot):
                continue  # given back already (the same answer under another event id)
            wallet = await store.load_wallet(session, account)
            entries = wallet.adjust(
                redemption.points,
                rules,
                now,
                f"reward {redemption.reward_id} could not be created in the shop: {e.data.reason}"[
                    :500
                ],
                "system:discount.failed",
                lot_id=refund_lot,
            )
            await store.persist(session, self.rt.outbox, account, wallet, entries, now)


# discount.failed: a reward code the shop could not create gives its points back.
REWARDS = ConsumerGroup(
    "rewards", on_batch(DiscountFailed, RewardAnswers.discount_failed), context=RewardAnswers
)
