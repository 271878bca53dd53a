"""The event catalog: one frozen pydantic model per CloudEvents type.

Rules that keep the catalog evolvable (DESIGN.md, "Events"):

* a model's ``type`` is its CloudEvents type, ``afterglow.<noun>.<past_participle>.v<N>``;
  commands are named as requests (``survey.requested``);
* within a version, changes are additive and consumers ignore unknown fields
  (``extra="ignore"``); a breaking change is a new type (``.v2``);
* money is :class:`Money` (integer minor units and an ISO 4217 code), never a float;
* every timestamp is timezone-aware.

The envelope carries tenant (``tenantid``) and customer (``subject``); the data models
do not repeat them.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any, Literal, Union

from pydantic import (
    AwareDatetime,
    BaseModel,
    ConfigDict,
    Field,
    GetCoreSchemaHandler,
    TypeAdapter,
    field_validator,
    model_validator,
)
from pydantic_core import CoreSchema

from afterglow.events.native_checks import natively
from afterglow.events.topics import TOPICS_BY_NOUN

# C0 and C1 control characters and DEL; tab, newline and carriage return stay allowed
# (comments are multi-line). The same rule as afterglow.kit.text, which depends on this
# package and so cannot be imported here.
_CONTROL_CHARS = r"\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f"
_CONTROL = re.compile(f"[{_CONTROL_CHARS}]")
# The same rule as a whole-string pattern, for pydantic-core's (Rust) regex.
_ALLOWED_TEXT = f"^[^{_CONTROL_CHARS}]*$"
_TEXT_ERROR = "must not contain control characters"


# Instants an event may carry: a timer or window computed from one (placed + 14 days,
# a 24-month points expiry) must stay within Python's datetime and PostgreSQL's
# timestamptz. The same range as afterglow.kit.types (which cannot be imported here).
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)
_INSTANT_ERROR = f"must lie between {EARLIEST.year} and {LATEST.year} (exclusive)"


class CleanText(BaseModel):
    """Refuses control characters in every string field (and list of strings), and
    instants outside EARLIEST..LATEST.

    PostgreSQL text cannot hold NUL: an event carrying one was accepted by its producer
    (a REST call, a webhook) and then dead-lettered by every consumer. An order placed in
    the year 9999 went the same way (its check-in timer overflowed). Refused when the
    event is built, the producer answers 422 or quarantines the delivery instead."""

    @field_validator("*", mode="after")
    @classmethod
    def _no_control_characters(cls, value: Any) -> Any:
        # The rule, declared on every field; __get_pydantic_core_schema__ below moves
        # it into pydantic-core wherever the field's type allows, so this runs only for
        # the rest (none in today's catalog). The common kinds are told by their exact
        # class first, without a tuple per call.
        kind = type(value)
        if kind is int or kind is bool or value is None:
            return value
        if isinstance(value, list):
            for item in value:
                _check_item(item)
        else:
            _check_item(value)
        return value

    @classmethod
    def __get_pydantic_core_schema__(
        cls, source: type[BaseModel], handler: GetCoreSchemaHandler
    ) -> CoreSchema:
        # The check above, run inside pydantic-core where the field's type allows it
        # (afterglow.events.native_checks): same refusals, same errors.
        return natively(
            handler(source),
            cls,
            cls._no_control_characters,
            allowed_text=_ALLOWED_TEXT,
            text_error=_TEXT_ERROR,
            earliest=EARLIEST,
            latest=LATEST,
            instant_error=_INSTANT_ERROR,
        )


def is_clean(*values: Any) -> bool:
    """Whether every value passes what :class:`CleanText` checks of a field (strings
    without control characters, instants within EARLIEST..LATEST): for a producer that
    builds a model without validating it (``model_construct``) from values it made
    itself, save these, which came from elsewhere."""
    try:
        for value in values:
            _check_item(value)
    except ValueError:
        return False
    return True


def _check_item(item: Any) -> None:
    if isinstance(item, str):
        if _CONTROL.search(item):
            raise ValueError(_TEXT_ERROR)
    elif isinstance(item, datetime) and item.tzinfo and not EARLIEST <= item < LATEST:
        raise ValueError(_INSTANT_ERROR)


class EventData(CleanText):
    """Base of every catalog model."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    type: str


# Minor units live in bigint columns everywhere (PostgreSQL's int8).
MAX_MINOR_UNITS = 2**63 - 1


class Money(CleanText):
    """An amount in minor units (cents) and its ISO 4217 currency."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    amount: int = Field(
        ge=-MAX_MINOR_UNITS,
        le=MAX_MINOR_UNITS,
        description="Minor units, e.g. cents. Negative only for adjustments.",
    )
    currency: str = Field(pattern=r"^[A-Z]{3}$", examples=["USD", "EUR"])


# The subject of events about an order nobody can be reached or credited for (a POS
# sale with no customer id, email or phone): ``order:<order id>``. orders-ingest gives
# it; journeys and loyalty start nothing for it (no journey, message or points account).
ANONYMOUS_SUBJECT_PREFIX = "order:"


def is_anonymous_subject(subject: str) -> bool:
    """True for the subject of an order without a customer (ANONYMOUS_SUBJECT_PREFIX)."""
    return subject.startswith(ANONYMOUS_SUBJECT_PREFIX)


def distinct_amounts(*amounts: Money | None) -> list[Money]:
    """The given amounts without Nones and without a second amount in a currency already
    listed (the first one of each currency wins)."""
    out: list[Money] = []
    for m in amounts:
        if m is not None and all(o.currency != m.currency for o in out):
            out.append(m)
    return out


def amount_in(currency: str, amounts: list[Money]) -> Money | None:
    """The amount stated in ``currency``, if any: the only safe way to read a total in a
    given currency (no conversion happens here)."""
    return next((m for m in amounts if m.currency == currency), None)


def is_first_order(customer_orders_count: int | None, earlier_orders_seen: int = 0) -> bool:
    """Whether an order is the customer's first: the one rule every service applies to
    ``OrderPlaced.customer_orders_count`` (loyalty's first-order bonus, the journey's
    welcome branch), so that they agree.

    Ingest sets the count from its order book (this order included, so at least 1) or
    the platform's count when that is larger, so 0 and 1 both mean no earlier order is
    known, 2 and more a repeat order. None appears only on events that did not come
    through ingest's intake (emitted before it owned the count, or built by hand in a
    dry run): then the consumer's own count of the customer's earlier orders decides,
    the only history there is."""
    if customer_orders_count is None:
        return earlier_orders_seen == 0
    return customer_orders_count <= 1


class CustomerInfo(CleanText):
    """What the journey and messaging need to know about a customer, nothing more."""

    model_config = ConfigDict(frozen=True, extra="ignore")
    email: str | None = Field(default=None, max_length=320)
    phone: str | None = Field(default=None, max_length=32)
    first_name: str | None = Field(default=None, max_length=100)
    locale: str | None = Field(default=None, max_length=20)
    timezone: str | None = Field(default=None, max_length=64, description="IANA name")
    accepts_marketing: bool | None = None
    platform_customer_id: str | None = Field(default=None, max_length=100)
    email_hash: str | None = Field(default=None, description="sha256 of the normalized email")
    phone_hash: str | None = Field(default=None, description="sha256 of the normalized phone")


class LineItem(CleanText):
    model_config = ConfigDict(frozen=True, extra="ignore")
    sku: str | None = Field(default=None, max_length=200)
    product_id: str | None = Field(default=None, max_length=100)
    title: str | None = Field(default=None, max_length=500)
    quantity: int = Field(ge=1)
    unit_price: Money


Platform = Literal[
    "shopify",
    "woocommerce",
    "bigcommerce",
    "api",
    "standard_webhooks",
    "aftership",
    "zendesk",
    "gorgias",
    "helpdesk",
]


# --- orders -------------------------------------------------------------------------


class OrderEvent(EventData):
    """Fields every order event carries: whether it tells of the past.

    An order's events can reach us long after the fact: a history import of the shop's
    past orders, a re-sent webhook, a first sync. Such an event is ``historical``: every
    service records and counts it (order book, spend, tiers, metrics), but none starts a
    journey, asks for a survey or sends a message because of it. Without the flag, an
    order placed years ago ran its whole lifecycle in a second: points earned, cleared,
    expired and clawed back, and the customer got a survey about it."""

    historical: bool = Field(
        default=False,
        description="About the past: record and count it, start nothing and send nothing",
    )
    origin: Literal["live", "late", "import"] = Field(
        default="live",
        description="live: as it happened; late: a live delivery about an order older than "
        "the tenant's limit; import: a history import",
    )
    historical_reason: str | None = Field(
        default=None,
        max_length=300,
        description="Why the event is historical, for decision records",
    )
    earn_points: bool = Field(
        default=True,
        description="Whether loyalty credits this order (a history import may choose not to)",
    )


class OrderPlaced(OrderEvent):
    type: Literal["afterglow.order.placed.v1"] = "afterglow.order.placed.v1"
    order_id: str = Field(max_length=100, description="Afterglow's order key: platform id")
    order_number: str | None = Field(default=None, max_length=100)
    platform: Platform
    placed_at: AwareDatetime
    customer: CustomerInfo
    total: Money
    subtotal: Money | None = None
    line_items: list[LineItem] = Field(default_factory=list)
    discount_codes: list[str] = Field(default_factory=list)
    referral_code: str | None = Field(
        default=None, description="From a landing-site referral parameter (ref=...)"
    )
    shipping_country: str | None = Field(default=None, pattern=r"^[A-Z]{2}$")
    shipping_address_hash: str | None = None
    customer_orders_count: int | None = Field(
        default=None,
        ge=0,
        description=(
            "The customer's orders including this one, as ingest's order book counts them"
            " (the platform's count when that is larger). Set by orders-ingest; every"
            " service decides 'first order' from it with is_first_order()"
        ),
    )
    # --- money in both currencies (additive, v1) -----------------------------------
    # ``total`` keeps its meaning: the order total as the platform reports it (Shopify:
    # the shop's currency). A consumer that prices the order in a programme currency
    # picks the amount in that currency from these, or converts on purpose; it never
    # reads an amount in one currency as if it were another.
    shop_total: Money | None = Field(
        default=None,
        description="The total in the shop's own currency (Shopify total_price_set.shop_money)",
    )
    presentment_total: Money | None = Field(
        default=None,
        description=(
            "The total in the currency the customer paid in (Shopify presentment_money;"
            " WooCommerce and BigCommerce: the order's stated currency)"
        ),
    )
    platform_orders_count: int | None = Field(
        default=None,
        ge=0,
        description="The platform's own count for the customer as it sent it (often stale)",
    )

    def is_first_order(self, earlier_orders_seen: int = 0) -> bool:
        """The one rule for 'first order' (see :func:`is_first_order`)."""
        return is_first_order(self.customer_orders_count, earlier_orders_seen)

    def amounts(self) -> list[Money]:
        """The total in every currency the order states, shop money first."""
        return distinct_amounts(self.shop_total, self.total, self.presentment_total)


class OrderFulfilled(OrderEvent):
    type: Literal["afterglow.order.fulfilled.v1"] = "afterglow.order.fulfilled.v1"
    order_id: str
    fulfilled_at: AwareDatetime
    tracking_number: str | None = None
    carrier: str | None = None


class OrderDelivered(OrderEvent):
    type: Literal["afterglow.order.delivered.v1"] = "afterglow.order.delivered.v1"
    order_id: str
    delivered_at: AwareDatetime
    reported_by: Platform


class OrderRefunded(OrderEvent):
    type: Literal["afterglow.order.refunded.v1"] = "afterglow.order.refunded.v1"
    order_id: str
    refund_id: str
    refunded_at: AwareDatetime
    amount: Money
    order_total: Money | None = None
    full: bool = Field(description="True when the whole order is refunded")
    # Additive (v1): the refund in the shop's and in the customer's currency, where known.
    # ``amount`` stays what the platform refunded (Shopify: the presentment currency).
    shop_amount: Money | None = Field(
        default=None, description="The refund in the shop's currency, when known"
    )
    presentment_amount: Money | None = Field(
        default=None, description="The refund in the currency the customer paid in"
    )

    def amounts(self) -> list[Money]:
        """The refund in every currency it states, shop money first."""
        return distinct_amounts(self.shop_amount, self.amount, self.presentment_amount)


class OrderCancelled(OrderEvent):
    type: Literal["afterglow.order.cancelled.v1"] = "afterglow.order.cancelled.v1"
    order_id: str
    cancelled_at: AwareDatetime
    reason: str | None = None


# --- tickets ------------------------------------------------------------------------


class TicketOpened(EventData):
    type: Literal["afterglow.ticket.opened.v1"] = "afterglow.ticket.opened.v1"
    ticket_id: str
    helpdesk: Platform
    opened_at: AwareDatetime
    subject: str | None = Field(default=None, max_length=500)
    priority: Literal["low", "normal", "high", "urgent"] = "normal"
    order_id: str | None = None
    channel: str | None = Field(
        default=None,
        max_length=50,
        description="How the customer reached support (the helpdesk's own word: email, "
        "web, chat, api...); support metrics are split by it",
    )


class TicketUpdated(EventData):
    type: Literal["afterglow.ticket.updated.v1"] = "afterglow.ticket.updated.v1"
    ticket_id: str
    updated_at: AwareDatetime
    status: str
    agent_replied_at: AwareDatetime | None = Field(
        default=None,
        description="Set when this update is an agent's public reply (the first one "
        "ends the ticket's first-response time)",
    )


class TicketResolved(EventData):
    type: Literal["afterglow.ticket.resolved.v1"] = "afterglow.ticket.resolved.v1"
    ticket_id: str
    resolved_at: AwareDatetime


# --- customers and tenants ----------------------------------------------------------


class CustomerErasureRequested(EventData):
    """Wipe a customer's personal data (GDPR). ``scope="tenant"`` wipes every customer
    of the tenant (Shopify's shop/redact); its subject is then ``*``."""

    type: Literal["afterglow.customer.erasure_requested.v1"] = (
        "afterglow.customer.erasure_requested.v1"
    )
    requested_at: AwareDatetime
    scope: Literal["customer", "tenant"] = "customer"
    reason: str = "gdpr"


class CustomerUnsubscribed(EventData):
    type: Literal["afterglow.customer.unsubscribed.v1"] = "afterglow.customer.unsubscribed.v1"
    unsubscribed_at: AwareDatetime
    channel: Literal["email", "sms", "all"] = "all"


class ApiKeyIssued(EventData):
    """A tenant API key, announced to every service so each can verify it locally.

    Only the SHA-256 of the key travels; the key itself is shown once to its creator."""

    type: Literal["afterglow.tenant.api_key_issued.v1"] = "afterglow.tenant.api_key_issued.v1"
    key_id: str
    key_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    scopes: list[str]
    issued_at: AwareDatetime
    expires_at: AwareDatetime | None = None


class ApiKeyRevoked(EventData):
    type: Literal["afterglow.tenant.api_key_revoked.v1"] = "afterglow.tenant.api_key_revoked.v1"
    key_id: str
    revoked_at: AwareDatetime


# --- journeys and messages ----------------------------------------------------------


class JourneyStageChanged(EventData):
    type: Literal["afterglow.journey.stage_changed.v1"] = "afterglow.journey.stage_changed.v1"
    instance_id: str
    journey: str
    version: int
    from_stage: str | None
    to_stage: str
    cause: str = Field(description="The event id or timer id that caused the transition")
    changed_at: AwareDatetime
    order_id: str | None = None


MessageKind = Literal[
    "welcome",
    "thank_you",
    "check_in",
    "survey_invite",
    "survey_reminder",
    "review_request",
    "review_reminder",
    "referral_invite",
    "referee_reward",
    "loyalty_nudge",
    "tier_up",
    "reward_code",
    "points_expiring",
    "service_recovery",
    "custom",
]


# The variables each kind of message must carry: the contract between the services that
# request messages and the default templates that render them. A request that lacks one
# is invalid when it is built, in the producer's own code and tests, not at send time.
# Messaging adds what it knows itself (shop name, unsubscribe link, the contact's name).
MESSAGE_VARIABLES: dict[str, frozenset[str]] = {
    "welcome": frozenset(),
    "thank_you": frozenset(),
    "check_in": frozenset(),
    "survey_invite": frozenset({"survey_url"}),
    "survey_reminder": frozenset({"survey_url"}),
    "review_request": frozenset({"review_url"}),
    "review_reminder": frozenset({"review_url"}),
    "referral_invite": frozenset({"referral_code", "referral_url"}),
    "referee_reward": frozenset({"reward_code"}),
    "loyalty_nudge": frozenset(),
    "tier_up": frozenset({"tier"}),
    "reward_code": frozenset({"reward_code"}),
    "points_expiring": frozenset({"points_expiring", "expires_on"}),
    "service_recovery": frozenset(),
    "custom": frozenset(),
}


class MessageRequested(EventData):
    """A request to send one message to a customer. Only the orchestrator's dispatcher
    delivers it, after consent, quiet hours and frequency caps. ``variables`` must hold
    what :data:`MESSAGE_VARIABLES` names for its kind."""

    type: Literal["afterglow.message.requested.v1"] = "afterglow.message.requested.v1"
    request_id: str = Field(max_length=200, description="De-duplication key")
    kind: MessageKind
    template: str | None = Field(default=None, description="Template name; defaults to kind")
    category: Literal["transactional", "marketing"] = "marketing"
    priority: Literal["high", "normal", "low"] = "normal"
    channel: Literal["email", "sms"] | None = None
    variables: dict[str, Any] = Field(default_factory=dict)
    order_id: str | None = None
    not_before: AwareDatetime | None = None

    @model_validator(mode="after")
    def _carries_its_variables(self) -> MessageRequested:
        missing = MESSAGE_VARIABLES[self.kind] - self.variables.keys()
        if missing:
            raise ValueError(f"a {self.kind} message needs variables {sorted(missing)}")
        return self


class SupportEscalationRequested(EventData):
    type: Literal["afterglow.support.escalation_requested.v1"] = (
        "afterglow.support.escalation_requested.v1"
    )
    reason: str
    requested_at: AwareDatetime
    priority: Literal["normal", "high", "urgent"] = "high"
    order_id: str | None = None
    survey_id: str | None = None
    score: int | None = None
    comment: str | None = Field(default=None, max_length=5000)


# --- feedback -----------------------------------------------------------------------

SurveyKind = Literal["nps", "csat", "ces"]


class SurveyRequested(EventData):
    type: Literal["afterglow.survey.requested.v1"] = "afterglow.survey.requested.v1"
    request_id: str
    kind: SurveyKind = "nps"
    order_id: str | None = None
    ticket_id: str | None = None
    reminder: bool = Field(default=False, description="A reminder for an earlier request")
    reminder_of: str | None = Field(default=None, description="The request_id reminded")
    requested_at: AwareDatetime


class SurveySent(EventData):
    type: Literal["afterglow.survey.sent.v1"] = "afterglow.survey.sent.v1"
    survey_id: str
    request_id: str
    kind: SurveyKind
    sent_at: AwareDatetime
    expires_at: AwareDatetime
    order_id: str | None = None
    reminder: bool = False


NpsBand = Literal["promoter", "passive", "detractor"]


class SurveyResponded(EventData):
    type: Literal["afterglow.survey.responded.v1"] = "afterglow.survey.responded.v1"
    survey_id: str
    kind: SurveyKind
    score: int = Field(ge=0, le=10)
    band: str = Field(
        description="nps: promoter|passive|detractor; csat/ces: satisfied|neutral|dissatisfied"
    )
    comment: str | None = Field(default=None, max_length=5000)
    responded_at: AwareDatetime
    is_update: bool = False
    order_id: str | None = None
    request_id: str | None = None


class ReviewRequested(EventData):
    """Ask a customer to review an order. Feedback owns the signed review link, so it
    requests the message itself (kind review_request, or review_reminder). Every customer
    is asked, whatever they answered: asking only happy ones is review gating."""

    type: Literal["afterglow.review.requested.v1"] = "afterglow.review.requested.v1"
    request_id: str = Field(max_length=200, description="De-duplication key")
    order_id: str
    requested_at: AwareDatetime
    reminder: bool = False


class ReviewSubmitted(EventData):
    type: Literal["afterglow.review.submitted.v1"] = "afterglow.review.submitted.v1"
    review_id: str
    rating: int = Field(ge=1, le=5, description="Never a condition for an incentive (FTC rule)")
    sku: str | None = None
    product_id: str | None = None
    order_id: str | None = None
    verified: bool
    submitted_at: AwareDatetime


class ReviewPublished(EventData):
    type: Literal["afterglow.review.published.v1"] = "afterglow.review.published.v1"
    review_id: str
    rating: int = Field(ge=1, le=5)
    sku: str | None = None
    product_id: str | None = None
    published_at: AwareDatetime


# --- loyalty ------------------------------------------------------------------------


class PointsEarned(EventData):
    type: Literal["afterglow.points.earned.v1"] = "afterglow.points.earned.v1"
    entry_id: str
    points: int
    status: Literal["pending", "available"]
    reason: str
    order_id: str | None = None
    available_at: AwareDatetime | None = None
    balance_available: int
    balance_pending: int
    earned_at: AwareDatetime


class PointsRedeemed(EventData):
    type: Literal["afterglow.points.redeemed.v1"] = "afterglow.points.redeemed.v1"
    redemption_id: str
    points: int = Field(gt=0)
    reward_id: str
    reward_code: str
    balance_available: int
    redeemed_at: AwareDatetime


class PointsExpired(EventData):
    type: Literal["afterglow.points.expired.v1"] = "afterglow.points.expired.v1"
    points: int = Field(gt=0)
    balance_available: int
    expired_at: AwareDatetime


class TierChanged(EventData):
    type: Literal["afterglow.tier.changed.v1"] = "afterglow.tier.changed.v1"
    from_tier: str | None
    to_tier: str
    direction: Literal["up", "down"]
    changed_at: AwareDatetime


# --- referrals ----------------------------------------------------------------------


class ReferralInvited(EventData):
    type: Literal["afterglow.referral.invited.v1"] = "afterglow.referral.invited.v1"
    invited_at: AwareDatetime
    reason: str = "promoter"
    score: int | None = None
    journey_instance_id: str | None = None


class ReferralCodeIssued(EventData):
    type: Literal["afterglow.referral.code_issued.v1"] = "afterglow.referral.code_issued.v1"
    code: str
    share_url: str
    issued_at: AwareDatetime


class ReferralConverted(EventData):
    """Subject: the advocate, who is rewarded. Loyalty turns this into points."""

    type: Literal["afterglow.referral.converted.v1"] = "afterglow.referral.converted.v1"
    referral_id: str
    code: str
    referee_customer_id: str
    order_id: str
    order_total: Money
    converted_at: AwareDatetime


class ReferralRejected(EventData):
    type: Literal["afterglow.referral.rejected.v1"] = "afterglow.referral.rejected.v1"
    referral_id: str
    code: str
    reason: Literal[
        "self_referral",
        "existing_customer",
        "advocate_cap",
        "velocity_review",
        "refunded",
        "cancelled",
        "outside_window",
        "unknown_code",
        "manual",
    ]
    detail: str | None = None
    referee_customer_id: str | None = None
    order_id: str | None = None
    rejected_at: AwareDatetime


# --- discounts (reward codes in the tenant's shop) ------------------------------------
#
# Loyalty and referrals issue reward codes; only orders-ingest holds the shop's API
# credentials. So the issuer asks by event and ingest answers by event: no token is
# copied into a second service. The code is the key of everything below.

DiscountValueKind = Literal["fixed_amount", "percentage", "free_shipping"]
# What every platform accepts as a code (Shopify: up to 255; WooCommerce lowercases it,
# BigCommerce: 50 characters): letters, digits, dash and underscore.
DISCOUNT_CODE_PATTERN = r"^[A-Za-z0-9][A-Za-z0-9_-]{2,49}$"


class DiscountRequested(EventData):
    """Create the reward code ``code`` in the tenant's shop: usable once, by the subject
    only, between ``starts_at`` and ``ends_at``. The code is the idempotency key: a
    repeated request (or a retry after a timeout) never creates a second discount.

    ``announce`` is the message that tells the customer about the code. orders-ingest
    releases it in the transaction that records the discount as created, so no customer
    is told of a code the checkout would refuse; on failure it is never sent."""

    type: Literal["afterglow.discount.requested.v1"] = "afterglow.discount.requested.v1"
    code: str = Field(pattern=DISCOUNT_CODE_PATTERN)
    title: str = Field(min_length=1, max_length=255, description="Shown to the merchant")
    value_kind: DiscountValueKind
    amount: Money | None = Field(default=None, description="fixed_amount: off the order")
    percent: int | None = Field(default=None, ge=1, le=100, description="percentage: off")
    starts_at: AwareDatetime
    ends_at: AwareDatetime | None = None
    reference: str = Field(max_length=200, description="The issuer's record (redemption id)")
    announce: MessageRequested | None = None

    @model_validator(mode="after")
    def _value_is_complete(self) -> DiscountRequested:
        if self.value_kind == "fixed_amount" and (self.amount is None or self.amount.amount <= 0):
            raise ValueError("a fixed_amount discount needs a positive amount")
        if self.value_kind == "percentage" and self.percent is None:
            raise ValueError("a percentage discount needs percent")
        if self.ends_at is not None and self.ends_at <= self.starts_at:
            raise ValueError("ends_at must come after starts_at")
        return self


class DiscountCreated(EventData):
    """The code exists in the shop (created now, or found there after a retry)."""

    type: Literal["afterglow.discount.created.v1"] = "afterglow.discount.created.v1"
    code: str
    reference: str
    platform: Platform
    platform_discount_id: str
    created_at: AwareDatetime


class DiscountFailed(EventData):
    """The code could not be created (no shop connection, refused, retries exhausted);
    its announcement was not sent."""

    type: Literal["afterglow.discount.failed.v1"] = "afterglow.discount.failed.v1"
    code: str
    reference: str
    reason: str = Field(max_length=500)
    failed_at: AwareDatetime


class DiscountRevokeRequested(EventData):
    """Disable (or delete) a reward code in the shop: clawed back or withdrawn. A code
    already spent stays spent."""

    type: Literal["afterglow.discount.revoke_requested.v1"] = (
        "afterglow.discount.revoke_requested.v1"
    )
    code: str = Field(pattern=DISCOUNT_CODE_PATTERN)
    reason: Literal["clawback", "expired", "manual"]
    requested_at: AwareDatetime


class DiscountRevoked(EventData):
    type: Literal["afterglow.discount.revoked.v1"] = "afterglow.discount.revoked.v1"
    code: str
    reference: str
    reason: Literal["clawback", "expired", "manual"]
    revoked_at: AwareDatetime


class DiscountUsed(EventData):
    """An order spent the reward code (from the order's ``discount_codes``)."""

    type: Literal["afterglow.discount.used.v1"] = "afterglow.discount.used.v1"
    code: str
    reference: str
    order_id: str
    used_at: AwareDatetime


ALL_EVENT_MODELS: tuple[type[EventData], ...] = (
    OrderPlaced, OrderFulfilled, OrderDelivered, OrderRefunded, OrderCancelled,
    TicketOpened, TicketUpdated, TicketResolved,
    CustomerErasureRequested, CustomerUnsubscribed, ApiKeyIssued, ApiKeyRevoked,
    JourneyStageChanged, MessageRequested, SupportEscalationRequested,
    SurveyRequested, SurveySent, SurveyResponded, ReviewRequested, ReviewSubmitted,
    ReviewPublished, PointsEarned, PointsRedeemed, PointsExpired, TierChanged,
    ReferralInvited, ReferralCodeIssued, ReferralConverted, ReferralRejected,
    DiscountRequested, DiscountCreated, DiscountFailed, DiscountRevokeRequested,
    DiscountRevoked, DiscountUsed,
)  # fmt: skip

# The discriminated union over the one list above, so a new type is added in one place.
CatalogEvent = Annotated[
    Union[ALL_EVENT_MODELS],  # type: ignore[valid-type]  # noqa: UP007 - built from a tuple
    Field(discriminator="type"),
]

_ADAPTER: TypeAdapter[Any] = TypeAdapter(CatalogEvent)

EVENT_TYPES: dict[str, type[EventData]] = {
    m.model_fields["type"].default: m for m in ALL_EVENT_MODELS
}


def parse_data(body: dict[str, Any]) -> Any:
    """Validate a body (with its ``type``) against the catalog. Raises ValidationError."""
    return _ADAPTER.validate_python(body)


def topic_for(event_type: str) -> str:
    """``afterglow.order.placed.v1`` -> the topic of nouns ``order`` (``afterglow.orders``)."""
    try:
        noun = event_type.split(".")[1]
        return TOPICS_BY_NOUN[noun].name
    except (IndexError, KeyError) as exc:
        raise KeyError(f"no topic for event type {event_type!r}") from exc
