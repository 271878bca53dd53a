"""Every SQL statement of feedback's use cases and routes (the metrics queries live in
:mod:`.metrics_store`, support's tickets and CSAT in :mod:`.support_store`, the export's
in :mod:`afterglow.kit.export`).

Each function runs in the caller's transaction and never commits (the entrypoint does:
the HTTP session dependency or the consumer's batch, so the outbox and inbox stay
atomic with these writes). Batch paths write in sets: one statement per table for a
whole batch, the multi-row inserts built (and so compiled and prepared) once."""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import Any

from sqlalchemy import Text, and_, any_, bindparam, case, func, or_, select, update
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.events.batch import as_columns, key_params, unnest_insert, unnest_keys
from afterglow.feedback.models import (
    Order,
    OrderItem,
    ReferralLink,
    Response,
    Review,
    SupportTicket,
    Survey,
    SurveyReminder,
    TenantSetting,
)

SURVEY_COLUMNS = (
    "id",
    "tenant_id",
    "customer_id",
    "request_id",
    "kind",
    "order_id",
    "ticket_id",
    "sent_at",
    "expires_at",
)
# One survey per request id, whatever the journey repeats under a new event id; a
# repeat within the same statement keeps the first row.
NEW_SURVEYS = (
    unnest_insert(Survey.__table__, SURVEY_COLUMNS)
    .on_conflict_do_nothing(constraint="uq_surveys_tenant_request")
    .returning(Survey.id)
)
ORDER_COLUMNS = ("tenant_id", "order_id", "customer_id", "placed_at")
NEW_ORDERS = (
    unnest_insert(Order.__table__, ORDER_COLUMNS)
    .on_conflict_do_nothing()
    .returning(Order.tenant_id, Order.order_id)
)
ITEM_COLUMNS = ("tenant_id", "order_id", "line_no", "sku", "product_id", "title")
NEW_ITEMS = unnest_insert(OrderItem.__table__, ITEM_COLUMNS)

# The customer id an erased row carries (export.py refuses to export it).
ERASED = "erased"


# --- tenant settings ------------------------------------------------------------------


async def tenant_setting(session: AsyncSession, tenant_id: str) -> TenantSetting | None:
    return await session.get(TenantSetting, tenant_id)


async def tenant_settings(session: AsyncSession, tenant_ids: set[str]) -> dict[str, TenantSetting]:
    """The settings rows of several tenants (those that have one) with one query."""
    rows = await session.execute(_TENANT_SETTINGS, {"tenants": sorted(tenant_ids)})
    return {r.tenant_id: r for r in rows.scalars()}


# The tenants as an array: one statement text whatever their number (an IN list is a
# new statement, prepared again, for each size).
_TENANT_SETTINGS = select(TenantSetting).where(
    TenantSetting.tenant_id == any_(bindparam("tenants", type_=ARRAY(Text)))
)


async def save_tenant_setting(
    session: AsyncSession,
    tenant_id: str,
    name: str | None,
    brand_color: str | None,
    manual_moderation: bool,
    now: datetime,
) -> None:
    row = await session.get(TenantSetting, tenant_id)
    if row is None:
        row = TenantSetting(tenant_id=tenant_id)
        session.add(row)
    row.name = name
    row.brand_color = brand_color
    row.manual_moderation = manual_moderation
    row.updated_at = now


# --- surveys --------------------------------------------------------------------------


async def insert_survey(session: AsyncSession, survey: Survey) -> bool:
    """Insert unless a survey of the same request id exists; True when inserted."""
    inserted = (
        await session.execute(
            pg_insert(Survey)
            .values(
                id=survey.id,
                tenant_id=survey.tenant_id,
                customer_id=survey.customer_id,
                request_id=survey.request_id,
                kind=survey.kind,
                order_id=survey.order_id,
                ticket_id=survey.ticket_id,
                sent_at=survey.sent_at,
                expires_at=survey.expires_at,
            )
            .on_conflict_do_nothing(constraint="uq_surveys_tenant_request")
            .returning(Survey.id)
        )
    ).scalar_one_or_none()
    return inserted is not None


async def insert_surveys(session: AsyncSession, surveys: Sequence[Survey]) -> set[str]:
    """:func:`insert_survey` of many in one statement; the ids of those inserted."""
    rows = [{c: getattr(sv, c) for c in SURVEY_COLUMNS} for sv in surveys]
    result = await session.execute(NEW_SURVEYS, as_columns(rows, SURVEY_COLUMNS))
    return set(result.scalars())


async def lock_survey_of_request(
    session: AsyncSession, tenant_id: str, request_id: str
) -> Survey | None:
    return (
        await session.execute(
            select(Survey)
            .where(Survey.tenant_id == tenant_id, Survey.request_id == request_id)
            .with_for_update()
        )
    ).scalar_one_or_none()


async def survey(
    session: AsyncSession, tenant_id: str, survey_id: str, *, lock: bool
) -> Survey | None:
    stmt = select(Survey).where(Survey.tenant_id == tenant_id, Survey.id == survey_id)
    if lock:
        stmt = stmt.with_for_update()
    return (await session.execute(stmt)).scalar_one_or_none()


async def insert_reminder(
    session: AsyncSession, tenant_id: str, request_id: str, survey_id: str, now: datetime
) -> bool:
    """Record a reminder request; False when this request id was recorded before."""
    first = (
        await session.execute(
            pg_insert(SurveyReminder)
            .values(
                tenant_id=tenant_id,
                request_id=request_id,
                survey_id=survey_id,
                requested_at=now,
            )
            .on_conflict_do_nothing()
            .returning(SurveyReminder.request_id)
        )
    ).scalar_one_or_none()
    return first is not None


# --- answers --------------------------------------------------------------------------


async def current_response(session: AsyncSession, survey: Survey) -> Response | None:
    return (
        await session.execute(
            select(Response).where(
                Response.tenant_id == survey.tenant_id,
                Response.survey_id == survey.id,
                Response.superseded.is_(False),
            )
        )
    ).scalar_one_or_none()


async def supersede(session: AsyncSession, previous: Response) -> None:
    # Written before the new answer is added, so that at no point in the transaction
    # does a survey have two current (not superseded) answers.
    previous.superseded = True
    await session.flush()


async def add(session: AsyncSession, row: Response | Review) -> None:
    """Insert a new row now (its id, and a unique index's verdict, are known after)."""
    session.add(row)
    await session.flush()


async def insert_external_response(
    session: AsyncSession,
    tenant_id: str,
    *,
    external_id: str,
    customer_id: str,
    kind: str,
    score: int,
    comment: str | None,
    order_id: str | None,
    responded_at: datetime,
) -> int | None:
    """The new answer's id; None when this external id was recorded before."""
    return (
        await session.execute(
            pg_insert(Response)
            .values(
                tenant_id=tenant_id,
                customer_id=customer_id,
                kind=kind,
                score=score,
                comment=comment,
                order_id=order_id,
                source="api",
                external_id=external_id,
                responded_at=responded_at,
            )
            .on_conflict_do_nothing(
                index_elements=["tenant_id", "external_id"],
                index_where=Response.external_id.isnot(None),
            )
            .returning(Response.id)
        )
    ).scalar_one_or_none()


async def external_response(
    session: AsyncSession, tenant_id: str, external_id: str
) -> tuple[int, str, int]:
    """The stored answer of an external id: (response id, kind, score)."""
    row = (
        await session.execute(
            select(Response.id, Response.kind, Response.score).where(
                Response.tenant_id == tenant_id, Response.external_id == external_id
            )
        )
    ).one()
    return row.id, row.kind, row.score


# --- reviews --------------------------------------------------------------------------


async def has_review_of_order(
    session: AsyncSession, tenant_id: str, customer_id: str, order_id: str
) -> bool:
    found = await session.scalar(
        select(Review.id)
        .where(
            Review.tenant_id == tenant_id,
            Review.customer_id == customer_id,
            Review.order_id == order_id,
        )
        .limit(1)
    )
    return found is not None


_review_keys = unnest_keys("rk", tenant_id=Text, customer_id=Text, order_id=Text)
_REVIEWED_ORDERS = (
    select(Review.tenant_id, Review.customer_id, Review.order_id)
    .join(
        _review_keys,
        and_(
            Review.tenant_id == _review_keys.c.tenant_id,
            Review.customer_id == _review_keys.c.customer_id,
            Review.order_id == _review_keys.c.order_id,
        ),
    )
    .distinct()
)


async def reviewed_orders(
    session: AsyncSession, keys: set[tuple[str, str, str]]
) -> set[tuple[str, str, str]]:
    """:func:`has_review_of_order` of many (tenant, customer, order id) with one query:
    those the customer reviewed."""
    if not keys:
        return set()
    rows = await session.execute(
        _REVIEWED_ORDERS,
        key_params("rk", ("tenant_id", "customer_id", "order_id"), sorted(keys)),
    )
    return {(r.tenant_id, r.customer_id, r.order_id) for r in rows}


async def review_by_dedupe_key(
    session: AsyncSession, tenant_id: str, dedupe_key: str
) -> Review | None:
    return (
        await session.execute(
            select(Review).where(Review.tenant_id == tenant_id, Review.dedupe_key == dedupe_key)
        )
    ).scalar_one_or_none()


async def review(session: AsyncSession, tenant_id: str, review_id: str) -> Review | None:
    return (
        await session.execute(
            select(Review).where(Review.tenant_id == tenant_id, Review.id == review_id)
        )
    ).scalar_one_or_none()


async def lock_review(session: AsyncSession, tenant_id: str, review_id: str) -> Review | None:
    return (
        await session.execute(
            select(Review)
            .where(Review.tenant_id == tenant_id, Review.id == review_id)
            .with_for_update()
        )
    ).scalar_one_or_none()


async def flush(session: AsyncSession) -> None:
    await session.flush()


async def reviews_in_status(
    session: AsyncSession, tenant_id: str, status: str, limit: int
) -> list[Review]:
    """The newest ``limit`` reviews of a tenant in one moderation state."""
    rows = await session.execute(
        select(Review)
        .where(Review.tenant_id == tenant_id, Review.status == status)
        .order_by(Review.created_at.desc())
        .limit(limit)
    )
    return list(rows.scalars())


def _published_of(tenant_id: str, product: str) -> tuple[Any, ...]:
    # A review carries a SKU or a platform product id (or both): a shop asks by either.
    return (
        Review.tenant_id == tenant_id,
        or_(Review.sku == product, Review.product_id == product),
        Review.status == "published",
    )


async def published_rating_counts(
    session: AsyncSession, tenant_id: str, product: str
) -> dict[int, int]:
    """Published reviews of a product per rating (ratings with none absent)."""
    counts = await session.execute(
        select(Review.rating, func.count())
        .where(*_published_of(tenant_id, product))
        .group_by(Review.rating)
    )
    return {r: n for r, n in counts.all()}


async def published_reviews(
    session: AsyncSession, tenant_id: str, product: str, limit: int, offset: int
) -> list[Review]:
    """A page of a product's published reviews, most recently published first."""
    rows = await session.execute(
        select(Review)
        .where(*_published_of(tenant_id, product))
        .order_by(Review.published_at.desc(), Review.id)
        .limit(limit)
        .offset(offset)
    )
    return list(rows.scalars())


async def reviewed_keys(session: AsyncSession, tenant_id: str, order_id: str) -> set[str]:
    """The dedupe keys of the order's reviews written on the review page."""
    rows = await session.execute(
        select(Review.dedupe_key).where(
            Review.tenant_id == tenant_id,
            Review.order_id == order_id,
            Review.dedupe_key.startswith(f"page:{order_id}:", autoescape=True),
        )
    )
    return {r for r in rows.scalars() if r}


# --- orders and referral links --------------------------------------------------------


async def order(session: AsyncSession, tenant_id: str, order_id: str) -> Order | None:
    return await session.get(Order, (tenant_id, order_id))


async def items_of_order(session: AsyncSession, tenant_id: str, order_id: str) -> list[OrderItem]:
    rows = await session.execute(
        select(OrderItem)
        .where(OrderItem.tenant_id == tenant_id, OrderItem.order_id == order_id)
        .order_by(OrderItem.line_no)
    )
    return list(rows.scalars())


async def insert_order(
    session: AsyncSession, tenant_id: str, order_id: str, customer_id: str, placed_at: datetime
) -> bool:
    """Insert unless the order was seen before; True when inserted."""
    inserted = (
        await session.execute(
            pg_insert(Order)
            .values(
                tenant_id=tenant_id,
                order_id=order_id,
                customer_id=customer_id,
                placed_at=placed_at,
            )
            .on_conflict_do_nothing()
            .returning(Order.order_id)
        )
    ).scalar_one_or_none()
    return inserted is not None


async def insert_order_items(
    session: AsyncSession, tenant_id: str, order_id: str, items: list[dict[str, str | None]]
) -> None:
    await session.execute(
        pg_insert(OrderItem).values(
            [
                {"tenant_id": tenant_id, "order_id": order_id, "line_no": i, **item}
                for i, item in enumerate(items)
            ]
        )
    )


async def insert_orders(session: AsyncSession, rows: list[dict[str, Any]]) -> set[tuple[str, str]]:
    """Orders (``ORDER_COLUMNS`` dicts) in one statement; (tenant, order id) of the new."""
    result = await session.execute(NEW_ORDERS, as_columns(rows, ORDER_COLUMNS))
    return {(r.tenant_id, r.order_id) for r in result}


async def insert_items(session: AsyncSession, items: list[dict[str, Any]]) -> None:
    """Order lines (``ITEM_COLUMNS`` dicts) in one statement."""
    await session.execute(NEW_ITEMS, as_columns(items, ITEM_COLUMNS))


async def referral_link(
    session: AsyncSession, tenant_id: str, customer_id: str
) -> ReferralLink | None:
    return await session.get(ReferralLink, (tenant_id, customer_id))


async def save_referral_link(
    session: AsyncSession, tenant_id: str, customer_id: str, code: str, url: str, at: datetime
) -> None:
    stmt = pg_insert(ReferralLink).values(
        tenant_id=tenant_id, customer_id=customer_id, code=code, share_url=url, issued_at=at
    )
    await session.execute(
        stmt.on_conflict_do_update(
            index_elements=["tenant_id", "customer_id"],
            set_={"code": code, "share_url": url, "issued_at": at},
        )
    )


# --- erasure --------------------------------------------------------------------------


async def erase(session: AsyncSession, tenant_id: str, customer_id: str | None) -> None:
    """See :func:`afterglow.feedback.service.erase`: one statement per table."""

    def who(model: Any) -> list[Any]:
        conds = [model.tenant_id == tenant_id]
        if customer_id is not None:
            conds.append(model.customer_id == customer_id)
        return conds

    await session.execute(
        update(Response).where(*who(Response)).values(comment=None, customer_id=ERASED)
    )
    await session.execute(update(Survey).where(*who(Survey)).values(customer_id=ERASED))
    await session.execute(
        update(Review).where(*who(Review)).values(title=None, body=None, customer_id=ERASED)
    )
    await session.execute(update(Order).where(*who(Order)).values(customer_id=ERASED))
    await session.execute(ReferralLink.__table__.delete().where(*who(ReferralLink)))
    # A ticket's times stay (support metrics); its CSAT is no longer asked of anyone.
    await session.execute(
        update(SupportTicket)
        .where(*who(SupportTicket))
        .values(
            customer_id=ERASED,
            csat_status=case(
                (SupportTicket.csat_status == "due", "skipped"), else_=SupportTicket.csat_status
            ),
            csat_reason=case(
                (SupportTicket.csat_status == "due", "the customer was erased"),
                else_=SupportTicket.csat_reason,
            ),
        )
    )
