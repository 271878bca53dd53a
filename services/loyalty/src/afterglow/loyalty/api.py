"""REST routes: accounts, history, redemptions, adjustments, rules, metrics."""

from __future__ import annotations

from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import Depends, Header, Path, Query, Response
from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from afterglow.kit import openapi
from afterglow.kit.auth import Principal, require_scope
from afterglow.kit.db import Session
from afterglow.kit.routing import service_router
from afterglow.kit.types import Id, NoControls, NoControlsMultiline, SignedAmount
from afterglow.loyalty import domain
from afterglow.loyalty.deps import Deps
from afterglow.loyalty.metrics_api import Amount
from afterglow.loyalty.redemptions import RedeemRequest

router = service_router(prefix="/v1", tags=["loyalty"])
Reader = Annotated[Principal, Depends(require_scope("loyalty:read"))]
Writer = Annotated[Principal, Depends(require_scope("loyalty:write"))]
Customer = Id


_NO_ACCOUNT = openapi.error(
    404,
    "No account: the customer never earned nor was credited",
    "not_found",
    "no loyalty account for customer 'cus_42'",
    field="customer",
)


class TierProgressOut(BaseModel):
    basis: str
    currency: str | None = Field(
        default=None, description="The program's currency, when the basis is spend"
    )
    qualifying: int
    next_tier: str | None
    next_threshold: int | None
    remaining: int | None


class UnpricedOrderOut(BaseModel):
    order_id: str
    total: dict[str, Any] = Field(description="amount (minor units) and currency")
    reason: str
    placed_at: datetime


class AccountOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "customer_id": "cus_42",
                    "available": 620,
                    "pending": 65,
                    "debt": 0,
                    "tier": "silver",
                    "tier_progress": {
                        "basis": "spend",
                        "currency": "USD",
                        "qualifying": 64000,
                        "next_tier": "gold",
                        "next_threshold": 100000,
                        "remaining": 36000,
                    },
                    "lifetime_earned": 1120,
                    "currency_value_minor": 620,
                    "currency": "USD",
                    "unpriced_orders": [
                        {
                            "order_id": "pos:1310",
                            "total": {"amount": 24900, "currency": "PLN"},
                            "reason": "no exchange rate PLN->USD",
                            "placed_at": "2026-03-11T12:00:00Z",
                        }
                    ],
                }
            ]
        }
    )
    customer_id: str
    available: int = Field(description="Spendable points (never negative)")
    pending: int = Field(description="Earned, waiting for the return window to end")
    debt: int = Field(description="Points clawed back after they were spent; repaid first")
    tier: str | None
    tier_progress: TierProgressOut
    lifetime_earned: int
    currency_value_minor: int = Field(description="What the available points are worth")
    currency: str = Field(description="The program's currency (of every amount above)")
    unpriced_orders: list[UnpricedOrderOut] = Field(
        default_factory=list,
        description="Orders that earned nothing because they could not be priced in the"
        " program's currency (no exchange rate), with the reason",
    )


@router.get("/accounts/{customer}", response_model=AccountOut, responses=_NO_ACCOUNT)
async def get_account(
    customer: Customer, principal: Reader, session: Session, deps: Deps
) -> AccountOut:
    """Balances, tier and progress. 404 until the customer earns or is credited once."""
    view = await deps.loyalty.account_summary(session, principal.tenant_id, customer)
    account, rules, p = view.account, view.rules, view.progress
    return AccountOut(
        customer_id=customer,
        available=max(0, account.available),
        pending=account.pending,
        debt=max(0, -account.available),
        tier=account.tier,
        tier_progress=TierProgressOut(
            basis=p.basis,
            currency=rules.currency if p.basis == "spend" else None,
            qualifying=p.qualifying,
            next_tier=p.next_tier,
            next_threshold=p.next_threshold,
            remaining=p.remaining,
        ),
        lifetime_earned=account.lifetime_earned,
        currency_value_minor=int(max(0, account.available) * rules.point_value_minor),
        currency=rules.currency,
        unpriced_orders=[
            UnpricedOrderOut(
                order_id=o.order_id,
                total={"amount": o.total_minor, "currency": o.currency},
                reason=o.unpriced_reason or "unpriced",
                placed_at=o.placed_at,
            )
            for o in view.unpriced
        ],
    )


class EntryOut(BaseModel):
    id: str
    kind: str
    pending_delta: int
    available_delta: int
    order_id: str | None
    reason: str | None
    actor: str | None
    ref: str | None
    created_at: datetime


class HistoryOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "entries": [
                        {
                            "id": "en_5c2e9a1f",
                            "kind": "adjust",
                            "pending_delta": 0,
                            "available_delta": 100,
                            "order_id": None,
                            "reason": "goodwill: late parcel",
                            "actor": "key:3fa1c9d2e7b4",
                            "ref": None,
                            "created_at": "2026-03-10T11:00:00Z",
                        }
                    ],
                    "next_cursor": "1841",
                }
            ]
        }
    )
    entries: list[EntryOut]
    next_cursor: str | None


@router.get("/accounts/{customer}/history", response_model=HistoryOut)
async def history(
    customer: Customer,
    principal: Reader,
    session: Session,
    deps: Deps,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(pattern=r"^[0-9]{1,18}$")] = None,
) -> HistoryOut:
    """Newest first. ``next_cursor`` is opaque; pass it back to get the next page."""
    rows, next_cursor = await deps.loyalty.history(
        session, principal.tenant_id, customer, limit, cursor
    )
    return HistoryOut(
        entries=[
            EntryOut(
                id=r.id,
                kind=r.kind,
                pending_delta=r.pending_delta,
                available_delta=r.available_delta,
                order_id=r.order_id,
                reason=r.reason,
                actor=r.actor,
                ref=r.ref,
                created_at=r.created_at,
            )
            for r in rows
        ],
        next_cursor=next_cursor,
    )


class RedemptionIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"reward_id": "five-off"}]}
    )
    reward_id: Annotated[str, StringConstraints(min_length=1, max_length=50), NoControls]


_REDEMPTION_EXAMPLE: dict[str, Any] = {
    "redemption_id": "rd_91c4e2b7",
    "reward": {
        "id": "five-off",
        "name": "$5 off",
        "kind": "fixed_discount",
        "points_price": 500,
        "amount_minor": 500,
        "percent": None,
    },
    "points": 500,
    "code": "AG-7QK2M9XW4P3R",
    "balance": {"available": 120, "pending": 65},
    "redeemed_at": "2026-03-10T11:05:00+00:00",
}


class RedemptionBalance(BaseModel):
    available: int = Field(description="Spendable points left after the redemption")
    pending: int


class RedemptionOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_REDEMPTION_EXAMPLE]})
    redemption_id: str
    reward: domain.Reward = Field(description="The reward as the program defined it then")
    points: int = Field(description="Points the reward cost")
    code: str = Field(description="The reward code, usable at the shop's checkout")
    balance: RedemptionBalance
    # A string, not a datetime: a replayed answer is the first one as it was stored,
    # byte for byte (a datetime would be re-rendered, "+00:00" becoming "Z").
    redeemed_at: str = Field(
        description="When the points were spent (ISO 8601)",
        json_schema_extra={"format": "date-time"},
    )


# Redemptions made (a replayed Idempotency-Key is not one), by reward kind. Counted as
# the route returns, after the redemption committed.
REDEMPTIONS = Counter(
    "afterglow_loyalty_redemptions_total", "Rewards redeemed, by reward kind", ["kind"]
)
REDEEMED_POINTS = Counter(
    "afterglow_loyalty_redeemed_points_total", "Points spent on rewards, by reward kind", ["kind"]
)


@router.post(
    "/accounts/{customer}/redemptions",
    status_code=201,
    response_model=RedemptionOut,
    responses=openapi.errors(
        openapi.example(201, _REDEMPTION_EXAMPLE),
        _NO_ACCOUNT,
        openapi.error(
            409,
            "Not enough available points for the reward",
            "insufficient_points",
            "500 points requested, 120 available",
            field="reward_id",
        ),
        openapi.error(
            422,
            "An unknown reward, an invalid body, or an Idempotency-Key used with another body",
            "idempotency_key_reused",
            "this Idempotency-Key was used with a different request body",
            field="Idempotency-Key",
        ),
    ),
)
async def redeem(
    customer: Customer,
    body: RedemptionIn,
    principal: Writer,
    deps: Deps,
    response: Response,
    idempotency_key: Annotated[str, Header(alias="Idempotency-Key", min_length=1, max_length=200)],
) -> RedemptionOut:
    """Spend points on a reward. The same Idempotency-Key returns the same answer and
    deducts nothing twice; the same key with another body is a 422. Concurrent
    requests share one transaction (503 with Retry-After when too many wait)."""
    request = RedeemRequest(principal.tenant_id, customer, body.reward_id, idempotency_key)
    result, replayed = await deps.redemptions.redeem(request)
    out = RedemptionOut.model_validate(result)
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    else:
        REDEMPTIONS.labels(out.reward.kind).inc()
        REDEEMED_POINTS.labels(out.reward.kind).inc(out.points)
    return out


class AdjustmentIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"points": 100, "reason": "goodwill: late parcel"}]},
    )
    points: SignedAmount = Field(description="Positive credits, negative debits (never overdraws)")
    reason: Annotated[str, StringConstraints(min_length=1, max_length=500), NoControlsMultiline]


class AdjustmentBalance(BaseModel):
    available: int = Field(description="Spendable points (never negative)")
    pending: int
    debt: int = Field(description="Points clawed back after they were spent; repaid first")


_ADJUSTMENT_EXAMPLE: dict[str, Any] = {
    "entry_id": "en_5c2e9a1f",
    "points": 100,
    "balance": {"available": 720, "pending": 65, "debt": 0},
}


class AdjustmentOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_ADJUSTMENT_EXAMPLE]})
    entry_id: str = Field(description="The ledger entry the adjustment made")
    points: int = Field(description="As requested: positive credited, negative debited")
    balance: AdjustmentBalance


@router.post(
    "/accounts/{customer}/adjustments",
    status_code=201,
    response_model=AdjustmentOut,
    responses=openapi.errors(
        openapi.example(201, _ADJUSTMENT_EXAMPLE),
        openapi.error(
            409,
            "A debit larger than the available points (an adjustment never overdraws)",
            "insufficient_points",
            "300 points requested, 120 available",
            field="points",
        ),
    ),
)
async def adjust(
    customer: Customer, body: AdjustmentIn, principal: Writer, session: Session, deps: Deps
) -> AdjustmentOut:
    done = await deps.loyalty.adjust(
        session,
        principal.tenant_id,
        customer,
        body.points,
        body.reason,
        f"key:{principal.key_id}",
    )
    return AdjustmentOut(
        entry_id=done.entry_id,
        points=done.points,
        balance=AdjustmentBalance(available=done.available, pending=done.pending, debt=done.debt),
    )


# The default program: what a tenant that never set one runs.
_RULES_EXAMPLE = domain.ProgramRules().model_dump(mode="json")


@router.get(
    "/rules", response_model=domain.ProgramRules, responses=openapi.example(200, _RULES_EXAMPLE)
)
async def get_rules(principal: Reader, session: Session, deps: Deps) -> domain.ProgramRules:
    return await deps.loyalty.rules(session, principal.tenant_id)


@router.put(
    "/rules",
    response_model=domain.ProgramRules,
    responses=openapi.example(200, _RULES_EXAMPLE),
    openapi_extra={"requestBody": {"content": {"application/json": {"example": _RULES_EXAMPLE}}}},
)
async def put_rules(
    body: domain.ProgramRules, principal: Writer, session: Session, deps: Deps
) -> domain.ProgramRules:
    """Replace the program. Points already earned keep the rule that earned them."""
    return await deps.loyalty.replace_rules(session, principal.tenant_id, body)


_METRICS_EXAMPLE: dict[str, Any] = {
    "accounts": 412,
    "points_issued": 181200,
    "points_redeemed": 64500,
    "points_expired": 9100,
    "points_clawed_back": 1300,
    "points_outstanding": 106300,
    "points_pending": 22400,
    "points_debt": 200,
    "outstanding_liability": {"amount": 106300, "currency": "USD"},
    "redemption_rate": 0.356,
    "orders_by_currency": [
        {"currency": "PLN", "orders": 37, "total_minor": 921300, "unpriced_orders": 2},
        {"currency": "USD", "orders": 508, "total_minor": 3241800, "unpriced_orders": 0},
    ],
    "unpriced_orders": 2,
}


class CurrencyOrdersOut(BaseModel):
    currency: str
    orders: int
    total_minor: int = Field(description="The orders' totals in this currency, never converted")
    unpriced_orders: int = Field(description="Of them, orders with no price in the program")


class ProgramMetricsOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_METRICS_EXAMPLE]})
    accounts: int
    points_issued: int = Field(description="Points that became spendable (credits too)")
    points_redeemed: int
    points_expired: int
    points_clawed_back: int = Field(description="Points taken back by refunds and cancellations")
    points_outstanding: int = Field(description="Available balances now")
    points_pending: int = Field(description="Earned, waiting for the return window to end")
    points_debt: int = Field(description="Points clawed back after they were spent")
    outstanding_liability: Amount = Field(description="outstanding x the point value, now")
    redemption_rate: float = Field(description="redeemed / issued (0 when nothing was issued)")
    orders_by_currency: list[CurrencyOrdersOut] = Field(
        description="Order money per currency: each currency on its own row, never added up"
    )
    unpriced_orders: int = Field(description="Orders that earned nothing for want of a rate")


@router.get(
    "/metrics",
    response_model=ProgramMetricsOut,
    responses=openapi.example(200, _METRICS_EXAMPLE),
)
async def metrics(principal: Reader, session: Session, deps: Deps) -> ProgramMetricsOut:
    """Program totals: issued (became spendable), redeemed, expired, clawed back, the
    outstanding balance and what it is worth (the merchant's liability)."""
    totals = await deps.loyalty.program_metrics(session, principal.tenant_id)
    return ProgramMetricsOut.model_validate(totals)


# --- exchange rates -----------------------------------------------------------------

CurrencyCode = Annotated[str, Path(pattern=r"^[A-Z]{3}$", description="ISO 4217 code")]


class ExchangeRateIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"rate": "0.25", "as_of": "2026-03-09"}]}
    )
    rate: Decimal = Field(
        gt=0,
        max_digits=24,
        decimal_places=10,
        description="Units of the program's currency one unit of this currency is worth"
        " (program in USD, 1 PLN = 0.25 USD: 0.25)",
    )
    as_of: date = Field(description="The date the rate was taken (shown with every use)")


_RATE_EXAMPLE: dict[str, Any] = {
    "currency": "PLN",
    "quote": "USD",
    "rate": "0.25",
    "as_of": "2026-03-09",
    "updated_at": "2026-03-09T08:00:00Z",
}


class ExchangeRateOut(BaseModel):
    # Read from the stored row's attributes (ExchangeRateOut.model_validate(row)).
    model_config = ConfigDict(from_attributes=True, json_schema_extra={"examples": [_RATE_EXAMPLE]})
    currency: str
    quote: str = Field(description="The program currency the rate converts into")
    rate: Decimal
    as_of: date
    updated_at: datetime


_RATES_EXAMPLE: dict[str, Any] = {"program_currency": "USD", "rates": [_RATE_EXAMPLE]}


class ExchangeRatesOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_RATES_EXAMPLE]})
    program_currency: str = Field(description="The currency every rate converts into")
    rates: list[ExchangeRateOut] = Field(description="By currency code")


@router.get(
    "/exchange-rates",
    response_model=ExchangeRatesOut,
    responses=openapi.example(200, _RATES_EXAMPLE),
)
async def list_exchange_rates(principal: Reader, session: Session, deps: Deps) -> ExchangeRatesOut:
    """The tenant's rates into its program's currency."""
    currency, rows = await deps.loyalty.exchange_rates(session, principal.tenant_id)
    return ExchangeRatesOut(
        program_currency=currency, rates=[ExchangeRateOut.model_validate(r) for r in rows]
    )


@router.put("/exchange-rates/{currency}", response_model=ExchangeRateOut)
async def put_exchange_rate(
    currency: CurrencyCode,
    body: ExchangeRateIn,
    principal: Writer,
    session: Session,
    deps: Deps,
) -> ExchangeRateOut:
    """Set the rate at which orders in ``currency`` are priced in the program's currency
    from now on. Orders already placed keep the price they were given (or stay unpriced:
    credit them by adjustment if they should earn)."""
    row = await deps.loyalty.set_exchange_rate(
        session, principal.tenant_id, currency, body.rate, body.as_of
    )
    return ExchangeRateOut.model_validate(row)


@router.delete(
    "/exchange-rates/{currency}",
    status_code=204,
    responses=openapi.error(
        404, "No rate for this currency", "not_found", "no exchange rate for PLN", field="currency"
    ),
)
async def delete_exchange_rate(
    currency: CurrencyCode, principal: Writer, session: Session, deps: Deps
) -> Response:
    """Forget a rate: later orders in ``currency`` are recorded unpriced."""
    await deps.loyalty.delete_exchange_rate(session, principal.tenant_id, currency)
    return Response(status_code=204)
