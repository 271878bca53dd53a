"""Pure rules of the front door shared by every platform: errors, signatures, money,
hashing, the cleaning boundary, the normalization output (emits, the order record) and
historical marks. Each platform's own normalization is in
:mod:`afterglow.ingest.platforms`. No I/O here: the time comes in as an argument.
"""

from __future__ import annotations

import base64
import functools
import hashlib
import hmac
import html
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

from annotated_types import MaxLen
from pydantic import BaseModel

from afterglow.events import catalog as c
from afterglow.events.envelope import MAX_SUBJECT_LENGTH
from afterglow.events.money import currency_exponent
from afterglow.ingest.customers import Requester
from afterglow.kit.contact_hash import (  # one definition, shared with the console
    email_hash,
    phone_hash,
    sha256_hex,
)
from afterglow.kit.text import clean_text, has_control_chars

# --- errors -------------------------------------------------------------------------


class NormalizationError(ValueError):
    """A signed payload we cannot turn into events. ``field`` names the culprit."""

    def __init__(self, message: str, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class MissingField(NormalizationError):
    def __init__(self, field: str) -> None:
        super().__init__(f"{field} is required", field)


# --- signatures ---------------------------------------------------------------------


def hmac_sha256(secret: bytes, message: bytes) -> bytes:
    return hmac.new(secret, message, hashlib.sha256).digest()


def b64_hmac(secret: str, message: bytes) -> str:
    return base64.b64encode(hmac_sha256(secret.encode(), message)).decode()


def verify_b64_hmac(secrets: Iterable[str], message: bytes, presented: str | None) -> bool:
    """Shopify, WooCommerce, AfterShip, Zendesk: base64 HMAC-SHA256, any active secret."""
    if not presented:
        return False
    ok = False
    for secret in secrets:
        # No early exit: every secret is compared so timing says nothing about which.
        ok |= hmac.compare_digest(b64_hmac(secret, message).encode(), presented.strip().encode())
    return ok


# Authentication headers are parsed strictly, as ASCII within a length bound, before
# anything else looks at them: ``str.isdigit()`` accepts "²" and 5,000 nines, which
# ``int()`` then refuses or chokes on, and that answered an unauthenticated 500.
_UNIX_SECONDS = re.compile(r"[0-9]{1,12}")
_TIMESTAMP = re.compile(r"[0-9]{1,12}|[0-9T:.+\-Z ]{10,40}")
_HEADER_VALUE = re.compile(r"[\x20-\x7e]{1,2048}")


def well_formed_header(value: str) -> bool:
    """Printable ASCII, not empty, at most 2 KiB: what any signature, timestamp or
    token header we verify looks like. Anything else is refused as unauthenticated."""
    return _HEADER_VALUE.fullmatch(value) is not None


def timestamp_fresh(timestamp: str | None, now: datetime, tolerance_s: int) -> bool:
    """Unix seconds (Standard Webhooks) or ISO 8601 (Zendesk), within the tolerance."""
    if not timestamp:
        return False
    ts = timestamp.strip()
    if not _TIMESTAMP.fullmatch(ts):
        return False
    try:
        if _UNIX_SECONDS.fullmatch(ts):
            sent = datetime.fromtimestamp(int(ts), UTC)
        else:
            sent = datetime.fromisoformat(ts.replace("Z", "+00:00"))
            if sent.tzinfo is None:
                return False
    except (ValueError, OverflowError, OSError):
        return False
    return abs((now - sent).total_seconds()) <= tolerance_s


# --- money, hashing, small parsers --------------------------------------------------


# Minor units are stored in bigint columns (ours and every consumer's): "1e30", "1e309"
# or 2**70 would overflow them at the insert, after the webhook was acknowledged.
MAX_MINOR = 2**63 - 1


def to_minor(amount: Any, currency: str, field: str = "amount") -> int:
    """A decimal string (as platforms send it) to integer minor units, exactly.

    Every amount a platform sends us (totals, prices, refunds) is >= 0: a negative
    total would show as negative spend and still earn a first-order bonus, a negative
    refund would add to the order, so both are refused, naming the field."""
    if isinstance(amount, bool) or not isinstance(amount, str | int | float | Decimal):
        raise NormalizationError(f"{field} is not a decimal amount", field)
    try:
        value = Decimal(str(amount))
    except InvalidOperation as exc:
        raise NormalizationError(f"{field} is not a decimal amount", field) from exc
    if not value.is_finite():
        raise NormalizationError(f"{field} is not a decimal amount", field)
    if value < 0:
        raise NormalizationError(f"{field} is negative", field)
    scaled = value.scaleb(currency_exponent(currency))
    if scaled > MAX_MINOR:
        raise NormalizationError(f"{field} is too large", field)
    # Half-up: a sub-minor-unit remainder only appears in tax-inclusive edge cases.
    return int(scaled.quantize(Decimal(1), rounding="ROUND_HALF_UP"))


def refund_minor(amount: Any, currency: str, field: str) -> int:
    """A refund's amount as a magnitude: WooCommerce lists ``refunds[].total`` as a
    negative string ("-10.00"), BigCommerce as a positive one; either way it is money
    going back, never added to the order (``to_minor`` refuses a negative amount)."""
    if isinstance(amount, str) and amount.startswith("-"):
        amount = amount[1:]
    elif isinstance(amount, int | float | Decimal) and not isinstance(amount, bool):
        amount = abs(amount)
    return to_minor(amount, currency, field)


def money(amount: Any, currency: str, field: str = "amount") -> c.Money:
    currency = (currency or "").upper()
    if not re.fullmatch(r"[A-Z]{3}", currency):
        raise NormalizationError("currency must be an ISO 4217 code", "currency")
    return c.Money(amount=to_minor(amount, currency, field), currency=currency)


def with_order_count(data: c.OrderPlaced, book_count: int) -> c.OrderPlaced:
    """The one definition of a customer's order count (every service's "first order"
    reads it through ``catalog.is_first_order``): the orders ingest's order book has
    seen for this customer, this one included, or the platform's count when larger
    (the platform knows orders from before the shop installed Afterglow).

    The platform's count alone is not trusted: Shopify's ``customer.orders_count`` is
    often stale (its own orders/create fixture says 0 for an order that exists) or
    absent (guest checkouts, WooCommerce). What the normaliser or a canonical sender
    stated is kept as ``platform_orders_count``."""
    platform = (
        data.platform_orders_count
        if data.platform_orders_count is not None
        else data.customer_orders_count
    )
    return data.model_copy(
        update={
            "platform_orders_count": platform,
            "customer_orders_count": max(book_count, platform or 0),
        }
    )


def address_hash(*parts: Any) -> str | None:
    """Same street address -> same hash, whatever the case and spacing (fraud checks)."""
    cleaned = [re.sub(r"\s+", " ", str(p)).strip().lower() for p in parts if p]
    return sha256_hex("|".join(cleaned)) if cleaned else None


def referral_from_landing_site(landing_site: str | None) -> str | None:
    """``/?ref=ADA7K2&utm_source=x`` -> ``ADA7K2``."""
    if not landing_site:
        return None
    query = urlsplit(landing_site).query
    values = parse_qs(query).get("ref")
    return values[0].strip()[:64] if values and values[0].strip() else None


def discount_codes(value: Any) -> list[str]:
    """Shopify sends ``[{"code": "X", ...}]``, WooCommerce ``coupon_lines`` alike; a bare
    list of codes is taken too."""
    codes = (d.get("code") if isinstance(d, Mapping) else d for d in value or [])
    return [str(code) for code in codes if code not in (None, "")]


def parse_time(value: Any, field: str) -> datetime:
    """ISO 8601; a naive time is UTC (WooCommerce's ``*_gmt`` fields carry no offset)."""
    if value is None or value == "":
        raise MissingField(field)
    try:
        if isinstance(value, int | float):
            return datetime.fromtimestamp(value, UTC)
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except (ValueError, OverflowError, OSError) as exc:  # 9e99 seconds overflows
        raise NormalizationError(f"{field} is not an ISO 8601 time", field) from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def require(payload: Mapping[str, Any], key: str, prefix: str = "") -> Any:
    value = payload.get(key) if isinstance(payload, Mapping) else None
    if value is None or value == "":
        raise MissingField(prefix + key)
    return value


def customer_subject(
    platform_customer_id: Any, email: str | None, order_id: str, phone: str | None = None
) -> str:
    """The envelope subject: the platform's customer id; else a hash of the email (guest
    checkouts), or of the phone, so that one guest's orders still line up; else the
    order itself: ``order:<order id>`` (c.ANONYMOUS_SUBJECT_PREFIX) says nobody can be
    messaged or credited for it, and journeys and loyalty skip it."""
    if platform_customer_id not in (None, "", 0, "0"):
        return str(platform_customer_id)
    h = email_hash(email)
    if h:
        return f"email:{h[:32]}"
    h = phone_hash(phone)
    if h:
        return f"phone:{h[:32]}"
    return f"{c.ANONYMOUS_SUBJECT_PREFIX}{order_id}"


# --- the boundary: one cleaning pass in, one error mapping out -----------------------

# Platforms that HTML-encode text in their payloads: WooCommerce sends product names
# as "Ship Your Idea &ndash; Color: Black" and "Fish &amp; Chips".
HTML_ENCODED_PLATFORMS = frozenset({"woocommerce"})


def clean_payload(value: Any, *, html_encoded: bool = False) -> Any:
    """Every string of a parsed payload made clean (afterglow.kit.text): entities
    unescaped where the platform encodes them, NFC, no NUL or other control character.

    A NUL in a customer's name was acknowledged, then dead-lettered by every consumer
    (PostgreSQL text cannot hold it): the order was lost. Cleaning the whole payload
    once, before any platform's normalizer reads it, covers every field of every
    platform, and the dedupe keys read from it. Depth is bounded by the JSON parser."""
    if isinstance(value, str):
        # Cleaned before unescaping too: a NUL inside "&am\x00p;" must not keep the
        # entity from being decoded.
        return clean_text(html.unescape(clean_text(value))) if html_encoded else clean_text(value)
    if isinstance(value, dict):
        return {k: clean_payload(v, html_encoded=html_encoded) for k, v in value.items()}
    if isinstance(value, list):
        return [clean_payload(v, html_encoded=html_encoded) for v in value]
    return value


M = TypeVar("M", bound=BaseModel)

# Contact data that long is not a real address, number or locale: dropped, not cut
# (a cut email would be somebody else's).
_DROPPED_WHEN_TOO_LONG = frozenset({"email", "phone", "locale", "timezone"})


# A model's fields do not change once it is built: what fit() reads of them is read
# once per (model, field). Reading pydantic's field metadata on every call was a tenth
# of a batch's normalizing (profile of bench/ingest/drain.py).
@functools.cache
def _max_length(model: type[BaseModel], name: str) -> int | None:
    info = model.model_fields.get(name)
    for meta in info.metadata if info is not None else ():
        if isinstance(meta, MaxLen):
            return int(meta.max_length)
    return None


@functools.cache
def _optional_patterns(model: type[BaseModel], name: str) -> tuple[re.Pattern[str], ...]:
    info = model.model_fields.get(name)
    if info is None or info.is_required():
        return ()
    patterns = [getattr(m, "pattern", None) for m in info.metadata]
    return tuple(re.compile(p) for p in patterns if isinstance(p, str))


def _misfit_optional(model: type[BaseModel], name: str, value: str) -> bool:
    """An optional field's value that its pattern refuses (a shipping country "USA"
    where the catalog holds ISO 3166 alpha-2): dropped rather than costing the order."""
    return any(not p.search(value) for p in _optional_patterns(model, name))


def fit(model: type[M], **values: Any) -> M:
    """``model(**values)`` with text bounded to the catalog's lengths, which are what
    every consumer holds: free text (a name, a title, a SKU) is cut, contact data is
    dropped, as is an optional value of the wrong shape. A 300-character first name
    then costs nothing but its tail."""
    for name, value in values.items():
        if not isinstance(value, str):
            continue
        limit = _max_length(model, name)
        if limit is not None and len(value) > limit:
            values[name] = None if name in _DROPPED_WHEN_TOO_LONG else value[:limit]
        elif _misfit_optional(model, name, value):
            values[name] = None
    return model(**values)


def quantity(value: Any, field: str) -> int | None:
    """A line's quantity; None for 0 (a line an order edit removed: nothing to review
    or earn on, so it is dropped), refused when negative, fractional or not a number."""
    if value is None or value == "":
        raise MissingField(field)
    if isinstance(value, bool) or not isinstance(value, int | str | float):
        raise NormalizationError(f"{field} is not a whole number", field)
    try:
        number = Decimal(str(value))
    except InvalidOperation as exc:
        raise NormalizationError(f"{field} is not a whole number", field) from exc
    if not number.is_finite() or number != number.to_integral_value():
        raise NormalizationError(f"{field} is not a whole number", field)
    if number < 0:
        raise NormalizationError(f"{field} is negative", field)
    if number > 1_000_000:
        raise NormalizationError(f"{field} is too large", field)
    return int(number) or None


# What a payload of the wrong shape raises inside a normalizer: a string where an
# object was expected (AttributeError), a list of numbers where objects were (TypeError),
# a value the catalog refuses (pydantic's ValidationError is a ValueError), an
# out-of-range number (OverflowError, ArithmeticError).
_SHAPE_ERRORS = (
    TypeError,
    AttributeError,
    KeyError,
    IndexError,
    ValueError,
    ArithmeticError,
    OSError,
)


@contextmanager
def normalization_errors() -> Iterator[None]:
    """The one place where a signed payload of the wrong shape becomes a
    NormalizationError, which the receivers turn into a quarantined delivery (never a
    500, which Shopify retries for hours and WooCommerce answers by disabling the hook)."""
    try:
        yield
    except NormalizationError:
        raise
    except RecursionError as exc:
        raise NormalizationError("the payload nests too deeply") from exc
    except _SHAPE_ERRORS as exc:
        detail = str(exc).splitlines()[0] if str(exc) else ""
        message = f"unexpected payload: {type(exc).__name__}: {detail}"
        raise NormalizationError(message[:500]) from exc


# Ids become primary keys (orders, order facts): a btree cannot index a key past
# about 2,700 bytes, so a 5,000-character order id failed the insert after the normalizer.
MAX_ID_LENGTH = 200
_ID_FIELDS = ("order_id", "refund_id", "ticket_id")


def check_subjects(normalized: Normalized) -> Normalized:
    """Subjects and ids come from payloads too (customer ids, Zendesk external ids,
    order ids): one that no envelope or key can carry is refused here, not when the
    event is built or its key inserted after the delivery was stored."""
    for item in normalized.emits:
        s = item.subject
        if s is not None and (len(s) > MAX_SUBJECT_LENGTH or not s or has_control_chars(s)):
            raise NormalizationError("the customer id is not a valid subject", "customer_id")
        for name in _ID_FIELDS:
            value = getattr(item.data, name, None)
            if isinstance(value, str) and len(value) > MAX_ID_LENGTH:
                raise NormalizationError(f"{name} is too long", name)
    return normalized


# --- normalization output -----------------------------------------------------------


@dataclass(frozen=True)
class Emit:
    """One event to emit. ``subject`` None: the order's customer, looked up by the caller
    (fulfilment, refund and tracking payloads do not carry the customer)."""

    data: c.EventData
    subject: str | None


@dataclass(frozen=True)
class OrderRecord:
    order_id: str
    platform_order_id: str
    subject: str
    total: c.Money | None
    # The total in the customer's currency when it differs from ``total``'s: a later
    # refund stated in it (Shopify refunds in the presentment currency) is compared
    # with this one.
    presentment: c.Money | None = None


@dataclass
class Normalized:
    known_topic: bool = True
    emits: list[Emit] = field(default_factory=list)
    order: OrderRecord | None = None
    # customers/redact: scrub stored raw payloads that mention these (normalized) emails.
    forget_emails: list[str] = field(default_factory=list)
    # Stored instead of the raw body: the customers/redact request without the contact
    # data it asks us to forget (a data export would otherwise hand it back).
    stored_body: bytes | None = None
    # A ticket event: who asked, for the caller to resolve to a customer
    # (afterglow.ingest.customers.resolve), which then sets the emits' subjects.
    requester: Requester | None = None


def fact_key(data: c.EventData) -> str | None:
    """The fact an order event states, emitted once per tenant whichever source said it
    first (webhook, a late retry of it, reconciliation, REST). Tickets and erasures
    have none: their delivery id is their identity."""
    if isinstance(data, c.OrderPlaced):
        return f"{data.order_id}:placed"
    if isinstance(data, c.OrderFulfilled):
        return f"{data.order_id}:fulfilled"
    if isinstance(data, c.OrderDelivered):
        return f"{data.order_id}:delivered"
    if isinstance(data, c.OrderCancelled):
        return f"{data.order_id}:cancelled"
    if isinstance(data, c.OrderRefunded):
        return f"{data.order_id}:refund:{data.refund_id}"
    return None


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def epoch_placeholder() -> datetime:
    """Placeholder replaced by the caller with the delivery's receive time."""
    return _EPOCH


def stamp_requested_at(data: c.EventData, received_at: datetime) -> c.EventData:
    if isinstance(data, c.CustomerErasureRequested) and data.requested_at == _EPOCH:
        return data.model_copy(update={"requested_at": received_at})
    return data


def complete_refund(
    data: c.EventData,
    order_total: c.Money | None,
    presentment: c.Money | None = None,
    refunded_before: int = 0,
) -> c.EventData:
    """Complete a refund from the order book: the order total, the refund in the shop's
    currency, and whether it is full.

    A refund stated in the customer's currency (Shopify refunds in the presentment one)
    is never compared with a total in the shop's: its shop amount is its share of the
    presentment total applied to the shop total (floored: never more than refunded).
    It is full when it, with the refunds emitted before it (``refunded_before``, shop
    minor units), covers the order total: two partial refunds of 19.50 on a 39.00 order
    end the journey on the second. A refund the normalizer already knows is full stays
    full."""
    if not isinstance(data, c.OrderRefunded) or order_total is None:
        return data
    update: dict[str, Any] = {"order_total": order_total}
    shop = c.amount_in(order_total.currency, data.amounts())
    if (
        shop is None
        and presentment is not None
        and presentment.amount > 0
        and data.amount.currency == presentment.currency
    ):
        shop = c.Money(
            amount=data.amount.amount * order_total.amount // presentment.amount,
            currency=order_total.currency,
        )
        if data.presentment_amount is None:
            update["presentment_amount"] = data.amount
    if shop is not None:
        update["shop_amount"] = shop
        update["full"] = data.full or refunded_before + shop.amount >= order_total.amount
    return data.model_copy(update=update)


# --- historical events (imports, late deliveries) -----------------------------------

ORDER_EVENT_TYPES = (
    c.OrderPlaced,
    c.OrderFulfilled,
    c.OrderDelivered,
    c.OrderRefunded,
    c.OrderCancelled,
)


def _occurred_at(data: c.EventData) -> datetime | None:
    for name in ("placed_at", "fulfilled_at", "delivered_at", "refunded_at", "cancelled_at"):
        value = getattr(data, name, None)
        if isinstance(value, datetime):
            return value
    return None


def mark_late(emits: list[Emit], received_at: datetime, late_order_days: int) -> list[Emit]:
    """Mark a live delivery's order events historical when the order is older than the
    tenant's limit at arrival (a re-sent webhook, a first sync): they are recorded and
    counted, but start no journey or survey and earn no first-order bonus.

    The order's age is its ``placed_at`` when the delivery carries it (every event of
    the order then shares the decision), else the event's own time: a fulfilment that
    happened two years ago is history too. ``late_order_days`` 0 turns it off."""
    if late_order_days <= 0:
        return emits
    limit = timedelta(days=late_order_days)
    placed = {e.data.order_id: e.data.placed_at for e in emits if isinstance(e.data, c.OrderPlaced)}
    out = []
    for e in emits:
        data = e.data
        if not isinstance(data, ORDER_EVENT_TYPES) or data.historical:
            out.append(e)
            continue
        when = placed.get(data.order_id) or _occurred_at(data)
        if when is None or received_at - when <= limit:
            out.append(e)
            continue
        days = (received_at - when).days
        reason = (
            f"order placed {days} days before it arrived (the tenant's limit is "
            f"{late_order_days} days)"
        )
        update = {"historical": True, "origin": "late", "historical_reason": reason}
        out.append(Emit(data.model_copy(update=update), e.subject))
    return out


def mark_imported(emits: list[Emit], *, earn_points: bool, since: datetime) -> list[Emit]:
    """Every order event of a history import is historical; ``earn_points`` is the
    tenant's choice whether loyalty credits the past orders."""
    reason = f"history import since {since.date().isoformat()}"
    update = {
        "historical": True,
        "origin": "import",
        "historical_reason": reason,
        "earn_points": earn_points,
    }
    return [
        Emit(e.data.model_copy(update=update), e.subject)
        if isinstance(e.data, ORDER_EVENT_TYPES)
        else e
        for e in emits
    ]


def retry_delay_s(attempt: int, base_s: float, max_s: float) -> float:
    """Exponential backoff after the ``attempt``-th failure (1-based): base, 2 base,
    4 base..., never more than ``max_s``."""
    return float(min(max_s, base_s * 2 ** min(max(attempt - 1, 0), 32)))


def reconcile_window_start(
    watermark: datetime | None, now: datetime, overlap_s: float, first_lookback_s: float
) -> datetime:
    """Where the next poll starts: a bit before the watermark (clock skew between us
    and the platform), or a fixed look-back on the first run."""
    if watermark is None:
        return now - timedelta(seconds=first_lookback_s)
    return watermark - timedelta(seconds=overlap_s)
