"""The rules of reward codes in shops, pure: what each platform is sent, how an answer
is judged, how long to wait. No I/O here (platforms.py does the calls)."""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from decimal import Decimal
from email.utils import format_datetime
from typing import Any

from afterglow.events.money import currency_exponent

CREATING = "creating"
ACTIVE = "active"
USED = "used"
DISABLING = "disabling"
DISABLED = "disabled"
FAILED = "failed"
# States with a platform call due (the worker's claim).
DUE_STATES = (CREATING, DISABLING)
# Platforms that can hold a reward code, in the order one is chosen when a tenant has
# connections to several.
PLATFORMS = ("shopify", "woocommerce", "bigcommerce")


@dataclass(frozen=True)
class Discount:
    """What a platform adapter needs to create, find or disable one code."""

    code: str
    customer_id: str
    title: str
    value_kind: str  # fixed_amount | percentage | free_shipping
    amount_minor: int | None
    currency: str | None
    percent: int | None
    starts_at: datetime
    ends_at: datetime | None
    platform_discount_id: str | None = None


class PlatformError(Exception):
    """A platform call failed. ``permanent``: the same call would fail again (refused
    input, no connection); otherwise it is retried with backoff. ``retry_after_s``: the
    platform said when to come back (a 429)."""

    def __init__(self, message: str, *, permanent: bool, retry_after_s: float | None = None):
        super().__init__(message)
        self.permanent = permanent
        self.retry_after_s = retry_after_s


def normalize_code(code: str) -> str:
    """Codes are compared without case: Shopify matches them so, WooCommerce lowercases
    them, and a customer types either."""
    return code.strip().upper()


def decimal_amount(amount_minor: int, currency: str) -> str:
    """Minor units as the decimal string platforms take ("5.00", JPY "500")."""
    exp = currency_exponent(currency)
    value = Decimal(amount_minor).scaleb(-exp)
    return f"{value:.{exp}f}"


def choose_platform(connected: set[str]) -> str | None:
    return next((p for p in PLATFORMS if p in connected), None)


def retry_delay_s(attempt: int, base_s: float, max_s: float) -> float:
    """Exponential backoff after the ``attempt``-th failure (1-based), capped."""
    return float(min(max_s, base_s * 2 ** min(max(attempt - 1, 0), 32)))


# --- Shopify --------------------------------------------------------------------------

SHOPIFY_CREATE = """
mutation discountCodeBasicCreate($basicCodeDiscount: DiscountCodeBasicInput!) {
  discountCodeBasicCreate(basicCodeDiscount: $basicCodeDiscount) {
    codeDiscountNode { id }
    userErrors { field code message }
  }
}
"""

SHOPIFY_CREATE_FREE_SHIPPING = """
mutation discountCodeFreeShippingCreate($freeShippingCodeDiscount: DiscountCodeFreeShippingInput!) {
  discountCodeFreeShippingCreate(freeShippingCodeDiscount: $freeShippingCodeDiscount) {
    codeDiscountNode { id }
    userErrors { field code message }
  }
}
"""

SHOPIFY_FIND = """
query codeDiscountNodeByCode($code: String!) {
  codeDiscountNodeByCode(code: $code) { id }
}
"""

SHOPIFY_DEACTIVATE = """
mutation discountCodeDeactivate($id: ID!) {
  discountCodeDeactivate(id: $id) {
    codeDiscountNode { id }
    userErrors { field code message }
  }
}
"""

# What one create costs in Shopify's bucket (a mutation's requested cost is 10): the
# limiter waits until the bucket holds it before asking.
SHOPIFY_MUTATION_COST = 10.0


def shopify_customer_gid(customer_id: str) -> str | None:
    """A Shopify customer's GraphQL id, from ingest's subject (the platform's numeric
    customer id). None for a subject that is not one (a guest keyed by email hash): the
    code cannot then be limited to that customer, so it is not created."""
    return f"gid://shopify/Customer/{customer_id}" if customer_id.isdigit() else None


def shopify_create(d: Discount) -> tuple[str, str, dict[str, Any]]:
    """(document, mutation field, variables) creating ``d``: usable once, by its
    customer only (``context``), between its start and end."""
    gid = shopify_customer_gid(d.customer_id)
    if gid is None:
        raise PlatformError(
            f"customer {d.customer_id!r} is not a Shopify customer id: the code cannot be "
            "limited to them",
            permanent=True,
        )
    common: dict[str, Any] = {
        "title": d.title,
        "code": d.code,
        "startsAt": d.starts_at.isoformat(),
        "endsAt": d.ends_at.isoformat() if d.ends_at else None,
        "context": {"customers": {"add": [gid]}},
        "appliesOncePerCustomer": True,
        "usageLimit": 1,
    }
    if d.value_kind == "free_shipping":
        variables = {"freeShippingCodeDiscount": {**common, "destination": {"all": True}}}
        return SHOPIFY_CREATE_FREE_SHIPPING, "discountCodeFreeShippingCreate", variables
    if d.value_kind == "percentage":
        assert d.percent is not None
        value: dict[str, Any] = {"percentage": float(Decimal(d.percent) / 100)}
    else:
        assert d.amount_minor is not None and d.currency is not None
        value = {
            "discountAmount": {
                "amount": decimal_amount(d.amount_minor, d.currency),
                "appliesOnEachItem": False,
            }
        }
    basic = {**common, "customerGets": {"value": value, "items": {"all": True}}}
    return SHOPIFY_CREATE, "discountCodeBasicCreate", {"basicCodeDiscount": basic}


def shopify_user_errors(body: Mapping[str, Any], mutation: str) -> list[Mapping[str, Any]]:
    payload = ((body.get("data") or {}).get(mutation)) or {}
    errors = payload.get("userErrors") or []
    return [e for e in errors if isinstance(e, Mapping)]


def shopify_code_taken(errors: list[Mapping[str, Any]]) -> bool:
    """The code exists already (Shopify answers ``TAKEN`` on the code field): after a
    lost answer, it is ours."""
    return any(e.get("code") == "TAKEN" for e in errors)


def shopify_node_id(body: Mapping[str, Any], field_name: str) -> str | None:
    node = (body.get("data") or {}).get(field_name) or {}
    if field_name != "codeDiscountNodeByCode":
        node = node.get("codeDiscountNode") or {}
    value = node.get("id") if isinstance(node, Mapping) else None
    return str(value) if value else None


@dataclass
class ShopBucket:
    """Shopify's cost-based throttle for one shop, as its last answer described it.

    Each answer carries ``extensions.cost.throttleStatus`` (what is left in the bucket and
    how fast it refills). Before a call, the bucket is estimated forward at the restore
    rate; a call that would not fit waits until it does, instead of spending a request
    on a ``THROTTLED`` answer. Several calls to one shop share its bucket."""

    available: float | None = None
    restore_rate: float = 50.0
    maximum: float = 1000.0
    at: float = 0.0
    monotonic: Callable[[], float] = field(default=time.monotonic, repr=False)

    def wait_s(self, cost: float, max_s: float = 60.0) -> float:
        if self.available is None:
            return 0.0
        now_available = min(
            self.maximum, self.available + (self.monotonic() - self.at) * self.restore_rate
        )
        missing = cost - now_available
        if missing <= 0:
            return 0.0
        return min(max_s, missing / self.restore_rate) if self.restore_rate > 0 else max_s

    def observe(self, body: Mapping[str, Any]) -> None:
        cost = (body.get("extensions") or {}).get("cost")
        status = cost.get("throttleStatus") if isinstance(cost, Mapping) else None
        if not isinstance(status, Mapping):
            return
        try:
            self.available = float(status.get("currentlyAvailable") or 0)
            self.restore_rate = float(status.get("restoreRate") or self.restore_rate)
            self.maximum = float(status.get("maximumAvailable") or self.maximum)
        except (TypeError, ValueError):
            return
        self.at = self.monotonic()


# --- WooCommerce ----------------------------------------------------------------------


def woo_coupon(d: Discount, email: str | None) -> dict[str, Any]:
    """The coupon body: one use in all (``usage_limit``), one per customer, and only
    for the customer's email (``email_restrictions``) when it is known."""
    body: dict[str, Any] = {
        "code": d.code,
        "description": d.title,
        "usage_limit": 1,
        "usage_limit_per_user": 1,
        "individual_use": True,
    }
    if d.value_kind == "percentage":
        body |= {"discount_type": "percent", "amount": str(d.percent)}
    elif d.value_kind == "free_shipping":
        body |= {"discount_type": "fixed_cart", "amount": "0", "free_shipping": True}
    else:
        assert d.amount_minor is not None and d.currency is not None
        body |= {
            "discount_type": "fixed_cart",
            "amount": decimal_amount(d.amount_minor, d.currency),
        }
    if d.ends_at is not None:
        body["date_expires_gmt"] = d.ends_at.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S")
    if email:
        body["email_restrictions"] = [email]
    return body


# --- BigCommerce ----------------------------------------------------------------------


def bigcommerce_coupon(d: Discount) -> dict[str, Any]:
    """A V2 coupon: one use in all, one per customer. V2 coupons cannot name a
    customer; the code's 60 random bits and its single use stand in for that."""
    body: dict[str, Any] = {
        "name": d.title[:100],
        "code": d.code,
        "enabled": True,
        "max_uses": 1,
        "max_uses_per_customer": 1,
        "applies_to": {"entity": "categories", "ids": [0]},  # 0: every category
    }
    if d.value_kind == "percentage":
        body |= {"type": "percentage_discount", "amount": str(d.percent)}
    elif d.value_kind == "free_shipping":
        body |= {"type": "free_shipping", "amount": "0"}
    else:
        assert d.amount_minor is not None and d.currency is not None
        body |= {"type": "per_total_discount", "amount": decimal_amount(d.amount_minor, d.currency)}
    if d.ends_at is not None:
        body["expires"] = format_datetime(
            d.ends_at.astimezone(UTC), usegmt=True
        )  # RFC 2822, as V2 wants
    return body


def retry_after_s(headers: Mapping[str, str]) -> float | None:
    """A 429's wait: ``Retry-After`` (seconds), or BigCommerce's
    ``X-Rate-Limit-Time-Reset-Ms``."""
    for name, scale in (("retry-after", 1.0), ("x-rate-limit-time-reset-ms", 0.001)):
        raw = headers.get(name)
        if raw:
            try:
                return max(0.0, float(raw) * scale)
            except ValueError:
                continue
    return None
