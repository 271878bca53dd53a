"""Loyalty rules and the points ledger, with no I/O.

The store loads an account's open lots into a :class:`Wallet`, calls one operation, and
persists the entries it returns together with the lots it touched. Every rule lives here
so that the property tests exercise the same code the service runs.

Ledger model
------------
* Every credit is a *lot* (an order's points, a bonus, a positive adjustment). A lot is
  ``pending`` until its ``available_at`` (fulfilment + return window), then
  ``available`` with a ``remaining`` count; it expires ``expiry_months`` after it became
  available. Spending (redemptions, expiry, negative adjustments) consumes lots oldest
  expiry first (FIFO), so the points that expire are always the oldest ones.
* Every change is an append-only :class:`Entry` carrying ``pending_delta`` and
  ``available_delta``; the balances are the sums of those deltas.
* A refund claws back ``floor(points * refunded / total)`` of each of the order's lots,
  computed cumulatively, with the points the lot was *earned* with (the rule snapshot is
  stored on the lot), so a rule change after the purchase changes nothing.
* An order earns on its amount net of the refunds already recorded when it earns (a
  program may earn at fulfilment, after a refund came in); those refunds are kept on the
  lot and do not count again in its clawback. A cancelled or fully refunded order never
  earns, first-order bonus included.
* A clawback of points already spent leaves the available balance negative: a debt.
  New available points repay the debt first. Redemptions and negative adjustments never
  take the balance below zero.
* Invariant: ``sum(remaining of available lots) == max(0, available)``.

Money and currencies
--------------------
* A program is defined in one currency (``ProgramRules.currency``): points rates, tier
  spend thresholds, reward values and the liability are all in it.
* An order is priced in that currency by :func:`price_order`: the amount it states in
  the program's currency when it states one (shop money first, then the customer's),
  else its shop total converted at the tenant's exchange rate for that currency (a
  rate with its as-of date, set through ``PUT /v1/exchange-rates/{currency}``). With
  neither, the order is *unpriced*: it earns no points and no tier spend, and the
  ledger and the account show it with the reason. It is never priced as if its amount
  were in the program's currency (2,119.29 PLN is not 2,119.29 USD).
* Rounding: the converted amount is rounded once to the program currency's minor unit,
  half up (as a price is), and that amount is what the points formula, the tier spend
  and the ledger see; points are then rounded once more by the program's ``rounding``.
  The conversion factor (minor unit to minor unit) is kept on the order, so a refund
  or a later earning status converts with the rate the order was priced at.
* Refunds are related to the order in the order's own currency (the refund's amount in
  it, or its share of the order's presentment total), so a rate never enters a
  clawback: it takes back the refunded share of the points.
"""

from __future__ import annotations

import calendar
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta
from decimal import ROUND_CEILING, ROUND_FLOOR, ROUND_HALF_UP, Decimal
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from afterglow.events.money import currency_exponent

Rounding = Literal["down", "nearest", "up"]
# Bound of any amount in minor units or points a rule may name: far beyond real money
# (10^15 cents), far enough below 2**63 that sums of a few stay within a bigint column.
AMOUNT_MAX = 10**15
_ROUNDING = {"down": ROUND_FLOOR, "nearest": ROUND_HALF_UP, "up": ROUND_CEILING}

# --- program rules ----------------------------------------------------------------


class _Strict(BaseModel):
    # Unknown fields are an error: a typo in a rule must not be silently ignored.
    model_config = ConfigDict(extra="forbid", frozen=True)


class Bonuses(_Strict):
    """Fixed points for actions. The review bonus has no rating condition on purpose:
    an incentive that depends on sentiment breaks the FTC's 2024 rule on reviews."""

    review: int = Field(default=50, ge=0, le=1_000_000)
    survey: int = Field(default=25, ge=0, le=1_000_000)
    referral: int = Field(default=500, ge=0, le=1_000_000)
    first_order: int = Field(default=100, ge=0, le=1_000_000)


class Tier(_Strict):
    name: str = Field(min_length=1, max_length=50, pattern=r"^[a-z0-9_-]+$")
    threshold: int = Field(
        ge=0, le=AMOUNT_MAX, description="Minor units of spend, or points, in the window"
    )
    multiplier: Decimal = Field(default=Decimal(1), ge=0, le=10, max_digits=6, decimal_places=3)


class Reward(_Strict):
    id: str = Field(min_length=1, max_length=50, pattern=r"^[a-z0-9_-]+$")
    name: str = Field(min_length=1, max_length=200)
    kind: Literal["fixed_discount", "percentage", "free_shipping"]
    points_price: int = Field(gt=0, le=10_000_000)
    amount_minor: int | None = Field(default=None, gt=0, le=AMOUNT_MAX)
    percent: int | None = Field(default=None, ge=1, le=100)

    @model_validator(mode="after")
    def _value_matches_kind(self) -> Reward:
        if self.kind == "fixed_discount" and self.amount_minor is None:
            raise ValueError("amount_minor is required for a fixed_discount")
        if self.kind == "percentage" and self.percent is None:
            raise ValueError("percent is required for a percentage reward")
        return self


def _default_tiers() -> list[Tier]:
    return [
        Tier(name="bronze", threshold=0, multiplier=Decimal(1)),
        Tier(name="silver", threshold=50_000, multiplier=Decimal("1.25")),
        Tier(name="gold", threshold=100_000, multiplier=Decimal("1.5")),
    ]


def _default_rewards() -> list[Reward]:
    return [
        Reward(
            id="five-off", name="$5 off", kind="fixed_discount", points_price=500, amount_minor=500
        ),
        Reward(id="ten-percent", name="10% off", kind="percentage", points_price=1000, percent=10),
        Reward(id="free-shipping", name="Free shipping", kind="free_shipping", points_price=400),
    ]


class ProgramRules(_Strict):
    """One tenant's program. Defaults follow Smile.io-like programs: 5 points per unit
    of currency, 100 points worth one unit, 30-day pending, 12-month expiry."""

    currency: str = Field(default="USD", pattern=r"^[A-Z]{3}$")
    points_per_unit: int = Field(default=5, ge=0, le=10_000)
    unit_minor: int = Field(
        default=100, gt=0, le=1_000_000, description="Minor units in one unit (cents)"
    )
    rounding: Rounding = "down"
    earning_statuses: list[Literal["placed", "fulfilled", "delivered"]] = Field(
        default_factory=lambda: ["placed"],  # type: ignore[arg-type]
        min_length=1,
    )
    bonuses: Bonuses = Field(default_factory=Bonuses)
    return_window_days: int = Field(default=30, ge=0, le=365)
    expiry_months: int = Field(default=12, ge=0, le=120, description="0: never expire")
    expiring_notice_days: int = Field(default=14, ge=0, le=90)
    tier_basis: Literal["spend", "points"] = "spend"
    tier_window_months: int = Field(default=12, ge=1, le=36)
    tiers: list[Tier] = Field(default_factory=_default_tiers, min_length=1)
    rewards: list[Reward] = Field(default_factory=_default_rewards)
    point_value_minor: Decimal = Field(
        default=Decimal(1),
        ge=0,
        max_digits=10,
        decimal_places=4,
        description="What one point costs the merchant, for the liability metric",
    )

    @model_validator(mode="after")
    def _consistent(self) -> ProgramRules:
        names = [t.name for t in self.tiers]
        if len(set(names)) != len(names):
            raise ValueError("tiers: names must be unique")
        if self.tiers[0].threshold != 0:
            raise ValueError("tiers: the first tier must have threshold 0")
        thresholds = [t.threshold for t in self.tiers]
        if thresholds != sorted(set(thresholds)):
            raise ValueError("tiers: thresholds must be strictly increasing")
        ids = [r.id for r in self.rewards]
        if len(set(ids)) != len(ids):
            raise ValueError("rewards: ids must be unique")
        return self

    def reward(self, reward_id: str) -> Reward | None:
        return next((r for r in self.rewards if r.id == reward_id), None)


# --- arithmetic -------------------------------------------------------------------


def round_points(value: Decimal, mode: Rounding) -> int:
    return int(value.quantize(Decimal(1), rounding=_ROUNDING[mode]))


def order_points(rules: ProgramRules, total_minor: int, multiplier: Decimal = Decimal(1)) -> int:
    """Points for an order of ``total_minor``: the base rate times the tier multiplier,
    rounded once (rounding twice would lose a point on some totals)."""
    if total_minor <= 0:
        return 0
    raw = Decimal(total_minor) * rules.points_per_unit / rules.unit_minor * multiplier
    return max(0, round_points(raw, rules.rounding))


def review_bonus(rules: ProgramRules) -> int:
    """The review bonus. It takes no rating on purpose (FTC rule: no incentive may
    depend on a review's sentiment)."""
    return rules.bonuses.review


def clawback_target(points: int, refunded_minor: int, total_minor: int, full: bool) -> int:
    """How many of ``points`` a refund of ``refunded_minor`` (cumulative) takes back.

    Cumulative, so partial refunds never drift by rounding and a full refund takes back
    exactly what was earned. Floors: the customer keeps the fraction of a point."""
    if full or total_minor <= 0 or refunded_minor >= total_minor:
        return points
    if refunded_minor <= 0:
        return 0
    return points * refunded_minor // total_minor


def add_months(moment: datetime, months: int) -> datetime:
    month0 = moment.month - 1 + months
    year, month = moment.year + month0 // 12, month0 % 12 + 1
    day = min(moment.day, calendar.monthrange(year, month)[1])
    return moment.replace(year=year, month=month, day=day)


def expires_at(rules: ProgramRules, available_at: datetime) -> datetime | None:
    return None if rules.expiry_months == 0 else add_months(available_at, rules.expiry_months)


def available_at(rules: ProgramRules, fulfilled_at: datetime) -> datetime:
    """Points of an order become spendable once the return window after fulfilment ends."""
    return fulfilled_at + timedelta(days=rules.return_window_days)


# --- tiers ------------------------------------------------------------------------


def tier_for(rules: ProgramRules, qualifying: int) -> Tier:
    current = rules.tiers[0]
    for tier in rules.tiers:
        if qualifying >= tier.threshold:
            current = tier
    return current


def tier_index(rules: ProgramRules, name: str | None) -> int:
    for i, tier in enumerate(rules.tiers):
        if tier.name == name:
            return i
    return -1


def tier_multiplier(rules: ProgramRules, name: str | None) -> Decimal:
    i = tier_index(rules, name)
    return rules.tiers[i].multiplier if i >= 0 else rules.tiers[0].multiplier


@dataclass(frozen=True)
class TierProgress:
    tier: str
    basis: str
    qualifying: int
    next_tier: str | None
    next_threshold: int | None
    remaining: int | None


def tier_progress(rules: ProgramRules, qualifying: int) -> TierProgress:
    tier = tier_for(rules, qualifying)
    nxt = next((t for t in rules.tiers if t.threshold > qualifying), None)
    return TierProgress(
        tier=tier.name,
        basis=rules.tier_basis,
        qualifying=qualifying,
        next_tier=nxt.name if nxt else None,
        next_threshold=nxt.threshold if nxt else None,
        remaining=(nxt.threshold - qualifying) if nxt else None,
    )


def tier_direction(rules: ProgramRules, old: str | None, new: str) -> Literal["up", "down"] | None:
    if old == new:
        return None
    return "up" if tier_index(rules, new) > tier_index(rules, old) else "down"


# --- the ledger -------------------------------------------------------------------

# ``unpriced``: a zero entry recording that an order (or a refund) could not be priced in
# the program's currency, with the reason; it moves no points.
EntryKind = Literal[
    "earn_pending", "earn_available", "clawback", "redeem", "expire", "adjust", "unpriced"
]
LotState = Literal["pending", "available", "expired", "void"]


class InsufficientPoints(Exception):
    def __init__(self, available: int, requested: int) -> None:
        super().__init__(f"{requested} points requested, {max(0, available)} available")
        self.available = available
        self.requested = requested


def new_id() -> str:
    return str(uuid.uuid4())


@dataclass
class Lot:
    id: str
    source: str  # order | first_order | review | survey | referral | adjust
    source_id: str
    points: int  # as earned, never changed
    earned_at: datetime
    order_id: str | None = None
    clawed: int = 0
    remaining: int = 0  # unspent points, once available
    state: LotState = "pending"
    available_at: datetime | None = None
    expires_at: datetime | None = None
    notify_at: datetime | None = None  # when to warn that the lot is about to expire
    rule_snapshot: dict[str, Any] = field(default_factory=dict)

    def start_expiry(self, rules: ProgramRules, since: datetime) -> None:
        self.expires_at = expires_at(rules, since)
        self.notify_at = (
            self.expires_at - timedelta(days=rules.expiring_notice_days)
            if self.expires_at is not None
            else None
        )

    @property
    def effective(self) -> int:
        return self.points - self.clawed


@dataclass(frozen=True)
class Entry:
    id: str
    kind: EntryKind
    pending_delta: int
    available_delta: int
    at: datetime
    lot_id: str | None = None
    order_id: str | None = None
    reason: str | None = None
    actor: str | None = None
    ref: str | None = None
    rule_snapshot: dict[str, Any] | None = None


@dataclass
class Wallet:
    """One account's balances and the lots an operation may touch.

    ``available`` is signed: below zero it is a debt. Operations mutate the lots they
    touch (recorded in ``dirty``) and return the entries to append."""

    available: int = 0
    pending: int = 0
    lots: list[Lot] = field(default_factory=list)
    dirty: set[str] = field(default_factory=set)

    @property
    def debt(self) -> int:
        return max(0, -self.available)

    @property
    def spendable(self) -> int:
        return max(0, self.available)

    def _touch(self, lot: Lot) -> None:
        self.dirty.add(lot.id)

    def _fifo(self) -> list[Lot]:
        live = [lot for lot in self.lots if lot.state == "available" and lot.remaining > 0]
        far = datetime.max.replace(tzinfo=None)
        return sorted(
            live,
            key=lambda lot: (
                lot.expires_at.replace(tzinfo=None) if lot.expires_at else far,
                lot.earned_at.replace(tzinfo=None),
                lot.id,
            ),
        )

    def _consume(self, points: int, first: Lot | None = None) -> None:
        """Take ``points`` from lots: ``first`` (the clawed lot) then FIFO."""
        order = ([first] if first is not None and first.state == "available" else []) + [
            lot for lot in self._fifo() if lot is not first
        ]
        for lot in order:
            if points <= 0:
                break
            take = min(points, lot.remaining)
            if take:
                lot.remaining -= take
                points -= take
                self._touch(lot)

    def _credit_available(self, lot: Lot, points: int) -> None:
        # Debt is repaid first: the lot keeps only what is left after repayment.
        repay = min(points, self.debt)
        lot.remaining += points - repay
        self.available += points

    def add_lot(
        self, lot: Lot, rules: ProgramRules, now: datetime, reason: str | None = None
    ) -> list[Entry]:
        """Credit a new lot: pending, or available at once when its time has come."""
        self.lots.append(lot)
        self._touch(lot)
        if lot.points <= 0:
            lot.state = "void"
            return []
        if lot.available_at is not None and lot.available_at <= now:
            lot.state = "available"
            lot.start_expiry(rules, lot.available_at)
            self._credit_available(lot, lot.points)
            return [self._entry("earn_available", 0, lot.points, now, lot, reason)]
        lot.state = "pending"
        self.pending += lot.points
        return [self._entry("earn_pending", lot.points, 0, now, lot, reason)]

    def schedule(self, lot: Lot, when: datetime) -> None:
        """Set when a pending lot becomes available (fulfilment + return window)."""
        if lot.state == "pending":
            lot.available_at = when
            self._touch(lot)

    def release(self, lot: Lot, rules: ProgramRules, now: datetime) -> list[Entry]:
        """Pending -> available, once ``available_at`` has passed."""
        if lot.state != "pending" or lot.available_at is None or lot.available_at > now:
            return []
        amount = lot.effective
        lot.state = "available"
        lot.start_expiry(rules, lot.available_at)
        self._touch(lot)
        self.pending -= amount
        self._credit_available(lot, amount)
        return [self._entry("earn_available", -amount, amount, now, lot, "return window ended")]

    def clawback(self, lot: Lot, target: int, now: datetime, reason: str) -> list[Entry]:
        """Bring the lot's clawed total up to ``target`` (cumulative, so idempotent)."""
        target = min(target, lot.points)
        delta = target - lot.clawed
        if delta <= 0 or lot.state == "void":
            return []
        lot.clawed += delta
        self._touch(lot)
        if lot.state == "pending":
            self.pending -= delta
            if lot.effective == 0:
                lot.state = "void"
            return [self._entry("clawback", -delta, 0, now, lot, reason)]
        # Available (or expired/spent): what is not left in this lot comes out of the
        # others, and what is left over becomes a debt.
        self._consume(delta, first=lot)
        self.available -= delta
        return [self._entry("clawback", 0, -delta, now, lot, reason)]

    def redeem(self, points: int, now: datetime, ref: str, reason: str) -> list[Entry]:
        if points <= 0:
            raise ValueError("points must be positive")
        if self.spendable < points:
            raise InsufficientPoints(self.available, points)
        self._consume(points)
        self.available -= points
        return [self._entry("redeem", 0, -points, now, None, reason, ref=ref)]

    def expire(self, now: datetime) -> list[Entry]:
        out = []
        for lot in self._fifo():
            if lot.expires_at is not None and lot.expires_at <= now:
                amount = lot.remaining
                lot.remaining = 0
                lot.state = "expired"
                self._touch(lot)
                self.available -= amount
                out.append(self._entry("expire", 0, -amount, now, lot, "expired"))
        return out

    def adjust(
        self,
        points: int,
        rules: ProgramRules,
        now: datetime,
        reason: str,
        actor: str,
        lot_id: str | None = None,
    ) -> list[Entry]:
        """A manual correction. Credits become a lot (they expire like any points);
        debits never overdraw."""
        if points == 0:
            raise ValueError("points must not be zero")
        if points > 0:
            lot = Lot(
                id=lot_id or new_id(),
                source="adjust",
                source_id=lot_id or new_id(),
                points=points,
                earned_at=now,
                available_at=now,
                state="available",
            )
            lot.start_expiry(rules, now)
            self.lots.append(lot)
            self._touch(lot)
            self._credit_available(lot, points)
            return [self._entry("adjust", 0, points, now, lot, reason, actor=actor)]
        if self.spendable < -points:
            raise InsufficientPoints(self.available, -points)
        self._consume(-points)
        self.available += points
        return [self._entry("adjust", 0, points, now, None, reason, actor=actor)]

    def note_unpriced(self, order_id: str, reason: str, now: datetime) -> Entry:
        """A zero entry saying an order (or a refund of it) could not be priced in the
        program's currency; it moves no points."""
        return Entry(
            id=new_id(),
            kind="unpriced",
            pending_delta=0,
            available_delta=0,
            at=now,
            order_id=order_id,
            reason=reason,
        )

    def expiring(self, now: datetime, notice_days: int) -> list[Lot]:
        horizon = now + timedelta(days=notice_days)
        return [lot for lot in self._fifo() if lot.expires_at and lot.expires_at <= horizon]

    def check(self) -> None:
        """The ledger invariant; the property tests call it after every step."""
        remaining = sum(lot.remaining for lot in self.lots if lot.state == "available")
        assert remaining == self.spendable, (remaining, self.available)
        assert self.pending == sum(lot.effective for lot in self.lots if lot.state == "pending")
        assert all(lot.remaining >= 0 and 0 <= lot.clawed <= lot.points for lot in self.lots)

    @staticmethod
    def _entry(
        kind: EntryKind,
        pending_delta: int,
        available_delta: int,
        now: datetime,
        lot: Lot | None,
        reason: str | None,
        *,
        actor: str | None = None,
        ref: str | None = None,
    ) -> Entry:
        return Entry(
            id=new_id(),
            kind=kind,
            pending_delta=pending_delta,
            available_delta=available_delta,
            at=now,
            lot_id=lot.id if lot else None,
            order_id=lot.order_id if lot else None,
            reason=reason,
            actor=actor,
            ref=ref,
            rule_snapshot=lot.rule_snapshot if lot and lot.rule_snapshot else None,
        )


def balances(entries: list[Entry]) -> tuple[int, int]:
    """(available, pending) derived from entries alone."""
    return (sum(e.available_delta for e in entries), sum(e.pending_delta for e in entries))


# --- currencies -------------------------------------------------------------------


@dataclass(frozen=True)
class ExchangeRate:
    """``1 currency = rate quote`` (the program's currency), as the tenant stated it on
    ``as_of``."""

    currency: str
    quote: str
    rate: Decimal
    as_of: date


@dataclass(frozen=True)
class Pricing:
    """An order's value in the program's currency, or why it has none.

    ``factor`` turns minor units of ``source_currency`` into minor units of ``currency``
    (1 when the order states an amount in the program's currency); None when unpriced."""

    currency: str
    source_currency: str
    source_minor: int
    factor: Decimal | None
    rate: Decimal | None = None
    rate_as_of: date | None = None
    unpriced_reason: str | None = None

    @property
    def priced(self) -> bool:
        return self.factor is not None

    @property
    def value_minor(self) -> int | None:
        return convert_minor(self.source_minor, self.factor) if self.factor is not None else None


def minor_factor(rate: Decimal, source: str, quote: str) -> Decimal:
    """Minor units of ``quote`` per minor unit of ``source`` at ``rate`` (1 source =
    rate quote): JPY has no minor unit, KWD three, most currencies two."""
    return rate.scaleb(currency_exponent(quote) - currency_exponent(source))


def convert_minor(amount_minor: int, factor: Decimal) -> int:
    """An amount converted with a minor-unit factor, rounded half up to the target's
    minor unit (the one rounding of a conversion; see the module doc)."""
    return int((Decimal(amount_minor) * factor).quantize(Decimal(1), rounding=ROUND_HALF_UP))


def price_order(
    currency: str, amounts: Sequence[tuple[str, int]], rates: Mapping[str, ExchangeRate]
) -> Pricing:
    """Price an order in the program's ``currency``.

    ``amounts`` are the order's totals as (currency, minor units), shop money first.
    An amount already in the program's currency wins; else the first amount with a rate
    into it is converted; else the order is unpriced, with the reason."""
    if not amounts:
        return Pricing(currency, currency, 0, None, unpriced_reason="the order states no total")
    for cur, minor in amounts:
        if cur == currency:
            return Pricing(currency, cur, minor, Decimal(1))
    for cur, minor in amounts:
        rate = rates.get(cur)
        if rate is not None and rate.quote == currency:
            return Pricing(
                currency,
                cur,
                minor,
                minor_factor(rate.rate, cur, currency),
                rate=rate.rate,
                rate_as_of=rate.as_of,
            )
    cur, minor = amounts[0]
    stated = " or ".join(c for c, _ in amounts)
    return Pricing(
        currency,
        cur,
        minor,
        None,
        unpriced_reason=f"no exchange rate from {stated} to {currency}: the order earns no"
        f" points (a rate set with PUT /v1/exchange-rates/{cur} prices later orders)",
    )


def refund_in_order_currency(
    order_currency: str,
    order_total_minor: int,
    presentment: tuple[str, int] | None,
    refund_amounts: Sequence[tuple[str, int]],
) -> int | None:
    """A refund's amount in the order's own currency, or None when it cannot be related.

    The refund's amount in that currency when it states one; else its share of the
    order's presentment total applied to the order total (floored: a clawback never
    takes more than was refunded). No exchange rate is involved: a clawback takes back
    the refunded share of the points, whatever the rates do meanwhile."""
    for cur, minor in refund_amounts:
        if cur == order_currency:
            return minor
    if presentment is not None and presentment[1] > 0:
        for cur, minor in refund_amounts:
            if cur == presentment[0]:
                return minor * order_total_minor // presentment[1]
    return None


# --- orders -----------------------------------------------------------------------


@dataclass
class OrderRecord:
    """What loyalty remembers about an order: enough to earn, schedule and claw back."""

    order_id: str
    total_minor: int
    currency: str
    placed_at: datetime
    refunded_minor: int = 0
    refund_ids: list[str] = field(default_factory=list)
    fully_refunded: bool = False
    cancelled: bool = False
    fulfilled_at: datetime | None = None
    delivered_at: datetime | None = None
    # Minor units of the program's currency per minor unit of ``currency`` (see
    # :class:`Pricing`); None: unpriced, the order earns no points.
    fx_factor: Decimal | None = Decimal(1)

    @property
    def net_value_minor(self) -> int:
        """What the order earns on, in the program's currency: its net amount converted
        at the rate it was priced at (0 when unpriced)."""
        if self.fx_factor is None:
            return 0
        return convert_minor(self.net_minor, self.fx_factor)

    def record_refund(self, refund_id: str, amount_minor: int, full: bool) -> bool:
        """Remember a refund once; False when this refund id was already applied."""
        if refund_id in self.refund_ids:
            return False
        self.refund_ids.append(refund_id)
        self.refunded_minor += max(0, amount_minor)
        self.fully_refunded = self.fully_refunded or full
        return True

    @property
    def voided(self) -> bool:
        """Cancelled, or refunded in full (flagged so, or refunds reaching the total)."""
        refunded_all = self.refunded_minor > 0 and self.refunded_minor >= self.total_minor
        return self.cancelled or self.fully_refunded or refunded_all

    @property
    def net_minor(self) -> int:
        if self.voided:
            return 0
        return max(0, self.total_minor - self.refunded_minor)


def earns_at(rules: ProgramRules, status: str, order: OrderRecord) -> bool:
    """Whether an order reaching ``status`` should earn now (the first earning status).

    A voided order never earns, not even its first-order bonus: with earning at
    fulfilment or delivery the refund or cancellation may come first, when there is
    nothing to claw back yet, and a void order keeps no points."""
    return not order.voided and status in rules.earning_statuses


def earning_basis(order: OrderRecord) -> dict[str, Any]:
    """What an order's lots are earned on, for their rule snapshot: the total, the refunds
    recorded before it earned (never earned, so never clawed back) and the net earned on,
    all in the order's currency; and the value in the program's currency with the
    conversion factor used (1 when no conversion)."""
    return {
        "order_total_minor": order.total_minor,
        "refunded_before_minor": order.refunded_minor,
        "earned_on_minor": order.net_minor,
        "order_currency": order.currency,
        "fx_factor": str(order.fx_factor) if order.fx_factor is not None else None,
        "value_minor": order.net_value_minor,
    }


def order_clawback_target(lot: Lot, order: OrderRecord) -> int:
    """How many of an order lot's points its order's refunds take back: the refunds after
    the lot earned, as a share of the amount it earned on. Lots from before the basis was
    kept earned on the whole total with nothing refunded."""
    before = int(lot.rule_snapshot.get("refunded_before_minor", 0))
    basis = int(lot.rule_snapshot.get("earned_on_minor", order.total_minor))
    return clawback_target(lot.points, order.refunded_minor - before, basis, order.voided)


def rule_snapshot(rules: ProgramRules, multiplier: Decimal, tier: str | None) -> dict[str, Any]:
    return {
        "points_per_unit": rules.points_per_unit,
        "unit_minor": rules.unit_minor,
        "rounding": rules.rounding,
        "multiplier": str(multiplier),
        "tier": tier,
    }
