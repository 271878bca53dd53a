"""WooCommerce: order webhooks (created, updated) and their refunds as catalog events."""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from decimal import Decimal
from typing import Any

from afterglow.events import catalog as c
from afterglow.ingest.domain import (
    Emit,
    NormalizationError,
    Normalized,
    OrderRecord,
    address_hash,
    customer_subject,
    discount_codes,
    fit,
    money,
    parse_time,
    quantity,
    refund_minor,
    require,
)
from afterglow.kit.contact_hash import email_hash, normalize_email, normalize_phone, phone_hash

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
