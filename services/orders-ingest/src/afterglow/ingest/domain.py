"""Pure rules of the front door: signatures, money, hashing and normalization of each
platform's payload into catalog events. No I/O here: the time comes in as an argument.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import html
import json
import re
from collections.abc import Iterable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from email.utils import parsedate_to_datetime
from typing import Any, TypeVar
from urllib.parse import parse_qs, urlsplit

from annotated_types import MaxLen
from pydantic import BaseModel

from afterglow.events import catalog as c
from afterglow.events.envelope import MAX_SUBJECT_LENGTH
from afterglow.events.money import currency_exponent
from afterglow.ingest.customers import Requester, escalation_of
from afterglow.kit.contact_hash import (  # one definition, shared with the console
    email_hash,
    normalize_email,
    normalize_phone,
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


def shopify_money_set(value: Any, field: str) -> tuple[c.Money | None, c.Money | None]:
    """Shopify's ``*_set`` (a MoneyBag): ``{"shop_money": {"amount", "currency_code"},
    "presentment_money": {...}}`` -> (shop money, presentment money), each None when
    absent. Shopify states both because a shop sells in many currencies: the shop's own
    is what the merchant's programme is defined in, the presentment one what the customer
    paid; reading one as the other prices an order of 2,119.29 PLN as 2,119.29 USD."""
    if not isinstance(value, Mapping):
        return None, None
    out: list[c.Money | None] = []
    for side in ("shop_money", "presentment_money"):
        bag = value.get(side)
        if isinstance(bag, Mapping) and bag.get("amount") is not None:
            out.append(
                money(bag["amount"], str(bag.get("currency_code") or ""), f"{field}.{side}.amount")
            )
        else:
            out.append(None)
    return out[0], out[1]


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


def _max_length(model: type[Any], name: str) -> int | None:
    info = model.model_fields.get(name)
    for meta in info.metadata if info is not None else ():
        if isinstance(meta, MaxLen):
            return int(meta.max_length)
    return None


def _misfit_optional(model: type[Any], name: str, value: str) -> bool:
    """An optional field's value that its pattern refuses (a shipping country "USA"
    where the catalog holds ISO 3166 alpha-2): dropped rather than costing the order."""
    info = model.model_fields.get(name)
    if info is None or info.is_required():
        return False
    patterns = [getattr(m, "pattern", None) for m in info.metadata]
    return any(isinstance(p, str) and not re.search(p, value) for p in patterns)


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


# --- Shopify ------------------------------------------------------------------------

SHOPIFY_TOPICS = frozenset(
    {
        "orders/create",
        "orders/paid",
        "orders/fulfilled",
        "orders/cancelled",
        "refunds/create",
        "fulfillments/create",
        "fulfillments/update",
        "customers/redact",
        "shop/redact",
        "customers/data_request",
    }
)


def shopify_marketing_consent(
    customer: Mapping[str, Any], buyer_accepts_marketing: Any = None
) -> bool | None:
    """True: opted in; False: opted out; None: never said.

    Shopify's ``not_subscribed`` (and the legacy ``accepts_marketing: false``) means the
    box was never ticked, not that the customer refused: most buyers are in that state.
    Read as a refusal, it would silence every survey and review ask for them; messaging
    treats None as soft opt-in for email (with an unsubscribe link) and as no consent
    for SMS."""
    state = (customer.get("email_marketing_consent") or {}).get("state")
    if state == "subscribed":
        return True
    if state in ("unsubscribed", "redacted"):
        return False
    if state is None and True in (customer.get("accepts_marketing"), buyer_accepts_marketing):
        return True
    return None


def shopify_order_placed(p: Mapping[str, Any]) -> tuple[c.OrderPlaced, OrderRecord]:
    oid = str(require(p, "id"))
    order_id = f"shopify:{oid}"
    currency = str(require(p, "currency"))
    cust = p.get("customer") or {}
    email = p.get("email") or p.get("contact_email") or cust.get("email")
    ship = p.get("shipping_address") or {}
    phone = p.get("phone") or cust.get("phone") or ship.get("phone")
    accepts = shopify_marketing_consent(cust, p.get("buyer_accepts_marketing"))
    items = []
    for i, li in enumerate(p.get("line_items") or []):
        qty = quantity(li.get("quantity"), f"line_items.{i}.quantity")
        if qty is None:
            continue
        items.append(
            fit(
                c.LineItem,
                sku=li.get("sku") or None,
                product_id=str(li["product_id"]) if li.get("product_id") else None,
                title=li.get("title"),
                quantity=qty,
                unit_price=money(
                    require(li, "price", f"line_items.{i}."), currency, f"line_items.{i}.price"
                ),
            )
        )
    country = ship.get("country_code")
    total = money(require(p, "total_price"), currency, "total_price")
    # ``currency`` and ``total_price`` are the shop's money; the presentment side comes
    # from total_price_set, or is the same when the customer paid in the shop's currency.
    shop_total, presentment_total = shopify_money_set(p.get("total_price_set"), "total_price_set")
    if presentment_total is None and (p.get("presentment_currency") or currency) == currency:
        presentment_total = total
    data = fit(
        c.OrderPlaced,
        order_id=order_id,
        order_number=str(p.get("name") or p.get("order_number") or "") or None,
        platform="shopify",
        placed_at=parse_time(p.get("processed_at") or p.get("created_at"), "created_at"),
        customer=fit(
            c.CustomerInfo,
            email=normalize_email(email),
            phone=normalize_phone(phone),
            first_name=cust.get("first_name") or ship.get("first_name"),
            locale=p.get("customer_locale"),
            accepts_marketing=accepts,
            platform_customer_id=str(cust["id"]) if cust.get("id") else None,
            email_hash=email_hash(email),
            phone_hash=phone_hash(phone),
        ),
        total=total,
        shop_total=shop_total or total,
        presentment_total=presentment_total,
        subtotal=money(p["subtotal_price"], currency, "subtotal_price")
        if p.get("subtotal_price") is not None
        else None,
        line_items=items,
        discount_codes=discount_codes(p.get("discount_codes")),
        referral_code=referral_from_landing_site(p.get("landing_site")),
        shipping_country=country.upper() if isinstance(country, str) and country else None,
        shipping_address_hash=address_hash(
            ship.get("address1"), ship.get("address2"), ship.get("city"), ship.get("zip"), country
        ),
        # The platform's count as sent; ingest's intake sets customer_orders_count.
        platform_orders_count=cust.get("orders_count"),
    )
    subject = customer_subject(cust.get("id"), email, order_id, phone)
    return data, OrderRecord(order_id, oid, subject, data.total, data.presentment_total)


def _shopify_fulfilled(order_id: str, f: Mapping[str, Any], fallback: Any) -> c.OrderFulfilled:
    return c.OrderFulfilled(
        order_id=order_id,
        fulfilled_at=parse_time(f.get("created_at") or fallback, "created_at"),
        tracking_number=f.get("tracking_number"),
        carrier=f.get("tracking_company"),
    )


def normalize_shopify(topic: str, p: Mapping[str, Any]) -> Normalized:
    if topic not in SHOPIFY_TOPICS:
        return Normalized(known_topic=False)
    out = Normalized()
    if topic in ("orders/create", "orders/paid"):
        # orders/paid repeats the placement for shops that only count paid orders; the
        # fact table keeps it to one order.placed.
        data, out.order = shopify_order_placed(p)
        out.emits.append(Emit(data, out.order.subject))
    elif topic in ("orders/fulfilled", "orders/cancelled"):
        data, out.order = shopify_order_placed(p)
        # Reconciliation may meet an order for the first time already fulfilled.
        out.emits.append(Emit(data, out.order.subject))
        if topic == "orders/fulfilled":
            fulfilments = p.get("fulfillments") or [{}]
            out.emits.append(
                Emit(
                    _shopify_fulfilled(data.order_id, fulfilments[-1], p.get("updated_at")),
                    out.order.subject,
                )
            )
        else:
            out.emits.append(
                Emit(
                    c.OrderCancelled(
                        order_id=data.order_id,
                        cancelled_at=parse_time(
                            p.get("cancelled_at") or p.get("updated_at"), "cancelled_at"
                        ),
                        reason=p.get("cancel_reason"),
                    ),
                    out.order.subject,
                )
            )
    elif topic == "refunds/create":
        order_id = f"shopify:{require(p, 'order_id')}"
        txs = [
            t
            for t in p.get("transactions") or []
            if t.get("kind") == "refund" and t.get("status", "success") == "success"
        ]
        if not txs:
            # A refund that returned no money (a restock, or its transaction failed) is
            # no refund of the order: nothing to claw back. Refusing it (422) would make
            # Shopify retry it for hours and count failures against the webhook.
            return out
        currency = str(require(txs[0], "currency", "transactions.0.")).upper()
        total = sum(
            to_minor(require(t, "amount", f"transactions.{i}."), currency)
            for i, t in enumerate(txs)
        )
        # Refund transactions are in the presentment currency; the shop's side is only
        # known when every transaction states it (amount_set), else the caller derives
        # it from the order book.
        shop_sides = [shopify_money_set(t.get("amount_set"), "amount_set")[0] for t in txs]
        shop_amount = (
            c.Money(amount=sum(m.amount for m in shop_sides if m), currency=shop_sides[0].currency)
            if shop_sides[0] is not None
            and all(m is not None and m.currency == shop_sides[0].currency for m in shop_sides)
            else None
        )
        amount = c.Money(amount=total, currency=currency)
        out.emits.append(
            Emit(
                c.OrderRefunded(
                    order_id=order_id,
                    refund_id=str(require(p, "id")),
                    refunded_at=parse_time(
                        p.get("processed_at") or p.get("created_at"), "created_at"
                    ),
                    amount=amount,
                    shop_amount=shop_amount,
                    presentment_amount=amount,
                    full=False,  # completed by the caller, who knows the order total
                ),
                None,
            )
        )
    elif topic in ("fulfillments/create", "fulfillments/update"):
        order_id = f"shopify:{require(p, 'order_id')}"
        status = (p.get("shipment_status") or "").lower()
        if topic == "fulfillments/create" or status != "delivered":
            out.emits.append(Emit(_shopify_fulfilled(order_id, p, p.get("updated_at")), None))
        if status == "delivered":
            out.emits.append(
                Emit(
                    c.OrderDelivered(
                        order_id=order_id,
                        delivered_at=parse_time(p.get("updated_at"), "updated_at"),
                        reported_by="shopify",
                    ),
                    None,
                )
            )
    elif topic == "customers/redact":
        cust = require(p, "customer")
        subject = customer_subject(cust.get("id"), cust.get("email"), "none", cust.get("phone"))
        out.emits.append(Emit(c.CustomerErasureRequested(requested_at=_epoch()), subject))
        email = normalize_email(cust.get("email"))
        out.forget_emails = [email] if email else []
        out.stored_body = json.dumps(
            {**p, "customer": {"id": cust.get("id")} if cust.get("id") else {}}
        ).encode()
    elif topic == "shop/redact":
        out.emits.append(
            Emit(c.CustomerErasureRequested(requested_at=_epoch(), scope="tenant"), "*")
        )
    # customers/data_request: no catalog event; the stored delivery is the operator's
    # to-do (Shopify gives 30 days to answer).
    return out


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def _epoch() -> datetime:
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


# --- WooCommerce --------------------------------------------------------------------

WOO_TOPICS = frozenset({"order.created", "order.updated"})
# Statuses in which an order counts as placed (paid or committed to).
WOO_PLACED = frozenset({"processing", "on-hold", "completed"})


def woo_dedupe_key(p: Mapping[str, Any]) -> str:
    """WooCommerce changes its delivery id on every retry: the order and its
    modification time are what stays the same."""
    return f"{require(p, 'id')}@{p.get('date_modified_gmt') or require(p, 'date_modified')}"


def woo_order_placed(p: Mapping[str, Any]) -> tuple[c.OrderPlaced, OrderRecord]:
    oid = str(require(p, "id"))
    order_id = f"woocommerce:{oid}"
    currency = str(require(p, "currency"))
    billing = p.get("billing") or {}
    shipping = p.get("shipping") or {}
    email = billing.get("email")
    phone = billing.get("phone") or shipping.get("phone")
    items = []
    for i, li in enumerate(p.get("line_items") or []):
        qty = quantity(li.get("quantity"), f"line_items.{i}.quantity")
        if qty is None:
            continue
        # Woo's "price" is a float; subtotal / quantity is the exact pre-discount price.
        subtotal = Decimal(str(li.get("subtotal") or li.get("total") or "0"))
        unit = subtotal / qty
        items.append(
            fit(
                c.LineItem,
                sku=li.get("sku") or None,
                product_id=str(li["product_id"]) if li.get("product_id") else None,
                title=li.get("name"),
                quantity=qty,
                unit_price=money(unit, currency, f"line_items.{i}.subtotal"),
            )
        )
    country = shipping.get("country") or billing.get("country")
    ref = None
    for meta in p.get("meta_data") or []:
        if meta.get("key") in ("_afterglow_ref", "ref", "_ref"):
            ref = str(meta.get("value") or "") or None
    data = fit(
        c.OrderPlaced,
        order_id=order_id,
        order_number=str(p.get("number") or oid),
        platform="woocommerce",
        placed_at=parse_time(p.get("date_created_gmt") or p.get("date_created"), "date_created"),
        customer=fit(
            c.CustomerInfo,
            email=normalize_email(email),
            phone=normalize_phone(phone),
            first_name=billing.get("first_name"),
            platform_customer_id=str(p["customer_id"]) if p.get("customer_id") else None,
            email_hash=email_hash(email),
            phone_hash=phone_hash(phone),
        ),
        total=money(require(p, "total"), currency, "total"),
        # WooCommerce states the order's currency (a multi-currency plugin makes it the
        # customer's); the store's base currency is not in the payload.
        presentment_total=money(require(p, "total"), currency, "total"),
        line_items=items,
        discount_codes=discount_codes(p.get("coupon_lines")),
        referral_code=ref,
        shipping_country=country.upper() if isinstance(country, str) and country else None,
        shipping_address_hash=address_hash(
            shipping.get("address_1"),
            shipping.get("address_2"),
            shipping.get("city"),
            shipping.get("postcode"),
            country,
        ),
    )
    return data, OrderRecord(
        order_id, oid, customer_subject(p.get("customer_id"), email, order_id, phone), data.total
    )


def normalize_woocommerce(topic: str, p: Mapping[str, Any]) -> Normalized:
    if topic not in WOO_TOPICS:
        return Normalized(known_topic=False)
    out = Normalized()
    status = str(require(p, "status"))
    modified = parse_time(p.get("date_modified_gmt") or p.get("date_modified"), "date_modified")
    if status in WOO_PLACED or status in ("cancelled", "refunded"):
        placed, out.order = woo_order_placed(p)
        subject = out.order.subject
        if status in WOO_PLACED:
            out.emits.append(Emit(placed, subject))
        if status == "completed":
            out.emits.append(
                Emit(
                    c.OrderFulfilled(
                        order_id=placed.order_id,
                        fulfilled_at=parse_time(
                            p.get("date_completed_gmt") or modified.isoformat(), "date_completed"
                        ),
                    ),
                    subject,
                )
            )
        elif status == "cancelled":
            out.emits.append(
                Emit(c.OrderCancelled(order_id=placed.order_id, cancelled_at=modified), subject)
            )
        for refund in woo_refunds(p, placed, modified, fully=status == "refunded"):
            out.emits.append(Emit(refund, subject))
    # pending, failed, draft...: nothing happened that a journey cares about yet.
    return out


def woo_refunds(
    p: Mapping[str, Any], placed: c.OrderPlaced, modified: datetime, *, fully: bool
) -> list[c.OrderRefunded]:
    """One refund event per entry of the order's ``refunds[]`` (``{"id", "total":
    "-10.00", "reason"}``), keyed by the refund id: an order updated three times with a
    growing list states each refund once (the fact table drops the ones already said).

    Oldest first (ids grow); a refund is full when the refunds up to it reach the order
    total. The ``refunded`` status with an empty list (a refund made outside
    WooCommerce) is one full refund of the total, keyed ``full``."""
    listed = p.get("refunds") or []
    if not isinstance(listed, list) or not all(isinstance(r, Mapping) for r in listed):
        # Skipping an entry we cannot read would lose that refund for good: quarantine
        # the delivery instead, so it can be replayed once understood.
        raise NormalizationError("refunds is not a list of refund objects", "refunds")
    entries = list(listed)
    if not entries:
        if not fully:
            return []
        return [
            c.OrderRefunded(
                order_id=placed.order_id,
                refund_id="full",
                refunded_at=modified,
                amount=placed.total,
                order_total=placed.total,
                full=True,
            )
        ]
    currency = placed.total.currency

    def order_key(r: Mapping[str, Any]) -> tuple[int, str]:
        rid = str(r.get("id") or "")
        return (int(rid), rid) if rid.isascii() and rid.isdigit() else (0, rid)

    out = []
    refunded = 0
    ordered = sorted(entries, key=order_key)
    for i, r in enumerate(ordered):
        rid = str(require(r, "id", f"refunds.{i}."))
        amount = refund_minor(require(r, "total", f"refunds.{i}."), currency, f"refunds.{i}.total")
        refunded += amount
        last = i == len(ordered) - 1
        out.append(
            c.OrderRefunded(
                order_id=placed.order_id,
                refund_id=rid,
                refunded_at=modified,
                amount=c.Money(amount=amount, currency=currency),
                order_total=placed.total,
                full=refunded >= placed.total.amount or (fully and last),
            )
        )
    return out


# --- canonical payloads (Standard Webhooks, REST) -----------------------------------

ORDER_TYPES = frozenset(
    {
        "afterglow.order.placed.v1",
        "afterglow.order.fulfilled.v1",
        "afterglow.order.delivered.v1",
        "afterglow.order.refunded.v1",
        "afterglow.order.cancelled.v1",
    }
)
TICKET_TYPES = frozenset(
    {"afterglow.ticket.opened.v1", "afterglow.ticket.updated.v1", "afterglow.ticket.resolved.v1"}
)


def canonical_type(value: str) -> str:
    """Accepts ``order.placed``, ``afterglow.order.placed`` and the full type."""
    t = value.strip()
    if not t.startswith("afterglow."):
        t = "afterglow." + t
    if not re.search(r"\.v\d+$", t):
        t += ".v1"
    return t


# --- Zendesk ------------------------------------------------------------------------


_PRIORITIES = ("low", "normal", "high", "urgent")


def normalize_zendesk(p: Mapping[str, Any]) -> Normalized:
    """Zendesk event-subscription webhooks: ``{"type": "zen:event-type:ticket.created",
    "id", "time", "detail": {ticket}, "event": {...}}``."""
    etype = str(require(p, "type"))
    kind = etype.rsplit(":", 1)[-1]
    if not kind.startswith("ticket."):
        return Normalized(known_topic=False)
    detail = require(p, "detail")
    ticket_id = f"zendesk:{require(detail, 'id', 'detail.')}"
    when = parse_time(p.get("time") or detail.get("updated_at"), "time")
    requester = detail.get("requester") or {}
    if not isinstance(requester, Mapping):
        requester = {}
    external_id = str(detail["external_id"]) if detail.get("external_id") else None
    email = requester.get("email")
    subject = (
        external_id
        if external_id and escalation_of(external_id) is None
        else customer_subject(None, email, "")
        if normalize_email(email)
        else f"zendesk:{require(detail, 'requester_id', 'detail.')}"
    )
    who = Requester(
        ticket_id=ticket_id,
        fallback_subject=subject,
        customer_id=external_id if escalation_of(external_id) is None else None,
        email_hash=email_hash(email),
        phone_hash=phone_hash(requester.get("phone")),
        escalation_id=escalation_of(external_id),
    )
    status = str(detail.get("status") or "").lower()
    event = p.get("event") or {}
    current = str(event.get("current") or "").lower()
    priority = str(detail.get("priority") or "normal").lower()
    via = detail.get("via")
    channel = (
        str(via.get("channel"))[:50] if isinstance(via, Mapping) and via.get("channel") else None
    )
    out = Normalized(requester=who)
    replied = when if kind == "ticket.comment_added" and _agent_public_reply(event) else None
    if kind == "ticket.created":
        out.emits.append(
            Emit(
                fit(
                    c.TicketOpened,
                    ticket_id=ticket_id,
                    helpdesk="zendesk",
                    opened_at=parse_time(detail.get("created_at") or p.get("time"), "created_at"),
                    subject=detail.get("subject"),
                    priority=priority
                    if priority in ("low", "normal", "high", "urgent")
                    else "normal",
                    channel=channel,
                ),
                subject,
            )
        )
    elif "solved" in (status, current) or "closed" in (status, current):
        out.emits.append(Emit(c.TicketResolved(ticket_id=ticket_id, resolved_at=when), subject))
    else:
        out.emits.append(
            Emit(
                c.TicketUpdated(
                    ticket_id=ticket_id,
                    updated_at=when,
                    status=current or status,
                    agent_replied_at=replied,
                ),
                subject,
            )
        )
    return out


def _agent_public_reply(event: Any) -> bool:
    """A ``ticket.comment_added`` by an agent, public: the first one ends the ticket's
    first-response time (a customer's comment or an internal note does not)."""
    comment = event.get("comment") if isinstance(event, Mapping) else None
    if not isinstance(comment, Mapping):
        return False
    author = comment.get("author")
    staff = isinstance(author, Mapping) and author.get("is_staff") is True
    return staff and comment.get("is_public", True) is not False


# --- AfterShip ----------------------------------------------------------------------


def normalize_aftership(p: Mapping[str, Any]) -> tuple[Normalized, str | None]:
    """Returns the events and the platform order id the tracking belongs to (the caller
    turns it into Afterglow's order id)."""
    msg = require(p, "msg")
    tag = str(msg.get("tag") or "")
    platform_order_id = msg.get("order_id") or msg.get("order_number")
    out = Normalized()
    if tag.lower() == "delivered":
        if not platform_order_id:
            raise MissingField("msg.order_id")
        delivered = msg.get("shipment_delivery_date") or msg.get("updated_at")
        out.emits.append(
            Emit(
                c.OrderDelivered(
                    order_id=str(platform_order_id),  # resolved by the caller
                    delivered_at=parse_time(delivered, "msg.shipment_delivery_date"),
                    reported_by="aftership",
                ),
                None,
            )
        )
    return out, str(platform_order_id) if platform_order_id else None


# --- BigCommerce --------------------------------------------------------------------

BIGCOMMERCE_SCOPES = frozenset(
    {"store/order/created", "store/order/updated", "store/order/statusUpdated"}
)
# https://developer.bigcommerce.com/docs/store-operations/orders/order-statuses
# 14, Partially Refunded: a paid order some of whose money went back; still placed (its
# refunds are events of their own), or the refund would name an order nobody saw.
_BC_PLACED = {2, 3, 7, 8, 9, 10, 11, 12, 14}
_BC_SHIPPED = {2, 3, 10}


def bigcommerce_order_ref(payload: Mapping[str, Any]) -> str:
    """The order id a BigCommerce order webhook names (its only content besides the
    scope and the hash)."""
    data = payload.get("data")
    if not isinstance(data, Mapping):
        raise MissingField("data.id")
    return str(require(data, "id", "data."))


def retry_delay_s(attempt: int, base_s: float, max_s: float) -> float:
    """Exponential backoff after the ``attempt``-th failure (1-based): base, 2 base,
    4 base..., never more than ``max_s``."""
    return float(min(max_s, base_s * 2 ** min(max(attempt - 1, 0), 32)))


def normalize_bigcommerce_order(
    order: Mapping[str, Any],
    products: list[Mapping[str, Any]],
    refunds: list[Mapping[str, Any]] | None = None,
) -> Normalized:
    """An order as BigCommerce's V2 orders API returns it (with its products), and its
    refunds as the V3 payment actions API lists them."""

    oid = str(require(order, "id"))
    order_id = f"bigcommerce:{oid}"
    currency = str(order.get("currency_code") or require(order, "default_currency_code"))
    billing = order.get("billing_address") or {}
    email = billing.get("email")
    phone = billing.get("phone")
    created = require(order, "date_created")
    try:
        placed_at = parsedate_to_datetime(created)
    except (TypeError, ValueError):
        placed_at = parse_time(created, "date_created")
    status_id = int(order.get("status_id") or 0)
    items = [
        fit(
            c.LineItem,
            sku=pr.get("sku") or None,
            product_id=str(pr["product_id"]) if pr.get("product_id") else None,
            title=pr.get("name"),
            quantity=qty,
            unit_price=money(pr.get("base_price") or "0", currency, f"products.{i}.base_price"),
        )
        for i, pr in enumerate(products)
        if (qty := quantity(pr.get("quantity"), f"products.{i}.quantity")) is not None
    ]
    placed = fit(
        c.OrderPlaced,
        order_id=order_id,
        order_number=oid,
        platform="bigcommerce",
        placed_at=placed_at,
        customer=fit(
            c.CustomerInfo,
            email=normalize_email(email),
            phone=normalize_phone(phone),
            first_name=billing.get("first_name"),
            platform_customer_id=str(order["customer_id"]) if order.get("customer_id") else None,
            email_hash=email_hash(email),
            phone_hash=phone_hash(phone),
        ),
        total=money(require(order, "total_inc_tax"), currency, "total_inc_tax"),
        # The order states its currency; it is the store's own only when the store's
        # default currency says so (no rate is guessed here).
        shop_total=money(require(order, "total_inc_tax"), currency, "total_inc_tax")
        if str(order.get("store_default_currency_code") or currency).upper() == currency.upper()
        else None,
        presentment_total=money(require(order, "total_inc_tax"), currency, "total_inc_tax"),
        line_items=items,
        shipping_country=(billing.get("country_iso2") or None),
        shipping_address_hash=address_hash(
            billing.get("street_1"), billing.get("city"), billing.get("zip")
        ),
    )
    subject = customer_subject(order.get("customer_id"), email, order_id, phone)
    out = Normalized(order=OrderRecord(order_id, oid, subject, placed.total))
    if status_id in _BC_PLACED:
        out.emits.append(Emit(placed, subject))
    if status_id in _BC_SHIPPED:
        shipped = order.get("date_shipped") or created
        try:
            shipped_at = parsedate_to_datetime(shipped)
        except (TypeError, ValueError):
            shipped_at = placed_at
        out.emits.append(
            Emit(c.OrderFulfilled(order_id=order_id, fulfilled_at=shipped_at), subject)
        )
    if status_id == 5:
        out.emits.append(Emit(c.OrderCancelled(order_id=order_id, cancelled_at=placed_at), subject))
    for refund in bigcommerce_refunds(placed, refunds or [], fully=status_id == _BC_REFUNDED):
        out.emits.append(Emit(refund, subject))
    return out


_BC_REFUNDED = 4  # 14 is "Partially Refunded": its refunds come from the refunds list


def bigcommerce_refunds(
    placed: c.OrderPlaced, refunds: list[Mapping[str, Any]], *, fully: bool
) -> list[c.OrderRefunded]:
    """One refund event per refund (``{"id", "created", "total_amount"}``), keyed by its
    id, oldest first; full once the refunds up to it reach the order total. The
    ``Refunded`` status with no refund listed is one full refund of the total."""
    total = placed.total
    if not refunds:
        if not fully:
            return []
        return [
            c.OrderRefunded(
                order_id=placed.order_id,
                refund_id="full",
                refunded_at=placed.placed_at,
                amount=total,
                order_total=total,
                full=True,
            )
        ]
    ordered = sorted(refunds, key=lambda r: (str(r.get("created") or ""), str(r.get("id"))))
    out = []
    refunded = 0
    for i, r in enumerate(ordered):
        amount = refund_minor(
            require(r, "total_amount", f"refunds.{i}."), total.currency, f"refunds.{i}.total_amount"
        )
        refunded += amount
        out.append(
            c.OrderRefunded(
                order_id=placed.order_id,
                refund_id=str(require(r, "id", f"refunds.{i}.")),
                refunded_at=parse_time(r.get("created") or placed.placed_at.isoformat(), "created"),
                amount=c.Money(amount=amount, currency=total.currency),
                order_total=total,
                full=refunded >= total.amount or (fully and i == len(ordered) - 1),
            )
        )
    return out


# --- history import: Shopify's GraphQL orders, as the REST payloads we normalize -------


def _gid_number(value: Any) -> str | None:
    """``gid://shopify/Order/450789469`` -> ``450789469`` (the REST id)."""
    if value in (None, ""):
        return None
    return str(value).rsplit("/", 1)[-1]


def _shop_money(money_set: Any) -> dict[str, Any]:
    shop = (money_set or {}).get("shopMoney") if isinstance(money_set, Mapping) else None
    return shop if isinstance(shop, Mapping) else {}  # type: ignore[return-value]


def shopify_graphql_order(node: Mapping[str, Any]) -> dict[str, Any]:
    """An ``Order`` node of the Admin GraphQL ``orders`` connection, in the REST shape
    the webhook normalizer reads, so that an imported order and a webhook become the
    same events. Amounts are the shop's money (as REST's ``total_price``)."""
    order_id = node.get("legacyResourceId") or _gid_number(node.get("id"))
    if not order_id:
        raise MissingField("orders.nodes.id")
    cust = node.get("customer") or {}
    ship = node.get("shippingAddress") or {}
    total = _shop_money(node.get("totalPriceSet"))
    subtotal = _shop_money(node.get("subtotalPriceSet"))
    consent = ((cust.get("emailMarketingConsent") or {}).get("marketingState") or "").lower()
    line_items = []
    for li in (node.get("lineItems") or {}).get("nodes") or []:
        product = li.get("product") or {}
        line_items.append(
            {
                "sku": li.get("sku"),
                "title": li.get("title"),
                "quantity": li.get("quantity"),
                "price": _shop_money(li.get("originalUnitPriceSet")).get("amount"),
                "product_id": product.get("legacyResourceId") or _gid_number(product.get("id")),
            }
        )
    fulfillments = []
    for f in node.get("fulfillments") or []:
        tracking = (f.get("trackingInfo") or [{}])[0] or {}
        fulfillments.append(
            {
                "created_at": f.get("createdAt"),
                "tracking_number": tracking.get("number"),
                "tracking_company": tracking.get("company"),
            }
        )
    refunds = []
    for r in node.get("refunds") or []:
        amount = _shop_money(r.get("totalRefundedSet"))
        refunds.append(
            {
                "id": r.get("legacyResourceId") or _gid_number(r.get("id")),
                "created_at": r.get("createdAt"),
                "transactions": [
                    {
                        "kind": "refund",
                        "status": "success",
                        "amount": amount.get("amount"),
                        "currency": amount.get("currencyCode"),
                    }
                ],
            }
        )
    return {
        "id": order_id,
        "name": node.get("name"),
        "created_at": node.get("createdAt"),
        "processed_at": node.get("processedAt"),
        "updated_at": node.get("updatedAt"),
        "cancelled_at": node.get("cancelledAt"),
        "cancel_reason": (node.get("cancelReason") or "").lower() or None,
        "currency": total.get("currencyCode") or node.get("currencyCode"),
        "total_price": total.get("amount"),
        "subtotal_price": subtotal.get("amount"),
        "email": node.get("email"),
        "phone": node.get("phone"),
        "customer_locale": node.get("customerLocale"),
        "customer": {
            "id": cust.get("legacyResourceId") or _gid_number(cust.get("id")),
            "email": cust.get("email"),
            "phone": cust.get("phone"),
            "first_name": cust.get("firstName"),
            "email_marketing_consent": {"state": consent} if consent else None,
        }
        if cust
        else {},
        "shipping_address": {
            "first_name": ship.get("firstName"),
            "address1": ship.get("address1"),
            "address2": ship.get("address2"),
            "city": ship.get("city"),
            "zip": ship.get("zip"),
            "country_code": ship.get("countryCodeV2"),
            "phone": ship.get("phone"),
        }
        if ship
        else {},
        "line_items": line_items,
        "discount_codes": [{"code": code} for code in node.get("discountCodes") or []],
        "fulfillment_status": "fulfilled"
        if node.get("displayFulfillmentStatus") == "FULFILLED"
        else None,
        "fulfillments": fulfillments,
        "refunds": refunds,
    }


def shopify_order_deliveries(
    order: Mapping[str, Any], key_prefix: str
) -> list[tuple[str, str, dict[str, Any]]]:
    """A Shopify order as the webhook topics that would have told us about it: its
    state (create, fulfilled or cancelled) and one ``refunds/create`` per refund, each
    with a de-duplication key. Used by reconciliation and the history import."""
    if order.get("cancelled_at"):
        topic = "orders/cancelled"
    elif order.get("fulfillment_status") == "fulfilled":
        topic = "orders/fulfilled"
    else:
        topic = "orders/create"
    out = [(topic, f"{key_prefix}:{order.get('id')}@{order.get('updated_at')}", dict(order))]
    for refund in order.get("refunds") or []:
        payload = {"order_id": order.get("id"), **refund}
        out.append(("refunds/create", f"{key_prefix}:refund:{refund.get('id')}", payload))
    return out


@dataclass(frozen=True)
class ShopifyCost:
    """The cost extension of a GraphQL answer: what a query costs and the bucket."""

    requested: float
    available: float
    restore_rate: float

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> ShopifyCost | None:
        cost = (body.get("extensions") or {}).get("cost")
        if not isinstance(cost, Mapping):
            return None
        status = cost.get("throttleStatus") or {}
        try:
            return cls(
                requested=float(cost.get("requestedQueryCost") or 0),
                available=float(status.get("currentlyAvailable") or 0),
                restore_rate=float(status.get("restoreRate") or 0),
            )
        except (TypeError, ValueError):
            return None

    def wait_s(self, max_s: float = 60.0) -> float:
        """How long until the bucket holds the query's cost again (0: now)."""
        missing = self.requested - self.available
        if missing <= 0:
            return 0.0
        if self.restore_rate <= 0:
            return max_s
        return min(max_s, missing / self.restore_rate)


def shopify_throttled(body: Mapping[str, Any]) -> bool:
    """Shopify answers a throttled query with 200 and an error coded THROTTLED."""
    return any(
        isinstance(e, Mapping) and (e.get("extensions") or {}).get("code") == "THROTTLED"
        for e in body.get("errors") or []
    )


def reconcile_window_start(
    watermark: datetime | None, now: datetime, overlap_s: float, first_lookback_s: float
) -> datetime:
    """Where the next poll starts: a bit before the watermark (clock skew between us
    and the platform), or a fixed look-back on the first run."""
    if watermark is None:
        return now - timedelta(seconds=first_lookback_s)
    return watermark - timedelta(seconds=overlap_s)


def normalize_canonical(p: Mapping[str, Any], allowed: frozenset[str], platform: str) -> Normalized:
    """Afterglow's canonical payload: ``{"type": "order.placed", "customer_id": "...",
    "data": {...the catalog model's fields}}`` (Standard Webhooks senders and REST)."""
    from pydantic import ValidationError

    etype = canonical_type(str(require(p, "type")))
    if etype not in allowed:
        return Normalized(known_topic=False)
    data = p.get("data")
    if not isinstance(data, Mapping):
        raise MissingField("data")
    who = canonical_requester(p, data) if etype in TICKET_TYPES else None
    subject = who.fallback_subject if who is not None else str(require(p, "customer_id"))
    try:
        model = c.parse_data({**data, "type": etype})
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err["loc"][1:] if x != etype) or "data"
        raise NormalizationError(f"data.{loc}: {err['msg']}", f"data.{loc}") from exc
    out = Normalized(emits=[Emit(model, subject)], requester=who)
    if isinstance(model, c.OrderPlaced):
        platform_id = model.order_id.split(":", 1)[-1]
        out.order = OrderRecord(model.order_id, platform_id, subject, model.total)
    return out


def canonical_requester(p: Mapping[str, Any], data: Mapping[str, Any]) -> Requester:
    """A canonical ticket event names its customer (``customer_id``) or, when the
    helpdesk does not know the shop's customer id, its requester
    (``requester: {"email", "phone"}``), resolved through the orders' links."""
    ticket_id = str(require(data, "ticket_id", "data."))
    customer_id = p.get("customer_id")
    requester = p.get("requester")
    if not isinstance(requester, Mapping):
        requester = {}
    email, phone = requester.get("email"), requester.get("phone")
    eh, ph = email_hash(email), phone_hash(phone)
    if customer_id in (None, "") and not (eh or ph):
        raise MissingField("customer_id")
    fallback = (
        str(customer_id)
        if customer_id not in (None, "")
        else customer_subject(None, email, ticket_id, phone)
    )
    return Requester(
        ticket_id=ticket_id,
        fallback_subject=fallback,
        customer_id=str(customer_id) if customer_id not in (None, "") else None,
        email_hash=eh,
        phone_hash=ph,
    )
