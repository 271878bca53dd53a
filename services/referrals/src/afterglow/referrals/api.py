"""REST routes: codes, advocates' referrals, explicit attribution, review, metrics."""

from __future__ import annotations

import html
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Depends, Response
from fastapi.responses import HTMLResponse, RedirectResponse
from pydantic import AfterValidator, BaseModel, ConfigDict, Field, StringConstraints

from afterglow.events import derived_event_id
from afterglow.events.catalog import MAX_MINOR_UNITS
from afterglow.events.money import is_iso_currency
from afterglow.kit import openapi
from afterglow.kit.auth import Principal, require_scope
from afterglow.kit.db import Session
from afterglow.kit.errors import Conflict, NotFound, Unprocessable
from afterglow.kit.routing import service_router
from afterglow.kit.types import Id, NoControls, NoControlsMultiline
from afterglow.referrals import domain, store
from afterglow.referrals.deps import ReferralsDeps, get_deps
from afterglow.referrals.models import Code, Referral
from afterglow.referrals.service import ReferralService, reward_columns

router = service_router(prefix="/v1", tags=["referrals"])

Reader = Annotated[Principal, Depends(require_scope("referrals:read"))]
Writer = Annotated[Principal, Depends(require_scope("referrals:write"))]
CustomerId = Id
# What a code may look like on the way in (normalized and checked by find_code).
CodeParam = Annotated[str, StringConstraints(min_length=1, max_length=40), NoControls]


async def _svc(deps: Annotated[ReferralsDeps, Depends(get_deps)]) -> ReferralService:
    return deps.referrals


Svc = Annotated[ReferralService, Depends(_svc)]


_CODE_EXAMPLE: dict[str, Any] = {
    "code": "ADA7K2Q",
    "advocate_customer_id": "cus_42",
    "share_url": "https://shop.example.com/?ref=ADA7K2Q",
    "issued_at": "2026-03-16T10:00:00Z",
    "invited_at": "2026-03-16T10:00:00Z",
    "window_ends_at": "2026-06-14T10:00:00Z",
    "active": True,
}
_REFERRAL_EXAMPLE: dict[str, Any] = {
    "id": "rf_3b9d2c71",
    "code": "ADA7K2Q",
    "advocate_customer_id": "cus_42",
    "referee_customer_id": "cus_77",
    "order_id": "pos:1207",
    "order_total": 8900,
    "currency": "USD",
    "placed_at": "2026-03-20T17:45:00Z",
    "via": "referral_code",
    "state": "pending",
    "reason": None,
    "detail": None,
    "referee_reward_code": "AG-7QK2M9XW4P3R",
    "fulfilled_at": "2026-03-21T09:00:00Z",
    "confirm_due_at": "2026-04-20T09:00:00Z",
    "decided_at": None,
}


class CodeOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_CODE_EXAMPLE]})
    code: str
    advocate_customer_id: str
    share_url: str
    issued_at: datetime
    invited_at: datetime
    window_ends_at: datetime
    active: bool


class ReferralOut(BaseModel):
    model_config = ConfigDict(json_schema_extra={"examples": [_REFERRAL_EXAMPLE]})
    id: str
    code: str
    advocate_customer_id: str
    referee_customer_id: str
    order_id: str
    order_total: int
    currency: str
    placed_at: datetime
    via: str
    state: Literal["pending", "held", "confirmed", "rejected"]
    reason: str | None
    detail: str | None
    referee_reward_code: str | None
    fulfilled_at: datetime | None
    confirm_due_at: datetime | None
    decided_at: datetime | None


def _referral_out(r: Referral) -> ReferralOut:
    return ReferralOut.model_validate(r, from_attributes=True)


async def _code_out(session: Any, svc: ReferralService, code: Code) -> CodeOut:
    policy = await svc.policy(session, code.tenant_id)
    ends = domain.window_ends_at(code.invited_at, policy.attribution_window_days)
    return CodeOut(
        code=code.code,
        advocate_customer_id=code.advocate_customer_id,
        share_url=domain.share_url(policy.share_base_url, code.code),
        issued_at=code.issued_at,
        invited_at=code.invited_at,
        window_ends_at=ends,
        active=svc.clock.now() < ends,
    )


@router.get(
    "/codes/{code}",
    summary="Look up a referral code",
    responses=openapi.error(
        404, "No such code for this tenant", "not_found", "no such referral code", field="code"
    ),
)
async def get_code(
    code: CodeParam,
    principal: Reader,
    session: Session,
    svc: Svc,
) -> CodeOut:
    found = await svc.find_code(session, principal.tenant_id, code)
    if found is None:
        raise NotFound("no such referral code", field="code")
    return await _code_out(session, svc, found)


class IssueCodeIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid", json_schema_extra={"examples": [{"send_invite": True}]}
    )
    send_invite: bool = Field(
        default=False, description="Also request the invitation message (once per code)"
    )


@router.post(
    "/advocates/{customer}/code",
    summary="Issue (or return) an advocate's code; idempotent",
    responses=openapi.errors(
        openapi.example(201, _CODE_EXAMPLE, "Issued", model=CodeOut),
        openapi.example(200, _CODE_EXAMPLE, "Issued before: that code"),
    ),
)
async def issue_code(
    customer: CustomerId,
    principal: Writer,
    session: Session,
    svc: Svc,
    response: Response,
    body: IssueCodeIn | None = None,
) -> CodeOut:
    now = svc.clock.now()
    code, created = await svc.issue_code(
        session,
        principal.tenant_id,
        customer,
        invited_at=now,
        source="api",
        cause_id=derived_event_id("api", principal.tenant_id, customer),
        send_invite=bool(body and body.send_invite),
    )
    response.status_code = 201 if created else 200
    return await _code_out(session, svc, code)


class AdvocateReferralsOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "advocate_customer_id": "cus_42",
                    "code": _CODE_EXAMPLE,
                    "referrals": [_REFERRAL_EXAMPLE],
                }
            ]
        }
    )
    advocate_customer_id: str
    code: CodeOut | None
    referrals: list[ReferralOut]


@router.get(
    "/advocates/{customer}/referrals",
    summary="An advocate's code and referrals",
    responses=openapi.error(
        404,
        "The customer has no referral code yet",
        "not_found",
        "this customer has no referral code",
        field="customer",
    ),
)
async def advocate_referrals(
    customer: CustomerId, principal: Reader, session: Session, svc: Svc
) -> AdvocateReferralsOut:
    t = principal.tenant_id
    code = await svc.code_of_advocate(session, t, customer)
    rows = await store.referrals_of_advocate(session, t, customer)
    if code is None and not rows:
        raise NotFound("this customer has no referral code", field="customer")
    return AdvocateReferralsOut(
        advocate_customer_id=customer,
        code=await _code_out(session, svc, code) if code else None,
        referrals=[_referral_out(r) for r in rows],
    )


class AttributionIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"order_id": "pos:1207", "code": "ADA7K2Q"}]},
    )
    order_id: Annotated[str, StringConstraints(min_length=1, max_length=100), NoControls]
    code: CodeParam


@router.post(
    "/attributions",
    status_code=201,
    summary="Attribute a known order to a code",
    responses=openapi.errors(
        openapi.error(
            404,
            "No such code, or no order.placed seen for the order yet",
            "not_found",
            "no order.placed seen for this order yet",
            field="order_id",
        ),
        openapi.error(
            409,
            "The order is already attributed",
            "conflict",
            "this order is already attributed",
            field="order_id",
        ),
    ),
)
async def attribute(
    body: AttributionIn, principal: Writer, session: Session, svc: Svc
) -> ReferralOut:
    """For orders that arrived without the code (a phone order, a forgotten code). The
    same checks apply as for an order carrying the code, including the window."""
    t = principal.tenant_id
    code = await svc.find_code(session, t, body.code)
    if code is None:
        raise NotFound("no such referral code", field="code")
    order = await store.order_of_tenant(session, t, body.order_id)
    if order is None:
        raise NotFound("no order.placed seen for this order yet", field="order_id")
    if await svc.referral_for_order(session, t, body.order_id) is not None:
        raise Conflict("this order is already attributed", field="order_id")
    result = await svc.attribute(session, code, order, via="api", platform_orders_count=None)
    return _referral_out(result.referral)


class ReviewIn(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"decision": "approve", "note": "same household, fine"}]},
    )
    decision: Literal["approve", "reject"]
    note: Annotated[str, StringConstraints(max_length=1000), NoControlsMultiline] | None = None


@router.post(
    "/referrals/{referral_id}/review",
    summary="Approve or reject a held referral",
    responses=openapi.errors(
        openapi.error(
            404, "No such referral", "not_found", "no such referral", field="referral_id"
        ),
        openapi.error(
            409,
            "The referral is not held for review",
            "conflict",
            "only a held referral can be reviewed; this one is confirmed",
        ),
    ),
)
async def review(
    referral_id: Annotated[str, StringConstraints(min_length=1, max_length=100), NoControls],
    body: ReviewIn,
    principal: Writer,
    session: Session,
    svc: Svc,
) -> ReferralOut:
    referral = await store.locked_referral(session, principal.tenant_id, referral_id)
    if referral is None:
        raise NotFound("no such referral", field="referral_id")
    if referral.state != "held":
        raise Conflict(f"only a held referral can be reviewed; this one is {referral.state}")
    await svc.review(session, referral, body.decision == "approve", body.note)
    return _referral_out(referral)


def _iso_currency(code: str) -> str:
    if not is_iso_currency(code):
        raise ValueError(f"{code} is not an ISO 4217 currency code")
    return code


REWARD_FIELD = "referee_reward"


class RefereeRewardIn(BaseModel):
    """The friend's reward: ``percentage`` names ``percent``; ``fixed_amount`` names
    ``amount`` (minor units: 500 is 5.00 EUR) and ``currency``. Set as a whole."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"kind": "percentage", "percent": 15, "valid_days": 45},
                {"kind": "fixed_amount", "amount": 500, "currency": "EUR", "valid_days": 30},
            ]
        },
    )
    kind: domain.RewardKind
    percent: int | None = Field(
        default=None, ge=domain.PERCENT_OFF[0], le=domain.PERCENT_OFF[1], strict=True
    )
    amount: int | None = Field(
        default=None, ge=1, le=MAX_MINOR_UNITS, strict=True, description="Minor units"
    )
    currency: (
        Annotated[str, StringConstraints(pattern=r"^[A-Z]{3}$"), AfterValidator(_iso_currency)]
        | None
    ) = None
    valid_days: int | None = Field(
        default=None,
        ge=domain.REWARD_VALID_DAYS[0],
        le=domain.REWARD_VALID_DAYS[1],
        strict=True,
        description="Days the code is usable; left out: the service default",
    )

    def to_domain(self) -> domain.RefereeReward:
        """The reward, or a 422 naming the value its kind misses or must not have (a
        fixed amount without its currency would fail every discount request later)."""
        needs = {"percentage": ("percent",), "fixed_amount": ("amount", "currency")}[self.kind]
        for name in ("percent", "amount", "currency"):
            given = getattr(self, name) is not None
            if given != (name in needs):
                verb = "needs" if name in needs else "does not take"
                field = f"{REWARD_FIELD}.{name}"
                raise Unprocessable(f"{field}: a {self.kind} reward {verb} {name}", field=field)
        return domain.RefereeReward(
            kind=self.kind,
            percent=self.percent,
            amount=self.amount,
            currency=self.currency,
            valid_days=self.valid_days or domain.DEFAULT_REFEREE_REWARD.valid_days,
        )


class RefereeRewardOut(BaseModel):
    kind: domain.RewardKind
    percent: int | None
    amount: int | None = Field(description="fixed_amount: minor units of currency")
    currency: str | None
    valid_days: int
    label: str = Field(description='As the discount\'s title says it: "15% off"')


class SettingsIn(BaseModel):
    """Fields left out keep their current value; ``null`` returns a field to the service
    default. Day counts must be JSON integers: "30" or 30.5 is a mistake, not a 30."""

    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {"share_base_url": "https://shop.example.com/", "return_window_days": 30},
                {"referee_reward": {"kind": "percentage", "percent": 15, "valid_days": 45}},
                {"referee_reward": None},
            ]
        },
    )
    share_base_url: (
        Annotated[str, StringConstraints(pattern=r"^https?://[^\s]+$", max_length=500), NoControls]
        | None
    ) = None
    return_window_days: int | None = Field(
        default=None,
        ge=domain.RETURN_WINDOW_DAYS[0],
        le=domain.RETURN_WINDOW_DAYS[1],
        strict=True,
        description="Days after fulfilment before a conversion is confirmed; 0: at once",
    )
    attribution_window_days: int | None = Field(
        default=None,
        ge=domain.ATTRIBUTION_WINDOW_DAYS[0],
        le=domain.ATTRIBUTION_WINDOW_DAYS[1],
        strict=True,
        description="Days after the invitation during which an order counts",
    )
    referee_reward: RefereeRewardIn | None = Field(
        default=None,
        description="The friend's discount for a converting order; null: 10% off, 30 days",
    )


class SettingsOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "share_base_url": "https://shop.example.com/",
                    "return_window_days": 30,
                    "attribution_window_days": 90,
                    "referee_reward": {
                        "kind": "fixed_amount",
                        "percent": None,
                        "amount": 500,
                        "currency": "EUR",
                        "valid_days": 30,
                        "label": "5.00 EUR off",
                    },
                    "sources": {
                        "share_base_url": "tenant",
                        "return_window_days": "tenant",
                        "attribution_window_days": "default",
                        "referee_reward": "tenant",
                    },
                }
            ]
        }
    )
    share_base_url: str
    return_window_days: int
    attribution_window_days: int
    referee_reward: RefereeRewardOut
    sources: dict[str, domain.Source] = Field(
        description='Per field: "tenant" (set by the tenant) or "default" (the service\'s)'
    )


def _settings_out(policy: domain.Policy) -> SettingsOut:
    reward = policy.referee_reward
    return SettingsOut(
        share_base_url=policy.share_base_url,
        return_window_days=policy.return_window_days,
        attribution_window_days=policy.attribution_window_days,
        referee_reward=RefereeRewardOut(
            kind=reward.kind,
            percent=reward.percent,
            amount=reward.amount,
            currency=reward.currency,
            valid_days=reward.valid_days,
            label=reward.label(),
        ),
        sources=dict(policy.sources),
    )


@router.get("/settings", summary="The tenant's effective referral settings")
async def get_settings(principal: Reader, session: Session, svc: Svc) -> SettingsOut:
    return _settings_out(await svc.policy(session, principal.tenant_id))


@router.put(
    "/settings", summary="Set the tenant's share URL (its shop), windows and referee reward"
)
async def put_settings(
    body: SettingsIn, principal: Writer, session: Session, svc: Svc
) -> SettingsOut:
    """A window applies to due times and attribution decisions made from now on: a
    pending conversion keeps the confirmation time computed when its order shipped. A
    referee reward applies to conversions from now on: a code already requested keeps
    the value it was requested with."""
    changes = body.model_dump(include=body.model_fields_set - {REWARD_FIELD})
    if REWARD_FIELD in body.model_fields_set:
        # Checked before anything is written: a refused reward changes nothing else.
        reward = body.referee_reward.to_domain() if body.referee_reward else None
        changes.update(reward_columns(reward))
        if body.referee_reward is not None and body.referee_reward.valid_days is None:
            # Not chosen: stored null, so it follows a later change of the default.
            changes["referee_valid_days"] = None
    return _settings_out(await svc.update_settings(session, principal.tenant_id, changes))


class MetricsOut(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "invited": 40,
                    "advocates_converting": 9,
                    "conversions": 12,
                    "pending": 3,
                    "held": 1,
                    "rejected": 2,
                    "rejection_reasons": {"self_referral": 2},
                    "referral_rate": 0.225,
                    "revenue": {"USD": 106800},
                    "pending_revenue": {"USD": 26700},
                }
            ]
        }
    )
    invited: int = Field(description="Advocates with a code")
    advocates_converting: int = Field(description="Advocates with at least one confirmed one")
    conversions: int = Field(description="Confirmed conversions")
    pending: int
    held: int
    rejected: int
    rejection_reasons: dict[str, int]
    referral_rate: float = Field(description="advocates_converting / invited")
    revenue: dict[str, int] = Field(description="Confirmed referred orders, minor units")
    pending_revenue: dict[str, int] = Field(description="Pending and held, minor units")


@router.get("/metrics", summary="Program metrics")
async def metrics(principal: Reader, session: Session) -> MetricsOut:
    counts = await store.program_counts(session, principal.tenant_id)
    return MetricsOut(
        invited=counts.invited,
        advocates_converting=counts.advocates_converting,
        conversions=counts.by_state.get("confirmed", 0),
        pending=counts.by_state.get("pending", 0),
        held=counts.by_state.get("held", 0),
        rejected=counts.by_state.get("rejected", 0),
        rejection_reasons={str(k): v for k, v in counts.rejection_reasons.items()},
        referral_rate=domain.referral_rate(counts.advocates_converting, counts.invited),
        revenue=counts.revenue,
        pending_revenue=counts.pending_revenue,
    )


# --- the share link ---------------------------------------------------------------------

share_links = service_router(tags=["share links"])

_SHARE_PAGE = (
    "<!doctype html><html lang=en><meta charset=utf-8>"
    "<meta name=viewport content='width=device-width,initial-scale=1'>"
    "<meta name=robots content=noindex><title>{title}</title>"
    "<body style='font-family:sans-serif;max-width:32rem;margin:3rem auto;padding:0 1rem'>"
    "<h1 style='font-size:1.4rem'>{title}</h1><p>{text}</p></body></html>"
)
# Nothing to cache (a tenant may set its shop URL later) and nothing to pass on.
_SHARE_HEADERS = {"Cache-Control": "no-store", "Referrer-Policy": "no-referrer"}


@share_links.get(
    "/r/{tenant_id}",
    summary="Follow an advocate's share link: on to the shop, with the code",
    response_class=RedirectResponse,
    status_code=302,
    responses=openapi.errors(
        {
            302: {
                "description": "To the shop, with ?ref=CODE",
                "headers": {
                    "Location": {
                        "description": "https://shop.example.com/?ref=ADA7K2Q",
                        "schema": {"type": "string"},
                    }
                },
            }
        },
        openapi.html(
            200,
            "No shop URL is known: a page showing the code",
            "<!doctype html>...<h1>You were invited</h1>",
        ),
        openapi.html(
            404,
            "No such code (also: a path that matches no route, JSON)",
            "<!doctype html>...<h1>This invitation has ended</h1>",
        ),
    ),
)
async def follow_share_link(tenant_id: Id, ref: CodeParam, session: Session, svc: Svc) -> Response:
    """The default share link (``PUBLIC_BASE_URL/r/{tenant}?ref=CODE``, when the tenant
    set no share URL of its own). The friend goes on to the shop the tenant set since,
    or to REFERRALS_SHOP_URL, with the code as ``?ref=``, the landing-site parameter
    ingest reads; without a known shop, a page shows the code to use at checkout."""
    code = await svc.find_code(session, tenant_id, ref)
    if code is None:
        page = _SHARE_PAGE.format(
            title="This invitation has ended",
            text="The referral code in this link is no longer valid.",
        )
        return HTMLResponse(page, status_code=404, headers=_SHARE_HEADERS)
    landing = await svc.landing_url(session, tenant_id)
    if landing is not None:
        return RedirectResponse(
            domain.share_url(landing, code.code), status_code=302, headers=_SHARE_HEADERS
        )
    page = _SHARE_PAGE.format(
        title="You were invited",
        text=f"Use the code <strong>{html.escape(code.code)}</strong> at checkout.",
    )
    return HTMLResponse(page, headers=_SHARE_HEADERS)
