"""Event handlers. Each runs in one transaction with the inbox insert (exactly once per
event id); natural keys (order id, refund id, survey id, referral id) also make a
re-sent business event with a new id change nothing."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from datetime import datetime
from typing import Any

from sqlalchemy import select, update
from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.events import CloudEvent, ConsumerGroup, on_batch
from afterglow.events.batch import each_in_order
from afterglow.events.catalog import (
    CustomerErasureRequested,
    Money,
    OrderCancelled,
    OrderDelivered,
    OrderFulfilled,
    OrderPlaced,
    OrderRefunded,
    ReferralConverted,
    ReviewSubmitted,
    SurveyResponded,
    is_anonymous_subject,
)
from afterglow.events.privacy import pseudonym
from afterglow.kit.app import Runtime
from afterglow.loyalty import domain, store
from afterglow.loyalty.models import (
    Account,
    EntryRow,
    LotRow,
    OrderRow,
    Redemption,
)


def _order_record(row: OrderRow) -> domain.OrderRecord:
    return domain.OrderRecord(
        order_id=row.order_id,
        total_minor=row.total_minor,
        currency=row.currency,
        placed_at=row.placed_at,
        refunded_minor=row.refunded_minor,
        refund_ids=list(row.refund_ids or []),
        fully_refunded=row.fully_refunded,
        cancelled=row.cancelled,
        fulfilled_at=row.fulfilled_at,
        delivered_at=row.delivered_at,
        fx_factor=row.fx_factor,
    )


def _pairs(amounts: list[Money]) -> list[tuple[str, int]]:
    return [(m.currency, m.amount) for m in amounts]


class Handlers:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    def now(self) -> datetime:
        return self.rt.clock.now()

    async def _order(self, session: AsyncSession, tenant: str, order_id: str) -> OrderRow | None:
        return await session.get(
            OrderRow, (tenant, order_id), with_for_update=True, populate_existing=True
        )

    @staticmethod
    def _available_at(
        rules: domain.ProgramRules, when: datetime, now: datetime, historical: bool
    ) -> datetime:
        """When an order's points become spendable: the return window after fulfilment.
        For a past order (historical) not before now: its window ended long ago, and
        expiry counts from availability, so the points would otherwise be credited,
        released and expired in the same second."""
        start = domain.available_at(rules, when)
        return max(start, now) if historical else start

    async def _earn_order(
        self,
        session: AsyncSession,
        rules: domain.ProgramRules,
        account: Account,
        wallet: domain.Wallet,
        order: OrderRow,
        now: datetime,
        historical: bool = False,
    ) -> list[domain.Entry]:
        """Credit an order's points (and the first-order bonus) as pending lots, at the
        rate and tier multiplier in force now, on the order's amount net of the refunds
        already recorded; the snapshot (rule and basis) goes on the lot."""
        order.earned = True
        rec = _order_record(order)
        multiplier = domain.tier_multiplier(rules, account.tier)
        snapshot = {
            **domain.rule_snapshot(rules, multiplier, account.tier),
            **domain.earning_basis(rec),
        }
        when = order.fulfilled_at or order.delivered_at
        start = self._available_at(rules, when, now, historical) if when else None
        entries: list[domain.Entry] = []
        # Earned on the net amount in the program's currency (0 when the order is
        # unpriced: its amount is never read as if it were in the program's currency).
        lots = [("order", domain.order_points(rules, rec.net_value_minor, multiplier))]
        if order.first_order and rules.bonuses.first_order:
            lots.append(("first_order", rules.bonuses.first_order))
        for source, points in lots:
            lot = domain.Lot(
                id=domain.new_id(),
                source=source,
                source_id=order.order_id,
                order_id=order.order_id,
                points=points,
                earned_at=now,
                available_at=start,
                rule_snapshot=snapshot,
            )
            entries += wallet.add_lot(lot, rules, now, reason=f"order {order.order_id}")
        return entries

    async def _order_step(
        self, session: AsyncSession, event: CloudEvent[Any], order: OrderRow, status: str
    ) -> None:
        """Earn when the order reaches an earning status; start the pending clock once
        the order is fulfilled (or delivered, when no fulfilment came)."""
        now = self.now()
        historical = bool(getattr(event.data, "historical", False))
        rules = await store.load_rules(session, event.tenantid)
        account = await store.lock_account(session, event.tenantid, order.customer_id, now, rules)
        assert account is not None
        wallet = await store.load_wallet(session, account, order.order_id)
        entries: list[domain.Entry] = []
        if not order.earned and domain.earns_at(rules, status, _order_record(order)):
            entries += await self._earn_order(
                session, rules, account, wallet, order, now, historical
            )
        when = order.fulfilled_at or order.delivered_at
        if when is not None:
            for lot in wallet.lots:
                if lot.order_id == order.order_id and lot.state == "pending":
                    wallet.schedule(lot, self._available_at(rules, when, now, historical))
                    entries += wallet.release(lot, rules, now)
        await store.persist(session, self.rt.outbox, account, wallet, entries, now)
        # A past order may still move the tier (spend is spend), but says nothing to
        # the customer: no tier-up message for history.
        await store.refresh_tier(
            session, self.rt.outbox, rules, account, now, event.id, notify=not historical
        )

    async def order_placed(self, session: AsyncSession, event: CloudEvent[OrderPlaced]) -> None:
        data: OrderPlaced = event.data
        if is_anonymous_subject(event.subject):
            # An order without a customer (no id, email or phone): no points account
            # for it; its later events find no order here and change nothing.
            return
        if await self._order(session, event.tenantid, data.order_id) is not None:
            return  # the same order announced twice
        now = self.now()
        rules = await store.load_rules(session, event.tenantid)
        account = await store.lock_account(session, event.tenantid, event.subject, now, rules)
        assert account is not None
        # The one rule, on the count ingest's order book set (catalog.is_first_order);
        # journeys' welcome branch applies the same rule to the same field. A past order
        # (history import, late delivery) is never a first order: the first-order bonus
        # welcomes a new customer, not one who bought years ago.
        first = not data.historical and data.is_first_order(
            earlier_orders_seen=account.orders_count
        )
        account.orders_count += 1
        amounts = _pairs(data.amounts())
        rates = (
            {}
            if any(cur == rules.currency for cur, _ in amounts)
            else await store.load_rates(session, event.tenantid, rules.currency)
        )
        pricing = domain.price_order(rules.currency, amounts, rates)
        other = next(((c, m) for c, m in amounts if c != pricing.source_currency), None)
        order = OrderRow(
            tenant_id=event.tenantid,
            order_id=data.order_id,
            customer_id=event.subject,
            total_minor=pricing.source_minor,
            currency=pricing.source_currency,
            other_currency=other[0] if other else None,
            other_minor=other[1] if other else None,
            value_currency=rules.currency,
            fx_factor=pricing.factor,
            fx_rate=pricing.rate,
            fx_as_of=pricing.rate_as_of,
            unpriced_reason=pricing.unpriced_reason,
            placed_at=data.placed_at,
            refunded_minor=0,
            refund_ids=[],
            fully_refunded=False,
            cancelled=False,
            # An imported order the tenant chose not to credit counts for spend and
            # tiers only: its earning is settled (nothing), so no later status earns it.
            earned=not data.earn_points,
            first_order=first,
        )
        session.add(order)
        await session.flush()
        if pricing.unpriced_reason is not None:
            await self._note_unpriced(
                session, account, rules, data.order_id, pricing.unpriced_reason, now
            )
        await self._order_step(session, event, order, "placed")

    async def _note_unpriced(
        self,
        session: AsyncSession,
        account: Account,
        rules: domain.ProgramRules,
        order_id: str,
        reason: str,
        now: datetime,
    ) -> None:
        """Record in the ledger (a zero entry) that an order or a refund could not be
        priced, with the reason: visible in the account's history, never silent."""
        wallet = await store.load_wallet(session, account)
        entry = wallet.note_unpriced(order_id, reason, now)
        await store.persist(session, self.rt.outbox, account, wallet, [entry], now)

    async def order_fulfilled(
        self, session: AsyncSession, event: CloudEvent[OrderFulfilled]
    ) -> None:
        data: OrderFulfilled = event.data
        order = await self._order(session, event.tenantid, data.order_id)
        if order is None or order.cancelled:
            return  # an order we never saw placed earns nothing
        order.fulfilled_at = order.fulfilled_at or data.fulfilled_at
        await self._order_step(session, event, order, "fulfilled")

    async def order_delivered(
        self, session: AsyncSession, event: CloudEvent[OrderDelivered]
    ) -> None:
        data: OrderDelivered = event.data
        order = await self._order(session, event.tenantid, data.order_id)
        if order is None or order.cancelled:
            return
        order.delivered_at = order.delivered_at or data.delivered_at
        await self._order_step(session, event, order, "delivered")

    async def _claw_order(
        self, session: AsyncSession, event: CloudEvent[Any], order: OrderRow, reason: str
    ) -> None:
        now = self.now()
        rules = await store.load_rules(session, event.tenantid)
        account = await store.lock_account(session, event.tenantid, order.customer_id, now, rules)
        assert account is not None
        wallet = await store.load_wallet(session, account, order.order_id)
        rec = _order_record(order)
        entries: list[domain.Entry] = []
        for lot in wallet.lots:
            if lot.order_id != order.order_id:
                continue
            # The lot's own points and the amount it was earned on: the rule that earned
            # the points decides, whatever the rules say today.
            target = domain.order_clawback_target(lot, rec)
            entries += wallet.clawback(lot, target, now, reason)
        await store.persist(session, self.rt.outbox, account, wallet, entries, now)
        await store.refresh_tier(session, self.rt.outbox, rules, account, now, event.id)

    async def order_refunded(self, session: AsyncSession, event: CloudEvent[OrderRefunded]) -> None:
        data: OrderRefunded = event.data
        order = await self._order(session, event.tenantid, data.order_id)
        if order is None:
            return
        rec = _order_record(order)
        other = (
            (order.other_currency, order.other_minor)
            if order.other_currency and order.other_minor is not None
            else None
        )
        # The refund in the order's own currency: never a refund in one currency
        # compared with a total in another.
        refunded = domain.refund_in_order_currency(
            order.currency, order.total_minor, other, _pairs(data.amounts())
        )
        if refunded is None and not data.full:
            if data.refund_id not in rec.refund_ids:
                await self._flag_unrelated_refund(session, event, order, data)
            return
        amount = refunded if refunded is not None else order.total_minor
        if not rec.record_refund(data.refund_id, amount, data.full):
            return  # this refund was already applied
        order.refund_ids = rec.refund_ids
        order.refunded_minor = rec.refunded_minor
        order.fully_refunded = rec.fully_refunded
        await self._claw_order(session, event, order, f"refund {data.refund_id}")

    async def _flag_unrelated_refund(
        self, session: AsyncSession, event: CloudEvent[Any], order: OrderRow, data: OrderRefunded
    ) -> None:
        """A partial refund in a currency the order does not state: no share of the order
        can be computed without guessing a rate, so nothing is clawed back; the refund is
        remembered (applied once) and flagged in the ledger with the reason."""
        order.refund_ids = [*(order.refund_ids or []), data.refund_id]
        now = self.now()
        rules = await store.load_rules(session, event.tenantid)
        account = await store.lock_account(session, event.tenantid, order.customer_id, now, rules)
        assert account is not None
        reason = (
            f"refund {data.refund_id} of {data.amount.amount} {data.amount.currency} cannot"
            f" be related to the order's total in {order.currency}: no points taken back"
        )
        await self._note_unpriced(session, account, rules, order.order_id, reason, now)

    async def order_cancelled(
        self, session: AsyncSession, event: CloudEvent[OrderCancelled]
    ) -> None:
        data: OrderCancelled = event.data
        order = await self._order(session, event.tenantid, data.order_id)
        if order is None or order.cancelled:
            return
        order.cancelled = True
        await self._claw_order(session, event, order, "order cancelled")

    async def _bonus(
        self,
        session: AsyncSession,
        event: CloudEvent[Any],
        source: str,
        source_id: str,
        points: int,
    ) -> None:
        if points <= 0 or await store.lot_exists(session, event.tenantid, source, source_id):
            return
        now = self.now()
        rules = await store.load_rules(session, event.tenantid)
        account = await store.lock_account(session, event.tenantid, event.subject, now, rules)
        assert account is not None
        wallet = await store.load_wallet(session, account)
        lot = domain.Lot(
            id=domain.new_id(),
            source=source,
            source_id=source_id,
            points=points,
            earned_at=now,
            available_at=now,
        )
        entries = wallet.add_lot(lot, rules, now, reason=f"{source} bonus")
        await store.persist(session, self.rt.outbox, account, wallet, entries, now)
        if rules.tier_basis == "points":
            await store.refresh_tier(session, self.rt.outbox, rules, account, now, event.id)

    async def review_submitted(
        self, session: AsyncSession, event: CloudEvent[ReviewSubmitted]
    ) -> None:
        data: ReviewSubmitted = event.data
        rules = await store.load_rules(session, event.tenantid)
        # data.rating is deliberately not read: no incentive may depend on it (FTC).
        await self._bonus(session, event, "review", data.review_id, domain.review_bonus(rules))

    async def survey_responded(
        self, session: AsyncSession, event: CloudEvent[SurveyResponded]
    ) -> None:
        data: SurveyResponded = event.data
        rules = await store.load_rules(session, event.tenantid)
        # Once per survey: an updated answer (is_update) finds the lot already there.
        await self._bonus(session, event, "survey", data.survey_id, rules.bonuses.survey)

    async def referral_converted(
        self, session: AsyncSession, event: CloudEvent[ReferralConverted]
    ) -> None:
        data: ReferralConverted = event.data
        rules = await store.load_rules(session, event.tenantid)
        # The subject is the advocate: the referrals service held the conversion until
        # its own checks passed, so the bonus is available at once.
        await self._bonus(session, event, "referral", data.referral_id, rules.bonuses.referral)

    async def erasure_requested(
        self, session: AsyncSession, event: CloudEvent[CustomerErasureRequested]
    ) -> None:
        data: CustomerErasureRequested = event.data
        tenant = event.tenantid
        if data.scope == "tenant":
            customers = list(
                (
                    await session.execute(
                        select(Account.customer_id).where(
                            Account.tenant_id == tenant, ~Account.erased
                        )
                    )
                ).scalars()
            )
        else:
            customers = [event.subject]
        for customer in customers:
            await pseudonymize(session, tenant, customer)


async def pseudonymize(session: AsyncSession, tenant: str, customer: str) -> None:
    """Replace the customer key everywhere with a one-way pseudonym; balances, entries and
    metrics stay (aggregates survive erasure). Free-text reasons may name the person."""
    alias = pseudonym(tenant, customer)
    for model in (Account, LotRow, OrderRow, Redemption):
        await session.execute(
            update(model)
            .where(model.tenant_id == tenant, model.customer_id == customer)
            .values(customer_id=alias)
        )
    await session.execute(
        update(EntryRow)
        .where(EntryRow.tenant_id == tenant, EntryRow.customer_id == customer)
        .values(customer_id=alias, reason=None)
    )
    await session.execute(
        update(Account)
        .where(Account.tenant_id == tenant, Account.customer_id == alias)
        .values(erased=True)
    )


ONE_BY_ONE: dict[type, Callable[[Handlers, AsyncSession, Any], Awaitable[None]]] = {
    OrderPlaced: Handlers.order_placed,
    OrderFulfilled: Handlers.order_fulfilled,
    OrderDelivered: Handlers.order_delivered,
    OrderRefunded: Handlers.order_refunded,
    OrderCancelled: Handlers.order_cancelled,
    ReviewSubmitted: Handlers.review_submitted,
    SurveyResponded: Handlers.survey_responded,
    ReferralConverted: Handlers.referral_converted,
    CustomerErasureRequested: Handlers.erasure_requested,
}


async def apply(h: Handlers, session: AsyncSession, events: list[CloudEvent[Any]]) -> None:
    """Lock order: the batch's existing accounts first, by (tenant, customer), in one
    statement; then each event in partition order. The rules are read once per tenant
    per batch."""
    session.info[store.RULES_CACHE] = {}
    try:
        await store.lock_accounts(
            session, {(e.tenantid, e.subject) for e in events if not _tenant_wide(e)}
        )
        await each_in_order(session, events, lambda s, e: ONE_BY_ONE[type(e.data)](h, s, e))
    finally:
        session.info.pop(store.RULES_CACHE, None)


def _tenant_wide(event: CloudEvent[Any]) -> bool:
    return isinstance(event.data, CustomerErasureRequested) and event.data.scope == "tenant"


# One group for every topic: on the embedded broker each group costs seconds to join.
# One batch function for every class, so the batch's accounts are locked together.
CONSUMERS = (
    ConsumerGroup("ledger", *(on_batch(cls, apply) for cls in ONE_BY_ONE), context=Handlers),
)
