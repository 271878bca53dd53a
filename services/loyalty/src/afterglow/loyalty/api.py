"""REST routes: accounts, history, redemptions, adjustments, rules, metrics."""

from __future__ import annotations

import hashlib
import json
import secrets
from datetime import date, datetime
from decimal import Decimal
from typing import Annotated, Any

from fastapi import Depends, Header, Path, Query, Request, Response
from prometheus_client import Counter
from pydantic import BaseModel, ConfigDict, Field, StringConstraints
from sqlalchemy import case, delete, func, select
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.events import Outbox
from afterglow.events.catalog import MessageRequested, PointsRedeemed
from afterglow.kit import openapi
from afterglow.kit.app import runtime_of
from afterglow.kit.auth import Principal, require_scope
from afterglow.kit.db import Session
from afterglow.kit.errors import AppError, NotFound, Unprocessable
from afterglow.kit.routing import service_router
from afterglow.kit.types import Id, NoControls, NoControlsMultiline, SignedAmount
from afterglow.loyalty import domain, rewards, store
from afterglow.loyalty.models import (
    Account,
    EntryRow,
    ExchangeRateRow,
    OrderRow,
    ProgramRulesRow,
    Redemption,
)

router = service_router(prefix="/v1", tags=["loyalty"])
Reader = Annotated[Principal, Depends(require_scope("loyalty:read"))]
Writer = Annotated[Principal, Depends(require_scope("loyalty:write"))]
Customer = Id


class InsufficientPointsError(AppError):
    status_code, code = 409, "insufficient_points"


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
    customer: Customer, principal: Reader, session: Session, request: Request
) -> AccountOut:
    """Balances, tier and progress. 404 until the customer earns or is credited once."""
    account = await session.get(Account, (principal.tenant_id, customer))
    if account is None:
        raise NotFound(f"no loyalty account for customer {customer!r}", field="customer")
    rules = await store.load_rules(session, principal.tenant_id)
    now = runtime_of(request).clock.now()
    value, _ = await store.qualifying_value(session, rules, account, now)
    p = domain.tier_progress(rules, value)
    unpriced = (
        await session.execute(
            select(OrderRow)
            .where(
                OrderRow.tenant_id == principal.tenant_id,
                OrderRow.customer_id == customer,
                OrderRow.fx_factor.is_(None),
            )
            .order_by(OrderRow.placed_at.desc())
            .limit(50)
        )
    ).scalars()
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
            for o in unpriced
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
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(pattern=r"^[0-9]{1,18}$")] = None,
) -> HistoryOut:
    """Newest first. ``next_cursor`` is opaque; pass it back to get the next page."""
    stmt = select(EntryRow).where(
        EntryRow.tenant_id == principal.tenant_id, EntryRow.customer_id == customer
    )
    if cursor is not None:
        stmt = stmt.where(EntryRow.seq < int(cursor))
    rows = list(
        (await session.execute(stmt.order_by(EntryRow.seq.desc()).limit(limit + 1))).scalars()
    )
    more = len(rows) > limit
    rows = rows[:limit]
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
        next_cursor=str(rows[-1].seq) if more and rows else None,
    )


class RedemptionIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"reward_id": "five-off"}]}
    )
    reward_id: Annotated[str, StringConstraints(min_length=1, max_length=50), NoControls]


def _reward_code() -> str:
    # 12 characters of an unambiguous alphabet: about 60 bits, unique by constraint too.
    alphabet = "ABCDEFGHJKLMNPQRSTUVWXYZ23456789"
    return "AG-" + "".join(secrets.choice(alphabet) for _ in range(12))


# Redemptions made (a replayed Idempotency-Key is not one), by reward kind. Counted as
# the route returns, just before the transaction commits: a commit that fails (a 5xx,
# rare) is counted too, which an operator's rate does not notice.
REDEMPTIONS = Counter(
    "afterglow_loyalty_redemptions_total", "Rewards redeemed, by reward kind", ["kind"]
)
REDEEMED_POINTS = Counter(
    "afterglow_loyalty_redeemed_points_total", "Points spent on rewards, by reward kind", ["kind"]
)


@router.post(
    "/accounts/{customer}/redemptions",
    status_code=201,
    responses=openapi.errors(
        openapi.example(
            201,
            {
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
            },
        ),
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
    session: Session,
    request: Request,
    response: Response,
    idempotency_key: Annotated[str, Header(alias="Idempotency-Key", min_length=1, max_length=200)],
) -> dict[str, Any]:
    """Spend points on a reward. The same Idempotency-Key returns the same answer and
    deducts nothing twice; the same key with another body is a 422."""
    rt = runtime_of(request)
    result, replayed = await redeem_reward(
        session,
        rt.outbox,
        principal.tenant_id,
        customer,
        body.reward_id,
        idempotency_key,
        rt.clock.now(),
    )
    if replayed:
        response.headers["Idempotent-Replayed"] = "true"
    else:
        kind = str(result["reward"]["kind"])
        REDEMPTIONS.labels(kind).inc()
        REDEEMED_POINTS.labels(kind).inc(int(result["points"]))
    return result


async def redeem_reward(
    session: AsyncSession,
    outbox: Outbox,
    tenant: str,
    customer: str,
    reward_id: str,
    idempotency_key: str,
    now: datetime,
) -> tuple[dict[str, Any], bool]:
    """Redeem in the caller's transaction; returns (response body, replayed)."""
    request_hash = hashlib.sha256(json.dumps({"reward_id": reward_id}).encode()).hexdigest()
    rules = await store.load_rules(session, tenant)
    account = await store.lock_account(session, tenant, customer, now, rules, create=False)
    if account is None:
        raise NotFound(f"no loyalty account for customer {customer!r}", field="customer")
    # Checked after the lock: a concurrent request with the same key has committed by
    # now, so we see its row instead of redeeming a second time.
    prior = await session.scalar(
        select(Redemption).where(
            Redemption.tenant_id == tenant,
            Redemption.customer_id == customer,
            Redemption.idempotency_key == idempotency_key,
        )
    )
    if prior is not None:
        if prior.request_hash != request_hash:
            raise Unprocessable(
                "this Idempotency-Key was used with a different request body",
                field="Idempotency-Key",
                code="idempotency_key_reused",
            )
        return prior.response, True
    reward = rules.reward(reward_id)
    if reward is None:
        raise Unprocessable(f"unknown reward {reward_id!r}", field="reward_id")
    wallet = await store.load_wallet(session, account)
    redemption_id = domain.new_id()
    try:
        entries = wallet.redeem(reward.points_price, now, redemption_id, f"reward {reward.id}")
    except domain.InsufficientPoints as exc:
        raise InsufficientPointsError(str(exc), field="reward_id") from exc
    await store.persist(session, outbox, account, wallet, entries, now)
    code = _reward_code()
    result = {
        "redemption_id": redemption_id,
        "reward": reward.model_dump(mode="json"),
        "points": reward.points_price,
        "code": code,
        "balance": {"available": wallet.spendable, "pending": wallet.pending},
        "redeemed_at": now.isoformat(),
    }
    await session.execute(
        pg_insert(Redemption).values(
            id=redemption_id,
            tenant_id=tenant,
            customer_id=customer,
            idempotency_key=idempotency_key,
            request_hash=request_hash,
            reward_id=reward.id,
            points=reward.points_price,
            code=code,
            response=result,
            created_at=now,
        )
    )
    redeemed = PointsRedeemed(
        redemption_id=redemption_id,
        points=reward.points_price,
        reward_id=reward.id,
        reward_code=code,
        balance_available=wallet.spendable,
        redeemed_at=now,
    )
    msg = MessageRequested(
        request_id=f"loyalty:reward_code:{redemption_id}",
        kind="reward_code",
        category="transactional",
        priority="high",
        variables={
            "reward_code": code,
            "reward": reward.name,
            "reward_kind": reward.kind,
            "amount_minor": reward.amount_minor,
            "percent": reward.percent,
            "currency": rules.currency,
            "points": reward.points_price,
        },
    )
    # The code is created in the shop first; ingest then releases ``msg`` (rewards.py).
    discount = rewards.shop_discount(code, reward, rules.currency, redemption_id, now, msg)
    await outbox.add(
        session,
        store.account_event(account, redeemed, redemption_id),
        store.account_event(account, discount, msg.request_id),
    )
    return result, False


class AdjustmentIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"points": 100, "reason": "goodwill: late parcel"}]},
    )
    points: SignedAmount = Field(description="Positive credits, negative debits (never overdraws)")
    reason: Annotated[str, StringConstraints(min_length=1, max_length=500), NoControlsMultiline]


@router.post(
    "/accounts/{customer}/adjustments",
    status_code=201,
    responses=openapi.errors(
        openapi.example(
            201,
            {
                "entry_id": "en_5c2e9a1f",
                "points": 100,
                "balance": {"available": 720, "pending": 65, "debt": 0},
            },
        ),
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
    customer: Customer, body: AdjustmentIn, principal: Writer, session: Session, request: Request
) -> dict[str, Any]:
    if body.points == 0:
        raise Unprocessable("points must not be zero", field="points")
    rt = runtime_of(request)
    now = rt.clock.now()
    rules = await store.load_rules(session, principal.tenant_id)
    account = await store.lock_account(session, principal.tenant_id, customer, now, rules)
    assert account is not None
    wallet = await store.load_wallet(session, account)
    try:
        entries = wallet.adjust(body.points, rules, now, body.reason, f"key:{principal.key_id}")
    except domain.InsufficientPoints as exc:
        raise InsufficientPointsError(str(exc), field="points") from exc
    await store.persist(session, rt.outbox, account, wallet, entries, now)
    return {
        "entry_id": entries[0].id,
        "points": body.points,
        "balance": {"available": wallet.spendable, "pending": wallet.pending, "debt": wallet.debt},
    }


# The default program: what a tenant that never set one runs.
_RULES_EXAMPLE = domain.ProgramRules().model_dump(mode="json")


@router.get(
    "/rules", response_model=domain.ProgramRules, responses=openapi.example(200, _RULES_EXAMPLE)
)
async def get_rules(principal: Reader, session: Session) -> domain.ProgramRules:
    return await store.load_rules(session, principal.tenant_id)


@router.put(
    "/rules",
    response_model=domain.ProgramRules,
    responses=openapi.example(200, _RULES_EXAMPLE),
    openapi_extra={"requestBody": {"content": {"application/json": {"example": _RULES_EXAMPLE}}}},
)
async def put_rules(
    body: domain.ProgramRules, principal: Writer, session: Session, request: Request
) -> domain.ProgramRules:
    """Replace the program. Points already earned keep the rule that earned them."""
    now = runtime_of(request).clock.now()
    stmt = pg_insert(ProgramRulesRow).values(
        tenant_id=principal.tenant_id, rules=body.model_dump(mode="json"), version=1, updated_at=now
    )
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=["tenant_id"],
            set_={
                "rules": stmt.excluded.rules,
                "updated_at": now,
                "version": ProgramRulesRow.version + 1,
            },
        )
    )
    return body


@router.get(
    "/metrics",
    responses=openapi.example(
        200,
        {
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
        },
    ),
)
async def metrics(principal: Reader, session: Session) -> dict[str, Any]:
    """Program totals: issued (became spendable), redeemed, expired, clawed back, the
    outstanding balance and what it is worth (the merchant's liability)."""
    tenant = principal.tenant_id
    rules = await store.load_rules(session, tenant)

    def total(cond: Any) -> Any:
        return func.coalesce(func.sum(case((cond, EntryRow.available_delta), else_=0)), 0)

    row = (
        await session.execute(
            select(
                total(
                    (EntryRow.kind == "earn_available")
                    | ((EntryRow.kind == "adjust") & (EntryRow.available_delta > 0))
                ),
                total(EntryRow.kind == "redeem"),
                total(EntryRow.kind == "expire"),
                total(EntryRow.kind == "clawback"),
            ).where(EntryRow.tenant_id == tenant)
        )
    ).one()
    issued, redeemed, expired, clawed = int(row[0]), -int(row[1]), -int(row[2]), -int(row[3])
    acc = (
        await session.execute(
            select(
                func.coalesce(func.sum(func.greatest(Account.available, 0)), 0),
                func.coalesce(func.sum(func.greatest(-Account.available, 0)), 0),
                func.coalesce(func.sum(Account.pending), 0),
                func.count(),
            ).where(Account.tenant_id == tenant)
        )
    ).one()
    outstanding, debt, pending, accounts = (int(x) for x in acc)
    liability = int(Decimal(outstanding) * rules.point_value_minor)
    # Order money per currency: each currency on its own row, never added to another.
    priced = OrderRow.fx_factor.is_not(None)
    by_currency = (
        await session.execute(
            select(
                OrderRow.currency,
                func.count(),
                func.coalesce(func.sum(OrderRow.total_minor), 0),
                func.count().filter(~priced),
            )
            .where(OrderRow.tenant_id == tenant)
            .group_by(OrderRow.currency)
            .order_by(OrderRow.currency)
        )
    ).all()
    return {
        "accounts": accounts,
        "points_issued": issued,
        "points_redeemed": redeemed,
        "points_expired": expired,
        "points_clawed_back": clawed,
        "points_outstanding": outstanding,
        "points_pending": pending,
        "points_debt": debt,
        "outstanding_liability": {"amount": liability, "currency": rules.currency},
        "redemption_rate": round(redeemed / issued, 4) if issued else 0.0,
        "orders_by_currency": [
            {
                "currency": cur,
                "orders": int(n),
                "total_minor": int(total),
                "unpriced_orders": int(unpriced),
            }
            for cur, n, total, unpriced in by_currency
        ],
        "unpriced_orders": sum(int(row[3]) for row in by_currency),
    }


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
    model_config = ConfigDict(json_schema_extra={"examples": [_RATE_EXAMPLE]})
    currency: str
    quote: str = Field(description="The program currency the rate converts into")
    rate: Decimal
    as_of: date
    updated_at: datetime


def _rate_out(r: ExchangeRateRow) -> ExchangeRateOut:
    return ExchangeRateOut(
        currency=r.currency, quote=r.quote, rate=r.rate, as_of=r.as_of, updated_at=r.updated_at
    )


@router.get(
    "/exchange-rates",
    responses=openapi.example(200, {"program_currency": "USD", "rates": [_RATE_EXAMPLE]}),
)
async def list_exchange_rates(principal: Reader, session: Session) -> dict[str, Any]:
    """The tenant's rates into its program's currency."""
    rules = await store.load_rules(session, principal.tenant_id)
    rows = (
        await session.execute(
            select(ExchangeRateRow)
            .where(
                ExchangeRateRow.tenant_id == principal.tenant_id,
                ExchangeRateRow.quote == rules.currency,
            )
            .order_by(ExchangeRateRow.currency)
        )
    ).scalars()
    return {
        "program_currency": rules.currency,
        "rates": [_rate_out(r).model_dump(mode="json") for r in rows],
    }


@router.put("/exchange-rates/{currency}", response_model=ExchangeRateOut)
async def put_exchange_rate(
    currency: CurrencyCode,
    body: ExchangeRateIn,
    principal: Writer,
    session: Session,
    request: Request,
) -> ExchangeRateOut:
    """Set the rate at which orders in ``currency`` are priced in the program's currency
    from now on. Orders already placed keep the price they were given (or stay unpriced:
    credit them by adjustment if they should earn)."""
    rules = await store.load_rules(session, principal.tenant_id)
    if currency == rules.currency:
        raise Unprocessable(
            f"{currency} is the program's currency: it needs no rate", field="currency"
        )
    now = runtime_of(request).clock.now()
    stmt = pg_insert(ExchangeRateRow).values(
        tenant_id=principal.tenant_id,
        currency=currency,
        quote=rules.currency,
        rate=body.rate,
        as_of=body.as_of,
        updated_at=now,
    )
    row = (
        await session.execute(
            stmt.on_conflict_do_update(
                index_elements=["tenant_id", "currency", "quote"],
                set_={"rate": body.rate, "as_of": body.as_of, "updated_at": now},
            ).returning(ExchangeRateRow)
        )
    ).scalar_one()
    return _rate_out(row)


@router.delete(
    "/exchange-rates/{currency}",
    status_code=204,
    responses=openapi.error(
        404, "No rate for this currency", "not_found", "no exchange rate for PLN", field="currency"
    ),
)
async def delete_exchange_rate(
    currency: CurrencyCode, principal: Writer, session: Session
) -> Response:
    """Forget a rate: later orders in ``currency`` are recorded unpriced."""
    rules = await store.load_rules(session, principal.tenant_id)
    deleted = (
        await session.execute(
            delete(ExchangeRateRow)
            .where(
                ExchangeRateRow.tenant_id == principal.tenant_id,
                ExchangeRateRow.currency == currency,
                ExchangeRateRow.quote == rules.currency,
            )
            .returning(ExchangeRateRow.currency)
        )
    ).scalar()
    if deleted is None:
        raise NotFound(f"no exchange rate for {currency}", field="currency")
    return Response(status_code=204)
