"""Shopify: order, fulfilment, refund and privacy webhooks as catalog events, and the
history import's and reconciliation's GraphQL orders read as the same REST payloads
(the signature is the shared base64 HMAC: ``domain.verify_b64_hmac``)."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from afterglow.events import catalog as c
from afterglow.ingest.domain import (
    Emit,
    MissingField,
    Normalized,
    OrderRecord,
    address_hash,
    customer_subject,
    discount_codes,
    epoch_placeholder,
    fit,
    money,
    parse_time,
    quantity,
    referral_from_landing_site,
    require,
    to_minor,
)
from afterglow.kit.contact_hash import email_hash, normalize_email, normalize_phone, phone_hash


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
        out.emits.append(
            Emit(c.CustomerErasureRequested(requested_at=epoch_placeholder()), subject)
        )
        email = normalize_email(cust.get("email"))
        out.forget_emails = [email] if email else []
        out.stored_body = json.dumps(
            {**p, "customer": {"id": cust.get("id")} if cust.get("id") else {}}
        ).encode()
    elif topic == "shop/redact":
        out.emits.append(
            Emit(c.CustomerErasureRequested(requested_at=epoch_placeholder(), scope="tenant"), "*")
        )
    # customers/data_request: no catalog event; the stored delivery is the operator's
    # to-do (Shopify gives 30 days to answer).
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
