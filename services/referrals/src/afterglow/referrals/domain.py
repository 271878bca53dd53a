"""Referral rules, free of I/O: codes, the attribution window, fraud checks, confirmation.

Every fraud rule returns a :class:`Decision` with a machine-readable reason (the
``referral.rejected`` reasons of the catalog) and a human-readable detail, so that each
decision can be recorded and explained. Windows are measured on the order's
``placed_at``, not on the time the event is processed, so a replayed or late event gets
the same verdict as a punctual one.
"""

from __future__ import annotations

import hashlib
import secrets
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, fields, replace
from datetime import datetime, timedelta
from typing import Any, Literal
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from afterglow.events.catalog import is_first_order
from afterglow.events.money import format_money

# No 0/O, 1/I/L: a code read aloud or copied from a printed card must survive.
CODE_ALPHABET = "23456789ABCDEFGHJKMNPQRSTUVWXYZ"
MIN_CODE_LENGTH = 6
MAX_CODE_LENGTH = 8


def generate_code(length: int = 7, choice: Callable[[str], str] = secrets.choice) -> str:
    """A fresh random code. Uniqueness per tenant is the database's job (a unique
    constraint and a retry); 31**7 ≈ 2.7e10 makes a collision rare, not impossible."""
    if not MIN_CODE_LENGTH <= length <= MAX_CODE_LENGTH:
        raise ValueError(f"code length must be {MIN_CODE_LENGTH}-{MAX_CODE_LENGTH}")
    return "".join(choice(CODE_ALPHABET) for _ in range(length))


def normalize_code(raw: str) -> str:
    """What a customer typed, as stored: upper case, no spaces or dashes."""
    return "".join(ch for ch in raw.strip().upper() if ch not in " -")


def is_code_shaped(code: str) -> bool:
    """True when a normalized string could be one of our codes (cheap pre-filter that
    keeps ordinary discount codes such as WELCOME10 away from the database)."""
    return MIN_CODE_LENGTH <= len(code) <= MAX_CODE_LENGTH and all(
        ch in CODE_ALPHABET for ch in code
    )


def share_url(base_url: str, code: str) -> str:
    """The link an advocate shares: the shop's URL with ``ref=CODE``, the landing-site
    parameter that ingest turns into ``OrderPlaced.referral_code``."""
    parts = urlsplit(base_url)
    query = [(k, v) for k, v in parse_qsl(parts.query, keep_blank_values=True) if k != "ref"]
    query.append(("ref", code))
    return urlunsplit(parts._replace(query=urlencode(query)))


def contact_hash(value: str | None) -> str | None:
    """sha256 of a normalized email or phone, for when the sender gave no hash."""
    if not value:
        return None
    normalized = value.strip().lower()
    if "@" not in normalized:  # a phone: keep digits and a leading plus
        normalized = ("+" if normalized.startswith("+") else "") + "".join(
            ch for ch in normalized if ch.isdigit()
        )
    return hashlib.sha256(normalized.encode()).hexdigest()


# --- attribution window -------------------------------------------------------------


def window_ends_at(invited_at: datetime, days: int) -> datetime:
    return invited_at + timedelta(days=days)


def within_window(invited_at: datetime, placed_at: datetime, days: int) -> bool:
    """An order counts from the invitation (inclusive) to ``days`` later (exclusive)."""
    return invited_at <= placed_at < window_ends_at(invited_at, days)


def confirmation_due(fulfilled_at: datetime, return_window_days: int) -> datetime:
    """The advocate's reward is granted once the referee can no longer return the order."""
    return fulfilled_at + timedelta(days=return_window_days)


# --- per-tenant policy ----------------------------------------------------------------

# Inclusive bounds of what a tenant may set. A return window of 0 days is a final sale:
# the conversion is confirmed as soon as the order is fulfilled.
RETURN_WINDOW_DAYS = (0, 365)
ATTRIBUTION_WINDOW_DAYS = (1, 365)

Source = Literal["tenant", "default"]

# The referee's reward a tenant may choose: bounds the discount request accepts
# (DiscountRequested: percent 1-100, a positive amount), and at most a year of validity.
RewardKind = Literal["percentage", "fixed_amount"]
REWARD_KINDS: tuple[RewardKind, ...] = ("percentage", "fixed_amount")
PERCENT_OFF = (1, 100)
REWARD_VALID_DAYS = (1, 365)


@dataclass(frozen=True)
class RefereeReward:
    """The friend's half of the double-sided reward: a percentage or a fixed amount
    (minor units of ``currency``) off their next order, valid ``valid_days`` days."""

    kind: RewardKind
    valid_days: int
    percent: int | None = None
    amount: int | None = None
    currency: str | None = None

    def label(self) -> str:
        """``"15% off"``, ``"5.00 EUR off"``: the discount's title and the message's."""
        if self.kind == "fixed_amount":
            assert self.amount is not None and self.currency is not None
            return f"{format_money(self.amount, self.currency)} off"
        return f"{self.percent}% off"


# Percentage off the next order, for a month: ReferralCandy's and Friendbuy's common
# default, and what a tenant that chose nothing gets.
DEFAULT_REFEREE_REWARD = RefereeReward(kind="percentage", percent=10, valid_days=30)


@dataclass(frozen=True)
class Policy:
    """A tenant's effective settings: its own value where it set one, else the service's
    default; ``sources`` says which, per field, so the API can show it."""

    share_base_url: str
    return_window_days: int
    attribution_window_days: int
    referee_reward: RefereeReward = DEFAULT_REFEREE_REWARD
    sources: Mapping[str, Source] = field(default_factory=dict)

    def overridden_by(self, own: Mapping[str, Any]) -> Policy:
        """This policy (the service's defaults) with the tenant's non-null values."""
        names = [f.name for f in fields(self) if f.name != "sources"]
        chosen = {n: own[n] for n in names if own.get(n) is not None}
        sources: dict[str, Source] = {n: "tenant" if n in chosen else "default" for n in names}
        return replace(self, **chosen, sources=sources)

    def limits(self, base: Limits) -> Limits:
        return replace(base, attribution_days=self.attribution_window_days)

    def confirmation_due(self, fulfilled_at: datetime) -> datetime:
        return confirmation_due(fulfilled_at, self.return_window_days)


# --- fraud checks --------------------------------------------------------------------

Outcome = Literal["accept", "reject", "hold"]
Reason = Literal[
    "refunded",
    "cancelled",
    "self_referral",
    "existing_customer",
    "advocate_cap",
    "velocity_review",
    "outside_window",
]


@dataclass(frozen=True)
class Decision:
    outcome: Outcome
    reason: Reason | None = None
    detail: str | None = None

    @property
    def accepted(self) -> bool:
        return self.outcome == "accept"


ACCEPT = Decision("accept")


@dataclass(frozen=True)
class Identity:
    """Who a customer is, as far as fraud checks need: ids and hashes, never raw PII."""

    customer_id: str
    email_hashes: frozenset[str] = frozenset()
    phone_hashes: frozenset[str] = frozenset()
    address_hashes: frozenset[str] = frozenset()


@dataclass(frozen=True)
class Limits:
    attribution_days: int = 90
    advocate_cap: int = 10
    advocate_cap_days: int = 30
    velocity_limit: int = 3
    velocity_window: timedelta = timedelta(hours=1)


def check_window(invited_at: datetime, placed_at: datetime, days: int) -> Decision:
    if within_window(invited_at, placed_at, days):
        return ACCEPT
    if placed_at < invited_at:
        return Decision("reject", "outside_window", "order placed before the invitation")
    return Decision("reject", "outside_window", f"order placed more than {days} days after")


def check_order_standing(refunded_at: datetime | None, cancelled_at: datetime | None) -> Decision:
    """An order already cancelled or fully refunded before it was attributed brings no
    customer: it is rejected exactly as a cancellation or refund after attribution is."""
    if cancelled_at is not None:
        return Decision("reject", "cancelled", "order cancelled before it was attributed")
    if refunded_at is not None:
        return Decision("reject", "refunded", "order fully refunded before it was attributed")
    return ACCEPT


def check_self_referral(advocate: Identity, referee: Identity) -> Decision:
    if advocate.customer_id == referee.customer_id:
        return Decision("reject", "self_referral", "same customer")
    if advocate.email_hashes & referee.email_hashes:
        return Decision("reject", "self_referral", "same email")
    if advocate.phone_hashes & referee.phone_hashes:
        return Decision("reject", "self_referral", "same phone")
    if advocate.address_hashes & referee.address_hashes:
        return Decision("reject", "self_referral", "same shipping address")
    return ACCEPT


def check_new_customer(platform_orders_count: int | None, earlier_orders_seen: int) -> Decision:
    """A referral rewards acquiring a customer: the referee's order must be their first,
    by the order's count (``customer_orders_count``, which ingest's order book sets; read
    with the catalog's one rule, as loyalty and journeys read it) and, stricter for
    fraud's sake, by what referrals has seen itself."""
    if platform_orders_count is not None and not is_first_order(platform_orders_count):
        return Decision(
            "reject", "existing_customer", f"platform counts {platform_orders_count} orders"
        )
    if earlier_orders_seen > 0:
        return Decision("reject", "existing_customer", f"{earlier_orders_seen} earlier order(s)")
    return ACCEPT


def check_advocate_cap(conversions_in_period: int, cap: int, days: int) -> Decision:
    """``conversions_in_period`` counts the advocate's live (not rejected) conversions in
    the ``days`` before this order, excluding it."""
    if conversions_in_period >= cap:
        return Decision(
            "reject", "advocate_cap", f"{conversions_in_period} conversions in {days} days"
        )
    return ACCEPT


def check_velocity(recent_from_code: int, limit: int, window: timedelta) -> Decision:
    """Many referred orders from one code in a short time look like a leaked or farmed
    code, but may be a viral post: held for a person to decide, not rejected."""
    if recent_from_code >= limit:
        minutes = int(window.total_seconds() // 60)
        return Decision(
            "hold",
            "velocity_review",
            f"{recent_from_code + 1} conversions from this code within {minutes} min",
        )
    return ACCEPT


@dataclass(frozen=True)
class Facts:
    """Everything the checks need about one attribution, gathered by the caller."""

    invited_at: datetime
    placed_at: datetime
    advocate: Identity
    referee: Identity
    platform_orders_count: int | None
    earlier_orders_seen: int
    advocate_conversions_in_period: int
    recent_from_code: int
    # What already happened to the order (an explicit attribution can come late).
    refunded_at: datetime | None = None
    cancelled_at: datetime | None = None


def evaluate(facts: Facts, limits: Limits) -> Decision:
    """Run the checks in order of severity; the first that objects decides. An order
    that no longer stands is rejected first (nothing else about it matters). Window and
    fraud rejections come before the velocity hold, so a held conversion is one a
    reviewer can approve in good conscience."""
    checks: Sequence[Callable[[], Decision]] = (
        lambda: check_order_standing(facts.refunded_at, facts.cancelled_at),
        lambda: check_window(facts.invited_at, facts.placed_at, limits.attribution_days),
        lambda: check_self_referral(facts.advocate, facts.referee),
        lambda: check_new_customer(facts.platform_orders_count, facts.earlier_orders_seen),
        lambda: check_advocate_cap(
            facts.advocate_conversions_in_period, limits.advocate_cap, limits.advocate_cap_days
        ),
        lambda: check_velocity(
            facts.recent_from_code, limits.velocity_limit, limits.velocity_window
        ),
    )
    for check in checks:
        decision = check()
        if not decision.accepted:
            return decision
    return ACCEPT


# --- metrics -------------------------------------------------------------------------


def referral_rate(advocates_converting: int, invited: int) -> float:
    """Share of invited advocates who brought at least one confirmed customer."""
    return 0.0 if invited == 0 else round(advocates_converting / invited, 4)
