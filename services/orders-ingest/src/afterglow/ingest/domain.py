"""Pure rules of the front door: signatures, money, hashing and normalization of each
platform's payload into catalog events. No I/O here: the time comes in as an argument.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal, InvalidOperation
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import parse_qs, urlsplit

from afterglow.events import catalog as c
from afterglow.events.money import currency_exponent

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


def timestamp_fresh(timestamp: str | None, now: datetime, tolerance_s: int) -> bool:
    """Unix seconds (Standard Webhooks) or ISO 8601 (Zendesk), within the tolerance."""
    if not timestamp:
        return False
    ts = timestamp.strip()
    try:
        if ts.isdigit():
            sent = datetime.fromtimestamp(int(ts), UTC)
        else:
            sent = datetime.fromisoformat(ts.replace("Z", "+00:00"))
            if sent.tzinfo is None:
                return False
    except (ValueError, OverflowError, OSError):
        return False
    return abs((now - sent).total_seconds()) <= tolerance_s


# --- money, hashing, small parsers --------------------------------------------------


def to_minor(amount: Any, currency: str, field: str = "amount") -> int:
    """A decimal string (as platforms send it) to integer minor units, exactly."""
    try:
        value = Decimal(str(amount))
    except InvalidOperation as exc:
        raise NormalizationError(f"{field} is not a decimal amount", field) from exc
    if not value.is_finite():
        raise NormalizationError(f"{field} is not a decimal amount", field)
    scaled = value.scaleb(currency_exponent(currency))
    # Half-up: a sub-minor-unit remainder only appears in tax-inclusive edge cases.
    return int(scaled.quantize(Decimal(1), rounding="ROUND_HALF_UP"))


def money(amount: Any, currency: str, field: str = "amount") -> c.Money:
    currency = (currency or "").upper()
    if not re.fullmatch(r"[A-Z]{3}", currency):
        raise NormalizationError("currency must be an ISO 4217 code", "currency")
    return c.Money(amount=to_minor(amount, currency, field), currency=currency)


def normalize_email(email: str | None) -> str | None:
    if not email or "@" not in email:
        return None
    return email.strip().lower()


def normalize_phone(phone: str | None) -> str | None:
    """E.164-ish: keep a leading + and the digits (no country guessing)."""
    if not phone:
        return None
    digits = re.sub(r"\D", "", phone)
    if len(digits) < 6:
        return None
    return ("+" if phone.strip().startswith("+") else "") + digits


def sha256_hex(value: str) -> str:
    return hashlib.sha256(value.encode()).hexdigest()


def email_hash(email: str | None) -> str | None:
    n = normalize_email(email)
    return sha256_hex(n) if n else None


def phone_hash(phone: str | None) -> str | None:
    n = normalize_phone(phone)
    return sha256_hex(n) if n else None


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


def parse_time(value: Any, field: str) -> datetime:
    """ISO 8601; a naive time is UTC (WooCommerce's ``*_gmt`` fields carry no offset)."""
    if value is None or value == "":
        raise MissingField(field)
    try:
        if isinstance(value, int | float):
            return datetime.fromtimestamp(value, UTC)
        parsed = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError as exc:
        raise NormalizationError(f"{field} is not an ISO 8601 time", field) from exc
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


def require(payload: Mapping[str, Any], key: str, prefix: str = "") -> Any:
    value = payload.get(key) if isinstance(payload, Mapping) else None
    if value is None or value == "":
        raise MissingField(prefix + key)
    return value


def customer_subject(platform_customer_id: Any, email: str | None, order_id: str) -> str:
    """The envelope subject: the platform's customer id; else a hash of the email (guest
    checkouts), so that one guest's orders still line up; else the order itself."""
    if platform_customer_id not in (None, "", 0, "0"):
        return str(platform_customer_id)
    h = email_hash(email)
    if h:
        return f"email:{h[:32]}"
    return f"order:{order_id}"


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


@dataclass
class Normalized:
    known_topic: bool = True
    emits: list[Emit] = field(default_factory=list)
    order: OrderRecord | None = None
    # customers/redact: scrub stored raw payloads that mention these (normalized) emails.
    forget_emails: list[str] = field(default_factory=list)


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


def shopify_marketing_consent(customer: Mapping[str, Any]) -> bool | None:
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
    if state is None and customer.get("accepts_marketing") is True:
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
    accepts = shopify_marketing_consent(cust)
    items = []
    for i, li in enumerate(p.get("line_items") or []):
        items.append(
            c.LineItem(
                sku=li.get("sku") or None,
                product_id=str(li["product_id"]) if li.get("product_id") else None,
                title=li.get("title"),
                quantity=int(require(li, "quantity", f"line_items.{i}.")),
                unit_price=money(
                    require(li, "price", f"line_items.{i}."), currency, f"line_items.{i}.price"
                ),
            )
        )
    country = ship.get("country_code")
    data = c.OrderPlaced(
        order_id=order_id,
        order_number=str(p.get("name") or p.get("order_number") or "") or None,
        platform="shopify",
        placed_at=parse_time(p.get("processed_at") or p.get("created_at"), "created_at"),
        customer=c.CustomerInfo(
            email=normalize_email(email),
            phone=normalize_phone(phone),
            first_name=cust.get("first_name") or ship.get("first_name"),
            locale=p.get("customer_locale"),
            accepts_marketing=accepts,
            platform_customer_id=str(cust["id"]) if cust.get("id") else None,
            email_hash=email_hash(email),
            phone_hash=phone_hash(phone),
        ),
        total=money(require(p, "total_price"), currency, "total_price"),
        subtotal=money(p["subtotal_price"], currency, "subtotal_price")
        if p.get("subtotal_price") is not None
        else None,
        line_items=items,
        discount_codes=[d["code"] for d in p.get("discount_codes") or [] if d.get("code")],
        referral_code=referral_from_landing_site(p.get("landing_site")),
        shipping_country=country.upper() if isinstance(country, str) and country else None,
        shipping_address_hash=address_hash(
            ship.get("address1"), ship.get("address2"), ship.get("city"), ship.get("zip"), country
        ),
        customer_orders_count=cust.get("orders_count"),
    )
    subject = customer_subject(cust.get("id"), email, order_id)
    return data, OrderRecord(order_id, oid, subject, data.total)


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
        currency = str(require(txs[0], "currency", "transactions.0."))
        total = sum(
            to_minor(require(t, "amount", f"transactions.{i}."), currency)
            for i, t in enumerate(txs)
        )
        out.emits.append(
            Emit(
                c.OrderRefunded(
                    order_id=order_id,
                    refund_id=str(require(p, "id")),
                    refunded_at=parse_time(
                        p.get("processed_at") or p.get("created_at"), "created_at"
                    ),
                    amount=c.Money(amount=total, currency=currency.upper()),
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
        subject = customer_subject(cust.get("id"), cust.get("email"), "none")
        out.emits.append(Emit(c.CustomerErasureRequested(requested_at=_epoch()), subject))
        email = normalize_email(cust.get("email"))
        out.forget_emails = [email] if email else []
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
    data: c.EventData, order_total: c.Money | None, refunded_before: int = 0
) -> c.EventData:
    """A refund is full when it, with the refunds emitted before it, covers the order
    total we know of: two partial refunds of 19.50 on a 39.00 order end the journey on
    the second. A refund the normalizer already knows is full stays full."""
    if not isinstance(data, c.OrderRefunded) or order_total is None:
        return data
    if order_total.currency != data.amount.currency:
        return data.model_copy(update={"order_total": order_total})
    covered = refunded_before + data.amount.amount >= order_total.amount
    return data.model_copy(update={"order_total": order_total, "full": data.full or covered})


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
        qty = int(require(li, "quantity", f"line_items.{i}."))
        # Woo's "price" is a float; subtotal / quantity is the exact pre-discount price.
        subtotal = Decimal(str(li.get("subtotal") or li.get("total") or "0"))
        unit = subtotal / qty if qty else Decimal(0)
        items.append(
            c.LineItem(
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
    data = c.OrderPlaced(
        order_id=order_id,
        order_number=str(p.get("number") or oid),
        platform="woocommerce",
        placed_at=parse_time(p.get("date_created_gmt") or p.get("date_created"), "date_created"),
        customer=c.CustomerInfo(
            email=normalize_email(email),
            phone=normalize_phone(phone),
            first_name=billing.get("first_name"),
            platform_customer_id=str(p["customer_id"]) if p.get("customer_id") else None,
            email_hash=email_hash(email),
            phone_hash=phone_hash(phone),
        ),
        total=money(require(p, "total"), currency, "total"),
        line_items=items,
        discount_codes=[cl["code"] for cl in p.get("coupon_lines") or [] if cl.get("code")],
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
        order_id, oid, customer_subject(p.get("customer_id"), email, order_id), data.total
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
    entries = [r for r in p.get("refunds") or [] if isinstance(r, Mapping)]
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
        return (int(rid), rid) if rid.isdigit() else (0, rid)

    out = []
    refunded = 0
    ordered = sorted(entries, key=order_key)
    for i, r in enumerate(ordered):
        rid = str(require(r, "id", f"refunds.{i}."))
        amount = abs(to_minor(require(r, "total", f"refunds.{i}."), currency, f"refunds.{i}.total"))
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
    subject = (
        str(detail["external_id"])
        if detail.get("external_id")
        else customer_subject(None, requester.get("email"), "")
        if requester.get("email")
        else f"zendesk:{require(detail, 'requester_id', 'detail.')}"
    )
    status = str(detail.get("status") or "").lower()
    event = p.get("event") or {}
    current = str(event.get("current") or "").lower()
    priority = str(detail.get("priority") or "normal").lower()
    out = Normalized()
    if kind == "ticket.created":
        out.emits.append(
            Emit(
                c.TicketOpened(
                    ticket_id=ticket_id,
                    helpdesk="zendesk",
                    opened_at=parse_time(detail.get("created_at") or p.get("time"), "created_at"),
                    subject=detail.get("subject"),
                    priority=priority
                    if priority in ("low", "normal", "high", "urgent")
                    else "normal",
                ),
                subject,
            )
        )
    elif "solved" in (status, current) or "closed" in (status, current):
        out.emits.append(Emit(c.TicketResolved(ticket_id=ticket_id, resolved_at=when), subject))
    else:
        out.emits.append(
            Emit(
                c.TicketUpdated(ticket_id=ticket_id, updated_at=when, status=current or status),
                subject,
            )
        )
    return out


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
        c.LineItem(
            sku=pr.get("sku") or None,
            product_id=str(pr["product_id"]) if pr.get("product_id") else None,
            title=pr.get("name"),
            quantity=int(require(pr, "quantity", f"products.{i}.")),
            unit_price=money(pr.get("base_price") or "0", currency, f"products.{i}.base_price"),
        )
        for i, pr in enumerate(products)
    ]
    placed = c.OrderPlaced(
        order_id=order_id,
        order_number=oid,
        platform="bigcommerce",
        placed_at=placed_at,
        customer=c.CustomerInfo(
            email=normalize_email(email),
            phone=normalize_phone(phone),
            first_name=billing.get("first_name"),
            platform_customer_id=str(order["customer_id"]) if order.get("customer_id") else None,
            email_hash=email_hash(email),
            phone_hash=phone_hash(phone),
        ),
        total=money(require(order, "total_inc_tax"), currency, "total_inc_tax"),
        line_items=items,
        shipping_country=(billing.get("country_iso2") or None),
        shipping_address_hash=address_hash(
            billing.get("street_1"), billing.get("city"), billing.get("zip")
        ),
    )
    subject = customer_subject(order.get("customer_id"), email, order_id)
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
        amount = abs(
            to_minor(require(r, "total_amount", f"refunds.{i}."), total.currency, "total_amount")
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
    subject = str(require(p, "customer_id"))
    data = p.get("data")
    if not isinstance(data, Mapping):
        raise MissingField("data")
    try:
        model = c.parse_data({**data, "type": etype})
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(x) for x in err["loc"][1:] if x != etype) or "data"
        raise NormalizationError(f"data.{loc}: {err['msg']}", f"data.{loc}") from exc
    out = Normalized(emits=[Emit(model, subject)])
    if isinstance(model, c.OrderPlaced):
        platform_id = model.order_id.split(":", 1)[-1]
        out.order = OrderRecord(model.order_id, platform_id, subject, model.total)
    return out
