"""What the REST routes answer: one pydantic model per JSON answer, so that the OpenAPI
document describes every field (a client generated from it gets types, not a dict of
anything) and the fuzz checks each answer against it.

Instants are ISO 8601 strings as the routes have always rendered them
(``datetime.isoformat()``: ``+00:00``, not pydantic's ``Z``): typing them ``datetime``
would change the JSON clients already parse."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

ReviewStatus = Literal["pending", "published", "rejected"]
IsoInstant = str  # datetime.isoformat(), with its offset

REVIEW_EXAMPLE: dict[str, Any] = {
    "id": "rv_8f2c1a7b",
    "customer_id": "cus_42",
    "order_id": "pos:1001",
    "sku": "TENT-2P",
    "product_id": None,
    "rating": 5,
    "title": "Dry all night",
    "body": "Easy to pitch, and dry after a night of rain.",
    "status": "published",
    "moderation_reasons": [],
    "verified": True,
    "source": "api",
    "created_at": "2026-03-12T18:04:00+00:00",
    "published_at": "2026-03-12T18:04:00+00:00",
}


# --- external answers -----------------------------------------------------------------


class ExternalResponseOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {"id": 41, "external_id": "typeform-8812", "band": "promoter", "created": True}
            ]
        }
    )
    id: int = Field(description="The stored answer's id (the first one's, for a repeat)")
    external_id: str
    band: str = Field(
        description="promoter/passive/detractor (NPS) or satisfied/neutral/dissatisfied"
    )
    created: bool = Field(description="False when this external_id was recorded before")


# --- reviews --------------------------------------------------------------------------


class ReviewOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [REVIEW_EXAMPLE]})
    id: str
    customer_id: str = Field(description='"erased" once the customer asked to be forgotten')
    order_id: str | None
    sku: str | None
    product_id: str | None = Field(description="The platform's product id, when known")
    rating: int = Field(ge=1, le=5)
    title: str | None
    body: str | None
    status: ReviewStatus
    moderation_reasons: list[str] = Field(
        description="Why moderation held or rejected it, or manual:<status> after a moderator"
    )
    verified: bool = Field(description="The order was seen for this customer")
    source: str = Field(description="api (this API) or page (the review page)")
    created_at: IsoInstant
    published_at: IsoInstant | None = Field(description="Null until first published")


class ReviewList(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [{"reviews": [REVIEW_EXAMPLE]}]})
    reviews: list[ReviewOut] = Field(description="Newest first")


PRODUCT_REVIEWS_EXAMPLE: dict[str, Any] = {
    "product": "TENT-2P",
    "count": 12,
    "average": 4.6,
    "distribution": {"1": 0, "2": 0, "3": 1, "4": 3, "5": 8},
    "reviews": [REVIEW_EXAMPLE],
}


class ProductReviews(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [PRODUCT_REVIEWS_EXAMPLE]})
    product: str = Field(description="As asked: a SKU or a platform product id")
    count: int = Field(description="Published reviews of the product, all pages")
    average: float | None = Field(description="Average rating, two decimals; null if none")
    distribution: dict[str, int] = Field(description='Published reviews per rating, "1" to "5"')
    reviews: list[ReviewOut] = Field(description="This page, most recently published first")


REVIEW_LINK_EXAMPLE: dict[str, Any] = {
    "url": "https://feedback.example.com/r/eyJ0IjoiYWNtZSJ9.c2ln",
    "expires_at": "2026-05-11T10:00:00+00:00",
}


class ReviewLinkOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [REVIEW_LINK_EXAMPLE]})
    url: str = Field(description="The signed link to the order's review page")
    expires_at: IsoInstant


# --- survey metrics -------------------------------------------------------------------


# The fields are declared in the order the answer has always had them (bands first,
# then the common figures, then the kind's score; a bucket's start first of all).

_RESPONSES = "Answers in the bucket (the last answer per survey)"
_AVERAGE = "Average score, two decimals; null if no answers"
_SENT = "Surveys sent in the bucket"
_ANSWERED = "Of the surveys sent in the bucket, those answered so far"
_RATE = "answered / sent, four decimals; null if none was sent"


class _Bucket(BaseModel):
    # A base listed last, so that its field comes first (pydantic orders fields from
    # the last base to the class itself).
    start: IsoInstant = Field(description="The bucket's first instant (UTC)")


class NpsFigures(BaseModel):
    promoters: int = Field(description="Scores 9-10")
    passives: int = Field(description="Scores 7-8")
    detractors: int = Field(description="Scores 0-6")
    responses: int = Field(description=_RESPONSES)
    average: float | None = Field(description=_AVERAGE)
    sent: int = Field(description=_SENT)
    answered: int = Field(description=_ANSWERED)
    response_rate: float | None = Field(description=_RATE)
    nps: float | None = Field(description="In [-100, 100], one decimal; null if no answers")


class NpsBucket(NpsFigures, _Bucket):
    pass


class CsatFigures(BaseModel):
    satisfied: int = Field(description="Scores 4-5")
    neutral: int = Field(description="Score 3")
    dissatisfied: int = Field(description="Scores 1-2")
    responses: int = Field(description=_RESPONSES)
    average: float | None = Field(description=_AVERAGE)
    sent: int = Field(description=_SENT)
    answered: int = Field(description=_ANSWERED)
    response_rate: float | None = Field(description=_RATE)
    csat: float | None = Field(description="Percentage satisfied, one decimal; null if none")


class CsatBucket(CsatFigures, _Bucket):
    pass


class CesFigures(BaseModel):
    satisfied: int = Field(description="Scores 5-7 (7 = very easy)")
    neutral: int = Field(description="Score 4")
    dissatisfied: int = Field(description="Scores 1-3")
    responses: int = Field(description=_RESPONSES)
    average: float | None = Field(description=_AVERAGE)
    sent: int = Field(description=_SENT)
    answered: int = Field(description=_ANSWERED)
    response_rate: float | None = Field(description=_RATE)
    ces_satisfied_pct: float | None = Field(
        description="Percentage satisfied, one decimal; null if none"
    )


class CesBucket(CesFigures, _Bucket):
    pass


_SKU = "Only answers about orders with this SKU; null for all"
_FROM = "The window's first instant"
_TO = "The window's end, exclusive"


def _metrics_example(kind: str, bands: tuple[str, str, str], figure: str, value: float) -> Any:
    totals = {
        bands[0]: 61,
        bands[1]: 22,
        bands[2]: 17,
        "responses": 100,
        "average": 8.1,
        "sent": 240,
        "answered": 100,
        "response_rate": 0.4167,
        figure: value,
    }
    return {
        "kind": kind,
        "from": "2026-02-09T00:00:00+00:00",
        "to": "2026-03-09T00:00:00+00:00",
        "interval": "week",
        "sku": None,
        "total": totals,
        "series": [{"start": "2026-02-09T00:00:00+00:00", **totals}],
    }


NPS_EXAMPLE = _metrics_example("nps", ("promoters", "passives", "detractors"), "nps", 44)
CSAT_EXAMPLE = _metrics_example("csat", ("satisfied", "neutral", "dissatisfied"), "csat", 61.0)
CES_EXAMPLE = _metrics_example(
    "ces", ("satisfied", "neutral", "dissatisfied"), "ces_satisfied_pct", 61.0
)


class NpsMetrics(BaseModel):
    model_config = ConfigDict(populate_by_name=True, json_schema_extra={"examples": [NPS_EXAMPLE]})
    kind: Literal["nps"]
    from_: IsoInstant = Field(alias="from", description=_FROM)
    to: IsoInstant = Field(description=_TO)
    interval: Literal["day", "week", "month"]
    sku: str | None = Field(description=_SKU)
    total: NpsFigures
    series: list[NpsBucket]


class CsatMetrics(BaseModel):
    model_config = ConfigDict(populate_by_name=True, json_schema_extra={"examples": [CSAT_EXAMPLE]})
    kind: Literal["csat"]
    from_: IsoInstant = Field(alias="from", description=_FROM)
    to: IsoInstant = Field(description=_TO)
    interval: Literal["day", "week", "month"]
    sku: str | None = Field(description=_SKU)
    total: CsatFigures
    series: list[CsatBucket]


class CesMetrics(BaseModel):
    model_config = ConfigDict(populate_by_name=True, json_schema_extra={"examples": [CES_EXAMPLE]})
    kind: Literal["ces"]
    from_: IsoInstant = Field(alias="from", description=_FROM)
    to: IsoInstant = Field(description=_TO)
    interval: Literal["day", "week", "month"]
    sku: str | None = Field(description=_SKU)
    total: CesFigures
    series: list[CesBucket]


# --- support metrics ------------------------------------------------------------------


class Durations(BaseModel):
    count: int = Field(description="Tickets with this time")
    median: float | None = Field(description="Seconds; null while no ticket has one")
    p90: float | None = Field(description="Seconds, 90th percentile; null while none")


class SupportWeek(BaseModel):
    week: IsoInstant = Field(description="Monday 00:00 UTC of the tickets' opening week")
    channel: str
    tickets: int = Field(description="Opened that week on that channel")
    first_response_s: Durations
    resolution_s: Durations


class TicketCsat(BaseModel):
    ticket_id: str
    score: int = Field(description="CSAT, 1-5")
    satisfied: bool = Field(description="Score 4 or 5")
    responded_at: IsoInstant


SUPPORT_EXAMPLE: dict[str, Any] = {
    "from": "2026-02-09T00:00:00+00:00",
    "to": "2026-03-09T00:00:00+00:00",
    "weeks": [
        {
            "week": "2026-02-09T00:00:00+00:00",
            "channel": "email",
            "tickets": 12,
            "first_response_s": {"count": 11, "median": 1800.0, "p90": 14400.0},
            "resolution_s": {"count": 9, "median": 86400.0, "p90": 259200.0},
        }
    ],
    "csat_by_ticket": [
        {
            "ticket_id": "zendesk:35436",
            "score": 5,
            "satisfied": True,
            "responded_at": "2026-02-12T10:00:00+00:00",
        }
    ],
}


class SupportMetrics(BaseModel):
    model_config = ConfigDict(
        populate_by_name=True, json_schema_extra={"examples": [SUPPORT_EXAMPLE]}
    )
    from_: IsoInstant = Field(alias="from", description=_FROM)
    to: IsoInstant = Field(description=_TO)
    weeks: list[SupportWeek]
    csat_by_ticket: list[TicketCsat] = Field(description="Answered in [from, to), oldest first")


# --- tenant settings ------------------------------------------------------------------

SETTINGS_EXAMPLE: dict[str, Any] = {
    "name": "Acme Outdoor",
    "brand_color": "#1f6f43",
    "manual_moderation": False,
}


class SettingsOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [SETTINGS_EXAMPLE]})
    name: str | None = Field(description="Shown on the pages and in messages")
    brand_color: str | None = Field(description="#rrggbb")
    manual_moderation: bool = Field(description="Every review waits for a moderator")
