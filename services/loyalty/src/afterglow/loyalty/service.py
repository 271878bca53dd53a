"""The loyalty use cases, shared by the routes (api.py, metrics_api.py) and the event
handlers (handlers.py): redeem, adjust, earn from an order and take back on a refund or
a cancellation, bonuses, erasure, the program's rules, exchange rates and metrics.

Everything here runs in the caller's transaction (the request's session or the
consumer's inbox transaction) and adds the events it causes to the outbox in that same
transaction; nothing here commits. Every statement is in :mod:`.store`, every rule in
:mod:`.domain`.
"""

from __future__ import annotations

import hashlib
import json
import secrets
from collections import Counter
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.events import CloudEvent, Outbox, derived_event_id
from afterglow.events.catalog import (
    MessageRequested,
    Money,
    OrderCancelled,
    OrderDelivered,
    OrderFulfilled,
    OrderPlaced,
    OrderRefunded,
    PointsRedeemed,
)
from afterglow.kit.clock import Clock
from afterglow.kit.errors import AppError, NotFound, Unprocessable
from afterglow.loyalty import domain, rewards, store
from afterglow.loyalty.models import Account, EntryRow, ExchangeRateRow, OrderRow

# The most unpriced orders an account shows (the latest ones).
UNPRICED_SHOWN = 50


class InsufficientPointsError(AppError):
    status_code, code = 409, "insufficient_points"


@dataclass(frozen=True)
class AccountSummary:
    """An account as the API shows it: balances, the program, the tier's progress and
    the latest orders that earned nothing for want of a price."""

    account: Account
    rules: domain.ProgramRules
    progress: domain.TierProgress
    unpriced: list[OrderRow]


@dataclass(frozen=True)
class Adjusted:
    entry_id: str
    points: int
    available: int
    pending: int
    debt: int


_CODE_ALPHABET = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"  # unambiguous; 32 characters


def reward_code() -> str:
    # 12 characters of an unambiguous alphabet: 60 bits, unique by constraint too. One
    # read of the system's randomness, not one per character (secrets.choice twelve
    # times was ~2% of a redemption's CPU); 256 is a multiple of 32, so ``b % 32``
    # picks every character with the same chance.
    return "AG-" + "".join(_CODE_ALPHABET[b % 32] for b in secrets.token_bytes(12))


def order_record(row: OrderRow) -> domain.OrderRecord:
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


def _available_at(
    rules: domain.ProgramRules, when: datetime, now: datetime, historical: bool
) -> datetime:
    """When an order's points become spendable: the return window after fulfilment.
    For a past order (historical) not before now: its window ended long ago, and
    expiry counts from availability, so the points would otherwise be credited,
    released and expired in the same second."""
    start = domain.available_at(rules, when)
    return max(start, now) if historical else start


@dataclass(frozen=True)
class Placed:
    """One order.placed event of a run: the customer's order and its event id (cause)."""

    tenant: str
    customer: str
    data: OrderPlaced
    cause: str


def _needs_rates(rules: domain.ProgramRules, data: OrderPlaced) -> bool:
    """The tenant's rates are read only for an order stating no amount in the program's
    currency."""
    return not any(m.currency == rules.currency for m in data.amounts())


def _new_order(
    rules: domain.ProgramRules,
    account: Any,
    data: OrderPlaced,
    rates: dict[str, domain.ExchangeRate],
) -> Any:
    """The order row of a new order as plain attributes (every column of OrderRow; an
    ORM object is ``OrderRow(**vars(it))``), priced in the program's currency; counts
    it on the account. Plain: a run of order.placed events builds thousands, and the
    ORM's instrumented construction was the largest cost of that run's Python."""
    # The one rule, on the count ingest's order book set (catalog.is_first_order);
    # journeys' welcome branch applies the same rule to the same field. A past order
    # (history import, late delivery) is never a first order: the first-order bonus
    # welcomes a new customer, not one who bought years ago.
    first = not data.historical and data.is_first_order(earlier_orders_seen=account.orders_count)
    account.orders_count += 1
    amounts = _pairs(data.amounts())
    pricing = domain.price_order(rules.currency, amounts, rates)
    other = next(((c, m) for c, m in amounts if c != pricing.source_currency), None)
    return SimpleNamespace(
        tenant_id=account.tenant_id,
        order_id=data.order_id,
        customer_id=account.customer_id,
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
        fulfilled_at=None,
        delivered_at=None,
        refunded_minor=0,
        refund_ids=[],
        fully_refunded=False,
        cancelled=False,
        # An imported order the tenant chose not to credit counts for spend and
        # tiers only: its earning is settled (nothing), so no later status earns it.
        earned=not data.earn_points,
        first_order=first,
    )


def _with_order(
    rules: domain.ProgramRules,
    figure: tuple[int, datetime | None],
    order: OrderRow,
    new_lots: list[domain.Lot],
    now: datetime,
) -> tuple[int, datetime | None]:
    """The account's tier figure (store.qualifying_value: value, oldest part) once a new
    order and its new lots are added, as the SQL would count them after their insert."""
    value, oldest = figure
    since = domain.add_months(now, -rules.tier_window_months)
    parts: list[tuple[int, datetime]] = []
    if rules.tier_basis == "spend":
        # A new order: nothing refunded or cancelled yet, priced in the program's currency.
        if order.fx_factor is not None and order.placed_at > since:
            spent = domain.convert_minor(order.total_minor, order.fx_factor)
            parts.append((spent, order.placed_at))
    else:
        parts += [
            (lot.points - lot.clawed, lot.earned_at)
            for lot in new_lots
            if lot.state != "void" and lot.source != "adjust" and lot.earned_at > since
        ]
    for points, at in parts:
        value += points
        oldest = at if oldest is None or at < oldest else oldest
    return value, oldest


@dataclass(frozen=True)
class Changed:
    """One event of a run about an order already placed (fulfilled, delivered, refunded
    or cancelled) and its event id (cause)."""

    tenant: str
    data: OrderFulfilled | OrderDelivered | OrderRefunded | OrderCancelled
    cause: str


def _lots_of(wallet: domain.Wallet, order_id: str) -> list[domain.Lot]:
    """The order's lots in the order they are released and clawed back: its own points,
    then its first-order bonus. A fixed order, not the order rows came back in: which
    lot repays a debt first, and which lots a clawback spends after the clawed one, then
    do not depend on a query plan."""
    return sorted(
        (lot for lot in wallet.lots if lot.order_id == order_id),
        key=lambda lot: (lot.earned_at, lot.source != "order", lot.id),
    )


def _record_refund(
    order: OrderRow, rec: domain.OrderRecord, refunded: int | None, data: OrderRefunded
) -> bool:
    """Count the refund on the order (the whole order when its amount is unknown and
    the refund is full); False when this refund id was applied already."""
    amount = refunded if refunded is not None else order.total_minor
    if not rec.record_refund(data.refund_id, amount, data.full):
        return False
    order.refund_ids = rec.refund_ids
    order.refunded_minor = rec.refunded_minor
    order.fully_refunded = rec.fully_refunded
    return True


def _refund_amount(order: OrderRow, data: OrderRefunded) -> int | None:
    """The refund in the order's own currency (never a refund in one currency compared
    with a total in another); None when it cannot be related to the order's total."""
    other = (
        (order.other_currency, order.other_minor)
        if order.other_currency and order.other_minor is not None
        else None
    )
    return domain.refund_in_order_currency(
        order.currency, order.total_minor, other, _pairs(data.amounts())
    )


def _unrelated_refund_reason(order: OrderRow, data: OrderRefunded) -> str:
    return (
        f"refund {data.refund_id} of {data.amount.amount} {data.amount.currency} cannot"
        f" be related to the order's total in {order.currency}: no points taken back"
    )


def _tier_parts(
    rules: domain.ProgramRules, order: OrderRow, lots: list[domain.Lot], now: datetime
) -> list[tuple[int, datetime]]:
    """What one order adds to its account's tier figure (store.qualifying_value), as
    (amount, when) parts: its net spend in the program's currency, or the points of its
    lots, with the same conditions as the SQL. Only an event about the order changes
    them, so a run keeps each account's figure by adding the difference."""
    since = domain.add_months(now, -rules.tier_window_months)
    if rules.tier_basis == "spend":
        counted = (
            order.value_currency == rules.currency
            and order.fx_factor is not None
            and not order.cancelled
            and not order.fully_refunded
            and order.placed_at > since
        )
        if not counted or order.fx_factor is None:
            return []
        net = max(order.total_minor - order.refunded_minor, 0)
        return [(domain.convert_minor(net, order.fx_factor), order.placed_at)]
    return [
        (lot.points - lot.clawed, lot.earned_at)
        for lot in lots
        if lot.order_id == order.order_id
        and lot.state != "void"
        and lot.source != "adjust"
        and lot.earned_at > since
    ]


@dataclass
class _Run:
    """A run of order events in memory: what it read once (orders, accounts, their
    wallets and tier figures) and what it writes once (entries, events; the lots from
    the wallets, the orders with store.save_orders, the accounts by the session's flush)."""

    now: datetime
    rules: dict[str, domain.ProgramRules]
    orders: dict[tuple[str, str], OrderRow]
    accounts: dict[tuple[str, str], Account]
    wallets: dict[tuple[str, str], domain.Wallet]
    figures: dict[tuple[str, str], tuple[int, datetime | None]]
    # Accounts whose tier figure lost a part that may have been its oldest: when the
    # tier is next reviewed (tier_review_at) is read again once the run is written.
    recount: set[tuple[str, str]] = field(default_factory=set)
    entries: list[dict[str, Any]] = field(default_factory=list)
    events: list[CloudEvent[Any]] = field(default_factory=list)

    def order(self, c: Changed) -> OrderRow:
        return self.orders[(c.tenant, c.data.order_id)]

    def settle(self, key: tuple[str, str], entries: list[domain.Entry]) -> None:
        """store.persist's entries, balances and events, kept for the run's writes."""
        account, wallet = self.accounts[key], self.wallets[key]
        self.entries += [
            store.entry_row(account.tenant_id, account.customer_id, e) for e in entries
        ]
        self.events += store.settle(account, wallet, entries, self.now)

    def parts(self, key: tuple[str, str], order: OrderRow) -> list[tuple[int, datetime]]:
        """The order's part of its account's tier figure now (_tier_parts)."""
        return _tier_parts(self.rules[key[0]], order, self.wallets[key].lots, self.now)

    def retier(
        self,
        key: tuple[str, str],
        before: list[tuple[int, datetime]],
        order: OrderRow,
        cause: str,
        notify: bool,
    ) -> None:
        """store.refresh_tier after an event about ``order``, whose tier parts were
        ``before``: the figure moves by the difference."""
        rules, account = self.rules[key[0]], self.accounts[key]
        after = self.parts(key, order)
        value, oldest = self.figures[key]
        value += sum(v for v, _ in after) - sum(v for v, _ in before)
        gone = Counter(at for _, at in before) - Counter(at for _, at in after)
        if oldest is not None and oldest in gone:
            self.recount.add(key)
        for _, at in after:
            oldest = at if oldest is None or at < oldest else oldest
        self.figures[key] = (value, oldest)
        self.events += store.tier_events(
            rules, account, value, oldest, self.now, cause, notify=notify
        )

    def lot_rows(self) -> list[dict[str, Any]]:
        rows = []
        for (tenant, customer), wallet in self.wallets.items():
            rows += [
                store.lot_row(tenant, customer, lot)
                for lot in wallet.lots
                if lot.id in wallet.dirty
            ]
            wallet.dirty.clear()
        return rows


def no_account(customer: str) -> NotFound:
    return NotFound(f"no loyalty account for customer {customer!r}", field="customer")


def key_reused() -> Unprocessable:
    return Unprocessable(
        "this Idempotency-Key was used with a different request body",
        field="Idempotency-Key",
        code="idempotency_key_reused",
    )


def unknown_reward(reward_id: str) -> Unprocessable:
    return Unprocessable(f"unknown reward {reward_id!r}", field="reward_id")


def redemption_request_hash(reward_id: str) -> str:
    """What an Idempotency-Key is bound to: the request's body (its reward)."""
    return hashlib.sha256(json.dumps({"reward_id": reward_id}).encode()).hexdigest()


@dataclass(frozen=True)
class RedemptionMade:
    """A redemption decided (points taken from the wallet): its answer, its row's values
    and its events (points.redeemed, and the shop's code asked of orders-ingest carrying
    the announcement). Built the same way by the request path and the group commit."""

    tenant: str
    customer: str
    idempotency_key: str
    reward: domain.Reward
    now: datetime
    result: dict[str, Any]
    events: list[CloudEvent[Any]]

    def row(self, request_hash: str) -> dict[str, Any]:
        """The redemptions row (its answer too, replayed for the same Idempotency-Key)."""
        return {
            "id": self.result["redemption_id"],
            "tenant_id": self.tenant,
            "customer_id": self.customer,
            "idempotency_key": self.idempotency_key,
            "request_hash": request_hash,
            "reward_id": self.reward.id,
            "points": self.reward.points_price,
            "code": self.result["code"],
            "response": self.result,
            "created_at": self.now,
        }


def redemption_made(
    tenant: str,
    customer: str,
    rules: domain.ProgramRules,
    reward: domain.Reward,
    redemption_id: str,
    wallet: domain.Wallet,
    now: datetime,
    idempotency_key: str,
) -> RedemptionMade:
    """The answer and the events of a redemption the wallet has just paid for."""
    code = reward_code()
    result = {
        "redemption_id": redemption_id,
        "reward": reward.model_dump(mode="json"),
        "points": reward.points_price,
        "code": code,
        "balance": {"available": wallet.spendable, "pending": wallet.pending},
        "redeemed_at": now.isoformat(),
    }
    redeemed = PointsRedeemed(
        redemption_id=redemption_id,
        points=reward.points_price,
        reward_id=reward.id,
        reward_code=code,
        balance_available=wallet.spendable,
        redeemed_at=now,
    )
    msg = MessageRequested(
        request_id=f"loyalty:reward_code:{redemption_id}",
        kind="reward_code",
        category="transactional",
        priority="high",
        variables={
            "reward_code": code,
            "reward": reward.name,
            "reward_kind": reward.kind,
            "amount_minor": reward.amount_minor,
            "percent": reward.percent,
            "currency": rules.currency,
            "points": reward.points_price,
        },
    )
    # The code is created in the shop first; ingest then releases ``msg`` (rewards.py).
    discount = rewards.shop_discount(code, reward, rules.currency, redemption_id, now, msg)
    events = [
        store.customer_event(tenant, customer, redeemed, redemption_id),
        store.customer_event(tenant, customer, discount, msg.request_id),
    ]
    return RedemptionMade(tenant, customer, idempotency_key, reward, now, result, events)


class LoyaltyService:
    def __init__(self, outbox: Outbox, clock: Clock) -> None:
        self.outbox = outbox
        self.clock = clock

    def now(self) -> datetime:
        return self.clock.now()

    # --- accounts -------------------------------------------------------------------

    async def account_summary(
        self, session: AsyncSession, tenant: str, customer: str
    ) -> AccountSummary:
        """Raises NotFound until the customer earns or is credited once."""
        account = await store.get_account(session, tenant, customer)
        if account is None:
            raise NotFound(f"no loyalty account for customer {customer!r}", field="customer")
        rules = await store.load_rules(session, tenant)
        value, _ = await store.qualifying_value(session, rules, account, self.now())
        progress = domain.tier_progress(rules, value)
        unpriced = await store.unpriced_orders(session, tenant, customer, UNPRICED_SHOWN)
        return AccountSummary(account, rules, progress, unpriced)

    async def history(
        self, session: AsyncSession, tenant: str, customer: str, limit: int, cursor: str | None
    ) -> tuple[list[EntryRow], str | None]:
        """One page of the ledger, newest first, and the cursor of the next (None: the
        last page). The cursor is the sequence number of the page's last entry."""
        before = int(cursor) if cursor is not None else None
        rows = await store.entries_before(session, tenant, customer, before, limit + 1)
        more = len(rows) > limit
        rows = rows[:limit]
        return rows, str(rows[-1].seq) if more and rows else None

    # --- redemptions and adjustments ------------------------------------------------

    async def redeem(
        self,
        session: AsyncSession,
        tenant: str,
        customer: str,
        reward_id: str,
        idempotency_key: str,
        now: datetime,
    ) -> tuple[dict[str, Any], bool]:
        """Redeem in the caller's transaction; returns (response body, replayed). The
        same key returns the first answer and deducts nothing twice; the same key with
        another reward is a 422."""
        outbox = self.outbox
        request_hash = redemption_request_hash(reward_id)
        rules = await store.load_rules(session, tenant)
        account = await store.lock_account(session, tenant, customer, now, rules, create=False)
        if account is None:
            raise no_account(customer)
        # Checked after the lock: a concurrent request with the same key has committed by
        # now, so we see its row instead of redeeming a second time.
        prior = await store.redemption_by_key(session, tenant, customer, idempotency_key)
        if prior is not None:
            if prior.request_hash != request_hash:
                raise key_reused()
            return prior.response, True
        reward = rules.reward(reward_id)
        if reward is None:
            raise unknown_reward(reward_id)
        wallet = await store.load_wallet(session, account)
        redemption_id = domain.new_id()
        try:
            entries = wallet.redeem(reward.points_price, now, redemption_id, f"reward {reward.id}")
        except domain.InsufficientPoints as exc:
            raise InsufficientPointsError(str(exc), field="reward_id") from exc
        await store.persist(session, outbox, account, wallet, entries, now)
        made = redemption_made(
            tenant, customer, rules, reward, redemption_id, wallet, now, idempotency_key
        )
        await store.insert_redemption(session, **made.row(request_hash))
        await outbox.add(session, *made.events)
        return made.result, False

    async def adjust(
        self,
        session: AsyncSession,
        tenant: str,
        customer: str,
        points: int,
        reason: str,
        actor: str,
    ) -> Adjusted:
        """Credit (points > 0) or debit an account by hand; a debit never overdraws."""
        if points == 0:
            raise Unprocessable("points must not be zero", field="points")
        now = self.now()
        rules = await store.load_rules(session, tenant)
        account = await store.lock_account(session, tenant, customer, now, rules)
        assert account is not None
        wallet = await store.load_wallet(session, account)
        try:
            entries = wallet.adjust(points, rules, now, reason, actor)
        except domain.InsufficientPoints as exc:
            raise InsufficientPointsError(str(exc), field="points") from exc
        await store.persist(session, self.outbox, account, wallet, entries, now)
        return Adjusted(entries[0].id, points, wallet.spendable, wallet.pending, wallet.debt)

    # --- the program ----------------------------------------------------------------

    async def rules(self, session: AsyncSession, tenant: str) -> domain.ProgramRules:
        return await store.load_rules(session, tenant)

    async def replace_rules(
        self, session: AsyncSession, tenant: str, rules: domain.ProgramRules
    ) -> domain.ProgramRules:
        """Points already earned keep the rule that earned them (snapshots on the lots)."""
        await store.save_rules(session, tenant, rules, self.now())
        return rules

    async def program_metrics(self, session: AsyncSession, tenant: str) -> dict[str, Any]:
        """Program totals: issued (became spendable), redeemed, expired, clawed back, the
        outstanding balance and what it is worth (the merchant's liability)."""
        rules = await store.load_rules(session, tenant)
        issued, redeemed, expired, clawed = await store.ledger_totals(session, tenant)
        outstanding, debt, pending, accounts = await store.balance_totals(session, tenant)
        liability = int(Decimal(outstanding) * rules.point_value_minor)
        by_currency = await store.orders_by_currency(session, tenant)
        return {
            "accounts": accounts,
            "points_issued": issued,
            "points_redeemed": redeemed,
            "points_expired": expired,
            "points_clawed_back": clawed,
            "points_outstanding": outstanding,
            "points_pending": pending,
            "points_debt": debt,
            "outstanding_liability": {"amount": liability, "currency": rules.currency},
            "redemption_rate": round(redeemed / issued, 4) if issued else 0.0,
            "orders_by_currency": [
                {"currency": cur, "orders": n, "total_minor": total, "unpriced_orders": unpriced}
                for cur, n, total, unpriced in by_currency
            ],
            "unpriced_orders": sum(row[3] for row in by_currency),
        }

    async def points_metrics(
        self, session: AsyncSession, tenant: str, start: datetime, end: datetime, interval: str
    ) -> dict[str, Any]:
        """Points issued, redeemed, expired per bucket of [start, end); liability now."""
        rules = await store.load_rules(session, tenant)
        return await store.points_series(
            session, tenant, start, end, interval, rules.point_value_minor, rules.currency
        )

    # --- exchange rates -------------------------------------------------------------

    async def exchange_rates(
        self, session: AsyncSession, tenant: str
    ) -> tuple[str, list[ExchangeRateRow]]:
        """The program's currency and the tenant's rates into it, by currency code."""
        rules = await store.load_rules(session, tenant)
        return rules.currency, await store.rate_rows(session, tenant, rules.currency)

    async def set_exchange_rate(
        self, session: AsyncSession, tenant: str, currency: str, rate: Decimal, as_of: date
    ) -> ExchangeRateRow:
        """Orders in ``currency`` are priced at ``rate`` from now on; orders already
        placed keep the price they were given (or stay unpriced)."""
        rules = await store.load_rules(session, tenant)
        if currency == rules.currency:
            raise Unprocessable(
                f"{currency} is the program's currency: it needs no rate", field="currency"
            )
        return await store.upsert_rate(
            session, tenant, currency, rules.currency, rate, as_of, self.now()
        )

    async def delete_exchange_rate(self, session: AsyncSession, tenant: str, currency: str) -> None:
        """Later orders in ``currency`` are recorded unpriced. NotFound when no rate."""
        rules = await store.load_rules(session, tenant)
        if not await store.delete_rate(session, tenant, currency, rules.currency):
            raise NotFound(f"no exchange rate for {currency}", field="currency")

    # --- the background worker ------------------------------------------------------

    async def catch_up(
        self, session: AsyncSession, tenant: str, customer: str, now: datetime
    ) -> bool:
        """Bring one account up to ``now``: release pending points whose return window
        ended, expire what is due, send the expiry notices due (once per lot) and review
        the tier. False, doing nothing, when another transaction holds the account (the
        worker's replicas share the due accounts: ``SKIP LOCKED``)."""
        rules = await store.load_rules(session, tenant)
        account = await store.lock_account(
            session, tenant, customer, now, rules, create=False, skip_locked=True
        )
        if account is None:
            return False
        wallet = await store.load_wallet(session, account)
        entries: list[domain.Entry] = []
        for lot in list(wallet.lots):
            entries += wallet.release(lot, rules, now)
        entries += wallet.expire(now)
        await store.persist(session, self.outbox, account, wallet, entries, now)
        candidates = [lot for lot in wallet.lots if lot.notify_at and lot.notify_at <= now]
        fresh = await store.unnotified_lots(session, [lot.id for lot in candidates])
        soon = [
            lot
            for lot in candidates
            if lot.id in fresh and lot.state == "available" and lot.remaining > 0
        ]
        if soon:
            first = min(lot.expires_at for lot in soon if lot.expires_at)
            # Derived from the lots, so a retried pass asks for the same message.
            request_id = "loyalty:points_expiring:" + derived_event_id(
                tenant, customer, *sorted(lot.id for lot in soon)
            )
            await self.outbox.add(
                session,
                store.message(
                    account,
                    "points_expiring",
                    request_id,
                    {
                        "points_expiring": sum(lot.remaining for lot in soon),
                        "expires_on": first.date().isoformat(),
                        "expires_at": first.isoformat(),
                        "points_balance": wallet.spendable,
                    },
                ),
            )
            await store.mark_notified(session, [lot.id for lot in soon], now)
        if (account.tier_review_at is not None and account.tier_review_at <= now) or entries:
            await store.refresh_tier(
                session, self.outbox, rules, account, now, f"review:{now.isoformat()}"
            )
        return True

    # --- orders (events) ------------------------------------------------------------

    async def _earn_and_start_clock(
        self,
        rules: domain.ProgramRules,
        account: Account,
        wallet: domain.Wallet,
        order: OrderRow,
        status: str,
        now: datetime,
        historical: bool,
    ) -> list[domain.Entry]:
        """An order's step on fulfilment or delivery, one by one or in a run: earn once
        it reaches an earning status, then start its pending points' clock."""
        entries: list[domain.Entry] = []
        if not order.earned and domain.earns_at(rules, status, order_record(order)):
            entries += await self._earn_order(rules, account, wallet, order, now, historical)
        when = order.fulfilled_at or order.delivered_at
        if when is not None:
            for lot in _lots_of(wallet, order.order_id):
                if lot.state == "pending":
                    wallet.schedule(lot, _available_at(rules, when, now, historical))
                    entries += wallet.release(lot, rules, now)
        return entries

    async def _earn_order(
        self,
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
        rec = order_record(order)
        multiplier = domain.tier_multiplier(rules, account.tier)
        snapshot = {
            **domain.rule_snapshot(rules, multiplier, account.tier),
            **domain.earning_basis(rec),
        }
        when = order.fulfilled_at or order.delivered_at
        start = _available_at(rules, when, now, historical) if when else None
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
        self,
        session: AsyncSession,
        tenant: str,
        order: OrderRow,
        status: str,
        cause: str,
        historical: bool,
    ) -> None:
        """Earn when the order reaches an earning status; start the pending clock once
        the order is fulfilled (or delivered, when no fulfilment came)."""
        now = self.now()
        rules = await store.load_rules(session, tenant)
        account = await store.lock_account(session, tenant, order.customer_id, now, rules)
        assert account is not None
        wallet = await store.load_wallet(session, account, order.order_id)
        entries = await self._earn_and_start_clock(
            rules, account, wallet, order, status, now, historical
        )
        await store.persist(session, self.outbox, account, wallet, entries, now)
        # A past order may still move the tier (spend is spend), but says nothing to
        # the customer: no tier-up message for history.
        await store.refresh_tier(
            session, self.outbox, rules, account, now, cause, notify=not historical
        )

    async def order_placed(
        self, session: AsyncSession, tenant: str, customer: str, data: OrderPlaced, cause: str
    ) -> None:
        """Open the customer's account (if new), record the order priced in the program's
        currency, and earn when "placed" is an earning status."""
        if await store.lock_order(session, tenant, data.order_id) is not None:
            return  # the same order announced twice
        now = self.now()
        rules = await store.load_rules(session, tenant)
        account = await store.lock_account(session, tenant, customer, now, rules)
        assert account is not None
        amounts = _pairs(data.amounts())
        rates = (
            {}
            if any(cur == rules.currency for cur, _ in amounts)
            else await store.load_rates(session, tenant, rules.currency)
        )
        order = OrderRow(**vars(_new_order(rules, account, data, rates)))
        await store.add_order(session, order)
        if order.unpriced_reason is not None:
            await self._note_unpriced(session, account, data.order_id, order.unpriced_reason, now)
        await self._order_step(session, tenant, order, "placed", cause, data.historical)

    async def orders_placed(self, session: AsyncSession, placed: list[Placed]) -> None:
        """:meth:`order_placed` for a run of events, in sets, with the outcome of calling
        it for each in order: the run's orders, accounts, rates and tier figures are read
        with one statement per table (per tenant for rates and tiers), the orders are
        priced and earned in memory in event order, and each table is written with one
        statement. The clock is read once: the run is one transaction.

        An order earns only pending lots when it is placed (it has no fulfilment yet), and
        adding a pending lot reads no other lot: the account's existing lots are not
        loaded, its cached balances are the wallet."""
        now = self.now()
        seen = await store.known_orders(session, {(p.tenant, p.data.order_id) for p in placed})
        fresh: list[Placed] = []
        for p in placed:
            if (p.tenant, p.data.order_id) not in seen:  # else announced twice
                seen.add((p.tenant, p.data.order_id))
                fresh.append(p)
        if not fresh:
            return
        tenants = sorted({p.tenant for p in fresh})
        rules = {t: await store.load_rules(session, t) for t in tenants}
        keys = sorted({(p.tenant, p.customer) for p in fresh})
        accounts = await store.open_account_rows(
            session, keys, {t: r.tiers[0].name for t, r in rules.items()}, now
        )
        rates: dict[str, dict[str, domain.ExchangeRate]] = {}
        for t in tenants:
            if any(_needs_rates(rules[t], p.data) for p in fresh if p.tenant == t):
                rates[t] = await store.load_rates(session, t, rules[t].currency)
        tier_figures = await store.qualifying_values(session, rules, keys, now)
        wallets = {
            k: domain.Wallet(available=a.available, pending=a.pending) for k, a in accounts.items()
        }
        orders: list[Any] = []
        lots: dict[str, dict[str, Any]] = {}
        entries: list[dict[str, Any]] = []
        events: list[CloudEvent[Any]] = []
        for p in fresh:
            key = (p.tenant, p.customer)
            account, wallet, r = accounts[key], wallets[key], rules[p.tenant]
            order = _new_order(r, account, p.data, rates.get(p.tenant, {}))
            orders.append(order)
            step: list[domain.Entry] = []
            if order.unpriced_reason is not None:
                note = [wallet.note_unpriced(order.order_id, order.unpriced_reason, now)]
                events += store.settle(account, wallet, note, now)
                step += note
            earned: list[domain.Entry] = []
            if not order.earned and domain.earns_at(r, "placed", order_record(order)):
                earned = await self._earn_order(r, account, wallet, order, now, p.data.historical)
            events += store.settle(account, wallet, earned, now)
            step += earned
            entries += [store.entry_row(p.tenant, p.customer, e) for e in step]
            new_lots = [lot for lot in wallet.lots if lot.id in wallet.dirty]
            wallet.dirty.clear()
            lots.update({lot.id: store.lot_row(p.tenant, p.customer, lot) for lot in new_lots})
            value, oldest = _with_order(r, tier_figures[key], order, new_lots, now)
            tier_figures[key] = (value, oldest)
            events += store.tier_events(
                r, account, value, oldest, now, p.cause, notify=not p.data.historical
            )
        await store.insert_orders(session, orders)
        await store.update_account_rows(session, list(accounts.values()))
        await store.upsert_lots(session, list(lots.values()))
        await store.insert_entries(session, entries)
        await self.outbox.add(session, *events)

    async def _note_unpriced(
        self, session: AsyncSession, account: Account, order_id: str, reason: str, now: datetime
    ) -> None:
        """Record in the ledger (a zero entry) that an order or a refund could not be
        priced, with the reason: visible in the account's history, never silent."""
        wallet = await store.load_wallet(session, account)
        entry = wallet.note_unpriced(order_id, reason, now)
        await store.persist(session, self.outbox, account, wallet, [entry], now)

    async def order_fulfilled(
        self, session: AsyncSession, tenant: str, data: OrderFulfilled, cause: str
    ) -> None:
        order = await store.lock_order(session, tenant, data.order_id)
        if order is None or order.cancelled:
            return  # an order we never saw placed earns nothing
        order.fulfilled_at = order.fulfilled_at or data.fulfilled_at
        historical = bool(getattr(data, "historical", False))
        await self._order_step(session, tenant, order, "fulfilled", cause, historical)

    async def order_delivered(
        self, session: AsyncSession, tenant: str, data: OrderDelivered, cause: str
    ) -> None:
        order = await store.lock_order(session, tenant, data.order_id)
        if order is None or order.cancelled:
            return
        order.delivered_at = order.delivered_at or data.delivered_at
        historical = bool(getattr(data, "historical", False))
        await self._order_step(session, tenant, order, "delivered", cause, historical)

    async def _claw_order(
        self, session: AsyncSession, tenant: str, order: OrderRow, reason: str, cause: str
    ) -> None:
        now = self.now()
        rules = await store.load_rules(session, tenant)
        account = await store.lock_account(session, tenant, order.customer_id, now, rules)
        assert account is not None
        wallet = await store.load_wallet(session, account, order.order_id)
        rec = order_record(order)
        entries: list[domain.Entry] = []
        for lot in _lots_of(wallet, order.order_id):
            # The lot's own points and the amount it was earned on: the rule that earned
            # the points decides, whatever the rules say today.
            target = domain.order_clawback_target(lot, rec)
            entries += wallet.clawback(lot, target, now, reason)
        await store.persist(session, self.outbox, account, wallet, entries, now)
        await store.refresh_tier(session, self.outbox, rules, account, now, cause)

    async def order_refunded(
        self, session: AsyncSession, tenant: str, data: OrderRefunded, cause: str
    ) -> None:
        """Take back the refunded share of the order's points (once per refund id)."""
        order = await store.lock_order(session, tenant, data.order_id)
        if order is None:
            return
        rec = order_record(order)
        refunded = _refund_amount(order, data)
        if refunded is None and not data.full:
            if data.refund_id not in rec.refund_ids:
                await self._flag_unrelated_refund(session, tenant, order, data)
            return
        if not _record_refund(order, rec, refunded, data):
            return  # this refund was already applied
        await self._claw_order(session, tenant, order, f"refund {data.refund_id}", cause)

    async def _flag_unrelated_refund(
        self, session: AsyncSession, tenant: str, order: OrderRow, data: OrderRefunded
    ) -> None:
        """A partial refund in a currency the order does not state: no share of the order
        can be computed without guessing a rate, so nothing is clawed back; the refund is
        remembered (applied once) and flagged in the ledger with the reason."""
        order.refund_ids = [*(order.refund_ids or []), data.refund_id]
        now = self.now()
        rules = await store.load_rules(session, tenant)
        account = await store.lock_account(session, tenant, order.customer_id, now, rules)
        assert account is not None
        reason = _unrelated_refund_reason(order, data)
        await self._note_unpriced(session, account, order.order_id, reason, now)

    async def order_cancelled(
        self, session: AsyncSession, tenant: str, data: OrderCancelled, cause: str
    ) -> None:
        order = await store.lock_order(session, tenant, data.order_id)
        if order is None or order.cancelled:
            return
        order.cancelled = True
        await self._claw_order(session, tenant, order, "order cancelled", cause)

    async def orders_changed(self, session: AsyncSession, changes: list[Changed]) -> None:
        """:meth:`order_fulfilled`, :meth:`order_delivered`, :meth:`order_refunded` and
        :meth:`order_cancelled` for a run of events, in sets, with the outcome of calling
        them for each in order: the run's orders, accounts, lots and tier figures are
        read with one statement per table (per tenant for tiers), the events run in
        memory in order (each sees the earlier ones' changes to its order, account and
        lots), and each table is written with one statement (the accounts by the
        session's flush). The clock is read once: the run is one transaction.

        Locks: the orders in (tenant, order id) order, then the accounts in (tenant,
        customer) order, each in one statement; the batch handler locked the event
        subjects' accounts before any of it."""
        now = self.now()
        orders = await store.lock_orders(session, {(c.tenant, c.data.order_id) for c in changes})
        # An order never placed here (or placed without a customer) earns and loses
        # nothing: its events change nothing, as one by one.
        changes = [c for c in changes if (c.tenant, c.data.order_id) in orders]
        if not changes:
            return
        # Each event's account: its order's customer (a pseudonym once erased).
        owners = [(c.tenant, orders[(c.tenant, c.data.order_id)].customer_id) for c in changes]
        tenants = sorted({c.tenant for c in changes})
        rules = {t: await store.load_rules(session, t) for t in tenants}
        keys = sorted(set(owners))
        # An order's account was opened with it: read, not created (a statement less).
        accounts = await store.locked_accounts(session, keys)
        if missing := [k for k in keys if k not in accounts]:
            # Never seen: opened as the per-event path would (store.lock_account).
            first_tier = {t: r.tiers[0].name for t, r in rules.items()}
            accounts |= await store.open_accounts(session, missing, first_tier, now)
        clawing = {
            key
            for key, c in zip(owners, changes, strict=True)
            if isinstance(c.data, OrderRefunded | OrderCancelled)
        }
        lots = await store.load_run_lots(session, keys, sorted(orders), clawing)
        run = _Run(
            now=now,
            rules=rules,
            orders=orders,
            accounts=accounts,
            wallets={
                k: domain.Wallet(available=a.available, pending=a.pending, lots=lots.get(k, []))
                for k, a in accounts.items()
            },
            figures=await store.qualifying_values(session, rules, keys, now),
        )
        for key, c in zip(owners, changes, strict=True):
            if isinstance(c.data, OrderRefunded):
                self._refunded(run, key, c)
            elif isinstance(c.data, OrderCancelled):
                self._cancelled(run, key, c)
            else:
                await self._progressed(run, key, c)
        await store.save_orders(session, run.orders.values())
        await store.upsert_lots(session, run.lot_rows())
        await store.insert_entries(session, run.entries)
        if run.recount:
            # Read once the run's orders and lots are written: an order cancelled, or a
            # lot voided, may have been the oldest part.
            figures = await store.qualifying_values(session, rules, sorted(run.recount), now)
            for key, (_, oldest) in figures.items():
                window = rules[key[0]].tier_window_months
                accounts[key].tier_review_at = (
                    domain.add_months(oldest, window) if oldest is not None else None
                )
        await self.outbox.add(session, *run.events)

    async def _progressed(self, run: _Run, key: tuple[str, str], c: Changed) -> None:
        """order_fulfilled / order_delivered and _order_step, in memory."""
        order = run.order(c)
        if order.cancelled:
            return
        if isinstance(c.data, OrderFulfilled):
            order.fulfilled_at = order.fulfilled_at or c.data.fulfilled_at
            status = "fulfilled"
        else:
            assert isinstance(c.data, OrderDelivered)
            order.delivered_at = order.delivered_at or c.data.delivered_at
            status = "delivered"
        historical = c.data.historical
        rules, account, wallet, now = (
            run.rules[c.tenant],
            run.accounts[key],
            run.wallets[key],
            run.now,
        )
        before = run.parts(key, order)
        entries = await self._earn_and_start_clock(
            rules, account, wallet, order, status, now, historical
        )
        run.settle(key, entries)
        # A past order may still move the tier, but says nothing to the customer.
        run.retier(key, before, order, c.cause, notify=not historical)

    def _refunded(self, run: _Run, key: tuple[str, str], c: Changed) -> None:
        """order_refunded, in memory."""
        data = c.data
        assert isinstance(data, OrderRefunded)
        order = run.order(c)
        before = run.parts(key, order)
        rec = order_record(order)
        refunded = _refund_amount(order, data)
        if refunded is None and not data.full:
            if data.refund_id not in rec.refund_ids:
                # _flag_unrelated_refund: remembered once, flagged, nothing taken back.
                order.refund_ids = [*(order.refund_ids or []), data.refund_id]
                reason = _unrelated_refund_reason(order, data)
                run.settle(key, [run.wallets[key].note_unpriced(order.order_id, reason, run.now)])
            return
        if not _record_refund(order, rec, refunded, data):
            return  # this refund was already applied
        self._clawed(run, key, order, before, f"refund {data.refund_id}", c.cause)

    def _cancelled(self, run: _Run, key: tuple[str, str], c: Changed) -> None:
        """order_cancelled, in memory."""
        order = run.order(c)
        if order.cancelled:
            return
        before = run.parts(key, order)
        order.cancelled = True
        self._clawed(run, key, order, before, "order cancelled", c.cause)

    def _clawed(
        self,
        run: _Run,
        key: tuple[str, str],
        order: OrderRow,
        before: list[tuple[int, datetime]],
        reason: str,
        cause: str,
    ) -> None:
        """_claw_order, in memory: the order already carries its refund or cancellation;
        ``before`` is its tier parts from before that."""
        wallet = run.wallets[key]
        rec = order_record(order)
        entries: list[domain.Entry] = []
        for lot in _lots_of(wallet, order.order_id):
            entries += wallet.clawback(lot, domain.order_clawback_target(lot, rec), run.now, reason)
        run.settle(key, entries)
        run.retier(key, before, order, cause, notify=True)

    # --- bonuses and erasure (events) -----------------------------------------------

    async def bonus(
        self,
        session: AsyncSession,
        tenant: str,
        customer: str,
        source: str,
        source_id: str,
        points: int,
        cause: str,
    ) -> None:
        """Credit a bonus lot, available at once; once per (source, source_id)."""
        if points <= 0 or await store.lot_exists(session, tenant, source, source_id):
            return
        now = self.now()
        rules = await store.load_rules(session, tenant)
        account = await store.lock_account(session, tenant, customer, now, rules)
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
        await store.persist(session, self.outbox, account, wallet, entries, now)
        if rules.tier_basis == "points":
            await store.refresh_tier(session, self.outbox, rules, account, now, cause)

    async def review_bonus(
        self, session: AsyncSession, tenant: str, customer: str, review_id: str, cause: str
    ) -> None:
        rules = await store.load_rules(session, tenant)
        # The review's rating is deliberately not an argument: no incentive may depend
        # on it (FTC).
        points = domain.review_bonus(rules)
        await self.bonus(session, tenant, customer, "review", review_id, points, cause)

    async def survey_bonus(
        self, session: AsyncSession, tenant: str, customer: str, survey_id: str, cause: str
    ) -> None:
        rules = await store.load_rules(session, tenant)
        # Once per survey: an updated answer (is_update) finds the lot already there.
        points = rules.bonuses.survey
        await self.bonus(session, tenant, customer, "survey", survey_id, points, cause)

    async def referral_bonus(
        self, session: AsyncSession, tenant: str, advocate: str, referral_id: str, cause: str
    ) -> None:
        """The referrals service held the conversion until its own checks passed, so the
        bonus is available at once."""
        rules = await store.load_rules(session, tenant)
        points = rules.bonuses.referral
        await self.bonus(session, tenant, advocate, "referral", referral_id, points, cause)

    async def erase(
        self, session: AsyncSession, tenant: str, customer: str, *, whole_tenant: bool
    ) -> None:
        """Pseudonymize one customer, or every customer of the tenant not erased yet."""
        customers = await store.live_customers(session, tenant) if whole_tenant else [customer]
        for one in customers:
            await store.pseudonymize(session, tenant, one)
