"""BigCommerce: its webhooks carry ids only; the order fetched from the store's API
becomes catalog events (the fetch itself: afterglow.ingest.bigcommerce)."""

from __future__ import annotations

from collections.abc import Mapping
from email.utils import parsedate_to_datetime
from typing import Any

from afterglow.events import catalog as c
from afterglow.ingest.domain import (
    Emit,
    MissingField,
    Normalized,
    OrderRecord,
    address_hash,
    customer_subject,
    fit,
    money,
    parse_time,
    quantity,
    refund_minor,
    require,
)
from afterglow.kit.contact_hash import email_hash, normalize_email, normalize_phone, phone_hash

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
