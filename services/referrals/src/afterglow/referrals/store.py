"""The SQL of the referrals service's use cases (service.py) and routes (api.py,
review_queue.py); the period metrics keep their GROUP BYs in metrics.py and the data
export reads through afterglow.kit.export. Nothing here commits: each function runs in
the caller's transaction, and the locks it takes are held until that transaction ends."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from types import SimpleNamespace
from typing import Any
from uuid import uuid4

from sqlalchemy import (
    ColumnElement,
    Row,
    Select,
    Text,
    and_,
    any_,
    bindparam,
    column,
    distinct,
    func,
    literal_column,
    or_,
    select,
    true,
    union,
    update,
    values,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession
from sqlalchemy.orm import InstrumentedAttribute

from afterglow.events.batch import (
    as_columns,
    key_params,
    locked_by_keys,
    unnest_insert,
    unnest_keys,
)
from afterglow.events.catalog import OrderPlaced
from afterglow.events.privacy import pseudonym
from afterglow.referrals import domain
from afterglow.referrals.models import Code, Order, Referral, TenantSettings

# A conversion that counts against the advocate's cap and the code's velocity.
LIVE_STATES = ("pending", "held", "confirmed")
# A conversion not decided yet: a refund or cancellation still rejects it.
OPEN_STATES = ("pending", "held")

# The statements a batch of events runs take their keys as arrays (batch.unnest_keys):
# one statement text for any batch size, prepared and planned once.
_codes = Code.__table__
_orders = Order.__table__
_referrals = Referral.__table__
_code_keys = unnest_keys("ck", tenant_id=Text, code=Text)
_advocate_keys = unnest_keys("ak", tenant_id=Text, customer_id=Text)
_order_keys = unnest_keys("ok", tenant_id=Text, order_id=Text)
_people_keys = unnest_keys("pk", tenant_id=Text, customer_id=Text)
_email_keys = unnest_keys("ek", tenant_id=Text, email_hash=Text)


def _per_key(keys: Any, query: Select[Any]) -> Select[Any]:
    """``query``, whose WHERE names the columns of ``keys`` (an unnest_keys), run once per
    key: ``FROM keys JOIN LATERAL (query OFFSET 0) ON true``. A plain join of the keys
    leaves the plan to the table's statistics, and a table that grew since it was last
    analyzed (a young shop, a burst) looks nearly empty: PostgreSQL then scanned its
    rows once and compared each with every key (the live conversions of a batch of 500
    orders took 70-220 ms, 600,000 comparisons, instead of 12 ms). Run per key, each
    is an index lookup whatever the statistics say; OFFSET 0 keeps the planner from
    flattening the subquery back into that join."""
    per_key = query.offset(literal_column("0")).lateral()
    return select(per_key).select_from(keys).join(per_key, true())


def _is_customer(
    col: InstrumentedAttribute[str], tenant_id: str, customer: str
) -> ColumnElement[bool]:
    """The customer's rows, including those pseudonymized by an earlier erasure: erasing
    someone must not make them a "new customer" again, nor reset an advocate's cap."""
    return col.in_((customer, pseudonym(tenant_id, customer)))


# --- tenant settings --------------------------------------------------------------------


async def tenant_settings(session: AsyncSession, tenant_id: str) -> TenantSettings | None:
    return await session.get(TenantSettings, tenant_id)


async def upsert_tenant_settings(
    session: AsyncSession, tenant_id: str, changes: dict[str, Any], now: datetime
) -> TenantSettings | None:
    """Set the named columns, leave the others. An upsert, so two first writes of one
    tenant cannot collide on its row."""
    stmt = pg_insert(TenantSettings).values(tenant_id=tenant_id, updated_at=now, **changes)
    return await session.scalar(
        stmt.on_conflict_do_update(
            index_elements=["tenant_id"],
            set_={name: stmt.excluded[name] for name in [*changes, "updated_at"]},
        )
        .returning(TenantSettings)
        .execution_options(populate_existing=True)
    )


# --- codes ------------------------------------------------------------------------------


async def lock_codes(
    session: AsyncSession, codes: set[tuple[str, str]], advocates: set[tuple[str, str]]
) -> dict[tuple[str, str], Row[Any]]:
    """Lock, with one statement and in one order (tenant, then code id), the codes named
    by (tenant, normalized code) and those of the advocates (tenant, customer). Returns
    those that still attribute, as active_codes_named does, read under the lock."""
    if not codes and not advocates:
        return {}
    rows = await session.execute(
        _LOCK_CODES,
        key_params("ck", ("tenant_id", "code"), sorted(codes))
        | key_params("ak", ("tenant_id", "customer_id"), sorted(advocates)),
    )
    return {(r.tenant_id, r.code): r for r in rows if r.deactivated_at is None}


_named = _codes.alias("named")
_of_advocate = _codes.alias("of_advocate")
_wanted_codes = union(
    select(_named.c.id).join(
        _code_keys,
        and_(_named.c.tenant_id == _code_keys.c.tenant_id, _named.c.code == _code_keys.c.code),
    ),
    select(_of_advocate.c.id).join(
        _advocate_keys,
        and_(
            _of_advocate.c.tenant_id == _advocate_keys.c.tenant_id,
            _of_advocate.c.advocate_customer_id == _advocate_keys.c.customer_id,
        ),
    ),
).subquery("wanted")
_LOCK_CODES = (
    select(_codes)
    .join(_wanted_codes, _codes.c.id == _wanted_codes.c.id)
    .order_by(_codes.c.tenant_id, _codes.c.id)
    .with_for_update(of=_codes)
)


async def lock_code(session: AsyncSession, code_id: str) -> None:
    await session.execute(select(Code.id).where(Code.id == code_id).with_for_update())


async def code_of_advocate(session: AsyncSession, tenant_id: str, advocate: str) -> Code | None:
    return (
        await session.scalars(
            select(Code).where(Code.tenant_id == tenant_id, Code.advocate_customer_id == advocate)
        )
    ).first()


async def active_code(session: AsyncSession, tenant_id: str, code: str) -> Code | None:
    """The code (normalized) if it still attributes."""
    return (
        await session.scalars(
            select(Code).where(
                Code.tenant_id == tenant_id, Code.code == code, Code.deactivated_at.is_(None)
            )
        )
    ).first()


async def first_active_code_among(
    session: AsyncSession, tenant_id: str, codes: set[str]
) -> Code | None:
    """Of the (normalized) codes, the first in code order that still attributes."""
    return (
        await session.scalars(
            select(Code)
            .where(
                Code.tenant_id == tenant_id,
                Code.code.in_(codes),
                Code.deactivated_at.is_(None),
            )
            .order_by(Code.code)
        )
    ).first()


async def active_codes_named(
    session: AsyncSession, codes: set[tuple[str, str]]
) -> dict[tuple[str, str], Row[Any]]:
    """Of the (tenant, normalized code) pairs, those that still attribute, as plain rows
    keyed by (tenant, code): the codes a batch of orders may carry, in one query."""
    if not codes:
        return {}
    rows = await session.execute(
        _ACTIVE_CODES_NAMED, key_params("ck", ("tenant_id", "code"), sorted(codes))
    )
    return {(r.tenant_id, r.code): r for r in rows}


_ACTIVE_CODES_NAMED = (
    select(_codes)
    .join(
        _code_keys,
        and_(_codes.c.tenant_id == _code_keys.c.tenant_id, _codes.c.code == _code_keys.c.code),
    )
    .where(_codes.c.deactivated_at.is_(None))
)


async def insert_code_if_free(
    session: AsyncSession,
    *,
    tenant_id: str,
    advocate: str,
    code: str,
    source: str,
    issued_at: datetime,
    invited_at: datetime,
    invitations: int,
) -> Code | None:
    """The new code; None when the advocate has one already or the code is taken (both
    are unique per tenant)."""
    inserted = await session.scalar(
        pg_insert(Code)
        .values(
            id=str(uuid4()),
            tenant_id=tenant_id,
            advocate_customer_id=advocate,
            code=code,
            source=source,
            issued_at=issued_at,
            invited_at=invited_at,
            invitations=invitations,
        )
        .on_conflict_do_nothing()
        .returning(Code.id)
    )
    if inserted is None:
        return None
    return await session.get_one(Code, inserted)


# --- orders -----------------------------------------------------------------------------


def order_row(tenant_id: str, customer_id: str, data: OrderPlaced) -> dict[str, Any]:
    """The columns an order.placed records for its order."""
    return {
        "tenant_id": tenant_id,
        "order_id": data.order_id,
        "customer_id": customer_id,
        "placed_at": data.placed_at,
        "total_amount": data.total.amount,
        "currency": data.total.currency,
        "email_hash": data.customer.email_hash or domain.contact_hash(data.customer.email),
        "phone_hash": data.customer.phone_hash or domain.contact_hash(data.customer.phone),
        "shipping_address_hash": data.shipping_address_hash,
    }


async def remember_order(
    session: AsyncSession, tenant_id: str, customer_id: str, data: OrderPlaced
) -> Order:
    """The order's row, recorded on its first order.placed (a repeat keeps the first)."""
    await session.execute(
        pg_insert(Order).values(**order_row(tenant_id, customer_id, data)).on_conflict_do_nothing()
    )
    return await session.get_one(Order, (tenant_id, data.order_id))


ORDER_COLUMNS = (
    "tenant_id",
    "order_id",
    "customer_id",
    "placed_at",
    "total_amount",
    "currency",
    "email_hash",
    "phone_hash",
    "shipping_address_hash",
)
# One statement for any number of orders, compiled once (batch.unnest_insert).
_INSERT_ORDERS = (
    unnest_insert(Order.__table__, ORDER_COLUMNS)
    .on_conflict_do_nothing()
    .returning(Order.__table__.c.tenant_id, Order.__table__.c.order_id)
)


async def remember_orders(
    session: AsyncSession, rows: Sequence[dict[str, Any]]
) -> set[tuple[str, str]]:
    """Record each order on its first order.placed, with one statement (a repeat keeps
    the first row; ``rows`` holds each (tenant, order) once, the first in event order).
    Returns the (tenant, order id) of the rows this call created."""
    if not rows:
        return set()
    result = await session.execute(_INSERT_ORDERS, as_columns(rows, ORDER_COLUMNS))
    return {(r.tenant_id, r.order_id) for r in result}


# The columns of a new order row that order_row does not set: their defaults.
_NEW_ORDER_DEFAULTS = {
    "erased_at": None,
    "fulfilled_at": None,
    "refunded_amount": 0,
    "refunded_at": None,
    "cancelled_at": None,
}


def created_order(row: dict[str, Any]) -> SimpleNamespace:
    """An order remember_orders just created (``row`` from order_row), as locked_orders
    would read it back."""
    return SimpleNamespace(**row, **_NEW_ORDER_DEFAULTS)


async def locked_orders(
    session: AsyncSession, keys: set[tuple[str, str]]
) -> dict[tuple[str, str], Row[Any]]:
    """The orders (tenant, order id), locked in (tenant, order id) order and read as
    plain rows (no ORM object to go stale). Each is the order of one customer of this
    partition: attribution locks its code first (lock_codes), then its order."""
    if not keys:
        return {}
    rows = await session.execute(_LOCK_ORDERS, _order_params(keys))
    return {(r.tenant_id, r.order_id): r for r in rows}


def _order_params(keys: set[tuple[str, str]]) -> dict[str, list[str]]:
    return key_params("ok", ("tenant_id", "order_id"), sorted(keys))


_LOCK_ORDERS = locked_by_keys(_orders, _order_keys)


async def orders_of_people(
    session: AsyncSession,
    customers: set[tuple[str, str]],
    emails: set[tuple[str, str]],
) -> Sequence[Row[Any, Any, Any, Any, Any, Any, Any]]:
    """Every order of the (tenant, customer id) pairs or of the (tenant, email hash)
    pairs, with its contact hashes and placing time, not locked: what the attribution
    checks of a batch read (earlier orders of a referee, an advocate's contacts). The
    caller lists pseudonyms itself when it wants them (:func:`_is_customer`)."""
    if not customers and not emails:
        return []
    return (
        await session.execute(
            _ORDERS_OF_PEOPLE,
            key_params("pk", ("tenant_id", "customer_id"), sorted(customers))
            | key_params("ek", ("tenant_id", "email_hash"), sorted(emails)),
        )
    ).all()


_ORDER_FACTS = (
    _orders.c.tenant_id,
    _orders.c.order_id,
    _orders.c.customer_id,
    _orders.c.email_hash,
    _orders.c.phone_hash,
    _orders.c.shipping_address_hash,
    _orders.c.placed_at,
)
# A union (not an OR of two key lists): each half is a lookup on its own index, and
# an order found both ways comes once.
_ORDERS_OF_PEOPLE = union(
    _per_key(
        _people_keys,
        select(*_ORDER_FACTS).where(
            _orders.c.tenant_id == _people_keys.c.tenant_id,
            _orders.c.customer_id == _people_keys.c.customer_id,
        ),
    ),
    _per_key(
        _email_keys,
        select(*_ORDER_FACTS).where(
            _orders.c.tenant_id == _email_keys.c.tenant_id,
            _orders.c.email_hash == _email_keys.c.email_hash,
        ),
    ),
)


async def order_of_tenant(session: AsyncSession, tenant_id: str, order_id: str) -> Order | None:
    return await session.get(Order, (tenant_id, order_id))


async def locked_order(session: AsyncSession, tenant_id: str, order_id: str) -> Order | None:
    """The order's row, locked and read afresh (another transaction may have changed it
    since this session loaded it)."""
    return (
        await session.scalars(
            select(Order)
            .where(Order.tenant_id == tenant_id, Order.order_id == order_id)
            .with_for_update()
            .execution_options(populate_existing=True)
        )
    ).first()


async def contact_hashes_of_customer(
    session: AsyncSession, tenant_id: str, customer: str
) -> Sequence[Row[Any, Any, Any]]:
    """(email_hash, phone_hash, shipping_address_hash) of each of the customer's orders."""
    return (
        await session.execute(
            select(Order.email_hash, Order.phone_hash, Order.shipping_address_hash).where(
                Order.tenant_id == tenant_id, Order.customer_id == customer
            )
        )
    ).all()


async def count_earlier_orders(
    session: AsyncSession,
    tenant_id: str,
    *,
    customer_id: str,
    email_hash: str | None,
    order_id: str,
    placed_at: datetime,
) -> int | None:
    """The person's orders placed before this one: theirs by customer id (pseudonymized
    ones too) or by email."""
    same_person = _is_customer(Order.customer_id, tenant_id, customer_id)
    if email_hash:
        same_person = or_(same_person, Order.email_hash == email_hash)
    return await session.scalar(
        select(func.count()).where(
            Order.tenant_id == tenant_id,
            same_person,
            Order.order_id != order_id,
            Order.placed_at < placed_at,
        )
    )


# --- referrals --------------------------------------------------------------------------


async def count_live_referrals_of_advocate(
    session: AsyncSession,
    tenant_id: str,
    advocate: str,
    *,
    other_than_order: str,
    placed_after: datetime,
    placed_until: datetime,
) -> int | None:
    return await session.scalar(
        select(func.count()).where(
            Referral.tenant_id == tenant_id,
            _is_customer(Referral.advocate_customer_id, tenant_id, advocate),
            Referral.state.in_(LIVE_STATES),
            Referral.order_id != other_than_order,
            Referral.placed_at > placed_after,
            Referral.placed_at <= placed_until,
        )
    )


async def count_live_referrals_of_code(
    session: AsyncSession,
    tenant_id: str,
    code_id: str,
    *,
    other_than_order: str,
    placed_after: datetime,
    placed_until: datetime,
) -> int | None:
    return await session.scalar(
        select(func.count()).where(
            Referral.tenant_id == tenant_id,
            Referral.code_id == code_id,
            Referral.state.in_(LIVE_STATES),
            Referral.order_id != other_than_order,
            Referral.placed_at > placed_after,
            Referral.placed_at <= placed_until,
        )
    )


async def insert_referral_if_new(session: AsyncSession, **columns: Any) -> Referral | None:
    """The new referral; None when the order was attributed meanwhile (one per order)."""
    inserted = await session.scalar(
        pg_insert(Referral).values(**columns).on_conflict_do_nothing().returning(Referral.id)
    )
    if inserted is None:
        return None
    return await session.get_one(Referral, inserted)


async def referred_orders(
    session: AsyncSession, keys: set[tuple[str, str]]
) -> set[tuple[str, str]]:
    """Of the (tenant, order id) pairs, those already attributed (one referral per order)."""
    if not keys:
        return set()
    rows = await session.execute(_REFERRED_ORDERS, _order_params(keys))
    return {(r.tenant_id, r.order_id) for r in rows}


_REFERRED_ORDERS = select(_referrals.c.tenant_id, _referrals.c.order_id).join(
    _order_keys,
    and_(
        _referrals.c.tenant_id == _order_keys.c.tenant_id,
        _referrals.c.order_id == _order_keys.c.order_id,
    ),
)


async def live_referrals_of(
    session: AsyncSession,
    advocates: set[tuple[str, str]],
    codes: set[tuple[str, str]],
    *,
    advocates_after: datetime,
    codes_after: datetime,
    placed_until: datetime,
) -> Sequence[Row[Any, Any, Any, Any, Any]]:
    """The live conversions of the (tenant, advocate) pairs placed in
    (``advocates_after``, ``placed_until``] and those of the codes placed in
    (``codes_after``, ``placed_until``]: what the cap and the velocity checks of a batch
    count, each over its own window, read once. ``codes``: (tenant, code id). The
    caller lists the advocates' pseudonyms itself."""
    if not advocates and not codes:
        return []
    return (
        await session.execute(
            _LIVE_REFERRALS,
            {
                "advocates_after": advocates_after,
                "codes_after": codes_after,
                "placed_until": placed_until,
            }
            | key_params("ak", ("tenant_id", "customer_id"), sorted(advocates))
            | key_params("ck", ("tenant_id", "code"), sorted(codes)),
        )
    ).all()


def _live_referrals_of_key(keys: Any, same_key: ColumnElement[bool], after: str) -> Any:
    """The live conversions of each of ``keys`` (``same_key``: a referral's columns are
    the key's) placed in (``after``, placed_until]: one range of ix_referrals_advocate
    or ix_referrals_code per key."""
    r = _referrals
    return _per_key(
        keys,
        select(
            r.c.tenant_id, r.c.order_id, r.c.advocate_customer_id, r.c.code_id, r.c.placed_at
        ).where(
            same_key,
            r.c.state.in_(LIVE_STATES),
            r.c.placed_at > bindparam(after),
            r.c.placed_at <= bindparam("placed_until"),
        ),
    )


# A union, as _ORDERS_OF_PEOPLE; a conversion found both ways comes once. The codes'
# keys are (tenant, code id) here.
_LIVE_REFERRALS = union(
    _live_referrals_of_key(
        _advocate_keys,
        and_(
            _referrals.c.tenant_id == _advocate_keys.c.tenant_id,
            _referrals.c.advocate_customer_id == _advocate_keys.c.customer_id,
        ),
        "advocates_after",
    ),
    _live_referrals_of_key(
        _code_keys,
        and_(
            _referrals.c.tenant_id == _code_keys.c.tenant_id,
            _referrals.c.code_id == _code_keys.c.code,
        ),
        "codes_after",
    ),
)


REFERRAL_COLUMNS = (
    "id",
    "tenant_id",
    "code_id",
    "code",
    "advocate_customer_id",
    "referee_customer_id",
    "order_id",
    "order_total",
    "currency",
    "placed_at",
    "via",
    "state",
    "reason",
    "detail",
    "referee_reward_code",
    "attributed_at",
    "decided_at",
    "fulfilled_at",
    "confirm_due_at",
    "refunded_amount",
)
_INSERT_REFERRALS = (
    unnest_insert(Referral.__table__, REFERRAL_COLUMNS)
    .on_conflict_do_nothing()
    .returning(Referral.__table__.c.id)
)


async def insert_referrals_if_new(
    session: AsyncSession, rows: Sequence[dict[str, Any]]
) -> set[str]:
    """Insert the referrals with one statement; the ids of those inserted (an order
    attributed meanwhile by another transaction keeps its referral: one per order)."""
    if not rows:
        return set()
    result = await session.execute(_INSERT_REFERRALS, as_columns(rows, REFERRAL_COLUMNS))
    return set(result.scalars())


async def tenant_settings_of(
    session: AsyncSession, tenant_ids: set[str]
) -> dict[str, TenantSettings]:
    """The settings rows of the tenants that have one, in one query."""
    if not tenant_ids:
        return {}
    rows = await session.scalars(_TENANT_SETTINGS_OF, {"tenants": sorted(tenant_ids)})
    return {r.tenant_id: r for r in rows}


_TENANT_SETTINGS_OF = select(TenantSettings).where(
    TenantSettings.tenant_id == any_(bindparam("tenants", type_=ARRAY(Text)))
)


async def referral_for_order(
    session: AsyncSession, tenant_id: str, order_id: str
) -> Referral | None:
    return (
        await session.scalars(
            select(Referral).where(Referral.tenant_id == tenant_id, Referral.order_id == order_id)
        )
    ).first()


async def locked_referral(
    session: AsyncSession, tenant_id: str, referral_id: str
) -> Referral | None:
    """The referral, locked (a review: two reviewers of one referral decide once)."""
    return (
        await session.scalars(
            select(Referral)
            .where(Referral.tenant_id == tenant_id, Referral.id == referral_id)
            .with_for_update()
        )
    ).first()


async def locked_open_referral(
    session: AsyncSession, tenant_id: str, order_id: str
) -> Referral | None:
    """The order's referral if it is not decided yet, locked."""
    return (
        await session.scalars(
            select(Referral)
            .where(
                Referral.tenant_id == tenant_id,
                Referral.order_id == order_id,
                Referral.state.in_(OPEN_STATES),
            )
            .with_for_update()
        )
    ).first()


async def start_return_window(
    session: AsyncSession, tenant_id: str, order_id: str, fulfilled_at: datetime, due: datetime
) -> None:
    """The order's open referral starts its return window, unless an earlier fulfilment
    started it (a due time once set is not recomputed)."""
    await session.execute(
        update(Referral)
        .where(
            Referral.tenant_id == tenant_id,
            Referral.order_id == order_id,
            Referral.state.in_(OPEN_STATES),
            Referral.fulfilled_at.is_(None),  # the first fulfilment starts the window
        )
        .values(fulfilled_at=fulfilled_at, confirm_due_at=due)
    )


_LOCK_OPEN_REFERRALS = locked_by_keys(_referrals, _order_keys).where(
    _referrals.c.state.in_(OPEN_STATES)
)


async def locked_open_referrals(
    session: AsyncSession, keys: set[tuple[str, str]]
) -> dict[tuple[str, str], Row[Any]]:
    """The open referrals of the orders (tenant, order id), locked after their orders
    (locked_orders), in the same order, as plain rows keyed by (tenant, order id)."""
    if not keys:
        return {}
    rows = await session.execute(_LOCK_OPEN_REFERRALS, _order_params(keys))
    return {(r.tenant_id, r.order_id): r for r in rows}


# What a run of order lifecycle events changes, written with one statement per table
# (ReferralService.orders_changed): each changed row once, with its final values.
ORDER_LIFECYCLE = ("fulfilled_at", "refunded_amount", "refunded_at", "cancelled_at")
_order_changes = unnest_keys(
    "oc",
    tenant_id=Text,
    order_id=Text,
    **{c: _orders.c[c].type for c in ORDER_LIFECYCLE},
)
_UPDATE_ORDERS = (
    update(_orders)
    .where(
        _orders.c.tenant_id == _order_changes.c.tenant_id,
        _orders.c.order_id == _order_changes.c.order_id,
    )
    .values({c: _order_changes.c[c] for c in ORDER_LIFECYCLE})
)
REFERRAL_LIFECYCLE = (
    "fulfilled_at",
    "confirm_due_at",
    "refunded_amount",
    "state",
    "reason",
    "detail",
    "decided_at",
)
_referral_changes = unnest_keys(
    "rc", id=Text, **{c: _referrals.c[c].type for c in REFERRAL_LIFECYCLE}
)
_UPDATE_REFERRALS = (
    update(_referrals)
    .where(_referrals.c.id == _referral_changes.c.id)
    .values({c: _referral_changes.c[c] for c in REFERRAL_LIFECYCLE})
)


async def update_orders(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    """Write the lifecycle columns (ORDER_LIFECYCLE) of the orders, one row each."""
    if rows:
        columns = ("tenant_id", "order_id", *ORDER_LIFECYCLE)
        await session.execute(_UPDATE_ORDERS, {f"oc_{c}": [r[c] for r in rows] for c in columns})


async def update_referrals(session: AsyncSession, rows: Sequence[dict[str, Any]]) -> None:
    """Write the lifecycle columns (REFERRAL_LIFECYCLE) of the referrals, one row each."""
    if rows:
        columns = ("id", *REFERRAL_LIFECYCLE)
        await session.execute(_UPDATE_REFERRALS, {f"rc_{c}": [r[c] for r in rows] for c in columns})


async def claim_due_referrals(
    session: AsyncSession, now: datetime, limit: int
) -> Sequence[Referral]:
    """Pending referrals whose return window has passed, oldest due first, locked with
    SKIP LOCKED so replicas share them."""
    return (
        await session.scalars(
            select(Referral)
            .where(
                Referral.state == "pending",
                Referral.confirm_due_at.is_not(None),
                Referral.confirm_due_at <= now,
            )
            .order_by(Referral.confirm_due_at)
            .limit(limit)
            .with_for_update(skip_locked=True)
        )
    ).all()


async def referrals_of_advocate(
    session: AsyncSession, tenant_id: str, advocate: str
) -> Sequence[Referral]:
    return (
        await session.scalars(
            select(Referral)
            .where(Referral.tenant_id == tenant_id, Referral.advocate_customer_id == advocate)
            .order_by(Referral.placed_at)
        )
    ).all()


async def referrals_in_state(
    session: AsyncSession, tenant_id: str, state: str, limit: int
) -> Sequence[Referral]:
    """Up to ``limit`` of the tenant's referrals in the state, oldest order first."""
    return (
        await session.scalars(
            select(Referral)
            .where(Referral.tenant_id == tenant_id, Referral.state == state)
            .order_by(Referral.placed_at, Referral.id)
            .limit(limit)
        )
    ).all()


@dataclass(frozen=True)
class ProgramCounts:
    invited: int
    by_state: dict[str, int]
    advocates_converting: int
    rejection_reasons: dict[str | None, int]
    # Referred orders' totals by currency, minor units: confirmed, and pending or held.
    revenue: dict[str, int]
    pending_revenue: dict[str, int]


async def program_counts(session: AsyncSession, tenant_id: str) -> ProgramCounts:
    """The tenant's program metrics, counted in the database."""
    t = tenant_id
    invited = await session.scalar(select(func.count()).where(Code.tenant_id == t)) or 0
    by_state: dict[str, int] = dict(
        (
            await session.execute(
                select(Referral.state, func.count())
                .where(Referral.tenant_id == t)
                .group_by(Referral.state)
            )
        ).all()
    )
    converting = (
        await session.scalar(
            select(func.count(distinct(Referral.advocate_customer_id))).where(
                Referral.tenant_id == t, Referral.state == "confirmed"
            )
        )
        or 0
    )
    reasons: dict[str | None, int] = dict(
        (
            await session.execute(
                select(Referral.reason, func.count())
                .where(Referral.tenant_id == t, Referral.state == "rejected")
                .group_by(Referral.reason)
            )
        ).all()
    )
    revenue: dict[str, dict[str, int]] = {"confirmed": {}, "open": {}}
    for state, currency, amount in (
        await session.execute(
            select(Referral.state, Referral.currency, func.sum(Referral.order_total))
            .where(Referral.tenant_id == t, Referral.state != "rejected")
            .group_by(Referral.state, Referral.currency)
        )
    ).all():
        bucket = revenue["confirmed" if state == "confirmed" else "open"]
        bucket[currency] = bucket.get(currency, 0) + int(amount)
    return ProgramCounts(
        invited=invited,
        by_state=by_state,
        advocates_converting=converting,
        rejection_reasons=reasons,
        revenue=revenue["confirmed"],
        pending_revenue=revenue["open"],
    )


# --- erasure ----------------------------------------------------------------------------


async def customer_ids_of_tenant(session: AsyncSession, tenant_id: str) -> list[str]:
    """Every customer id in the tenant's rows (pseudonyms included)."""
    ids = (
        select(Order.customer_id.label("id"))
        .where(Order.tenant_id == tenant_id)
        .union(
            select(Code.advocate_customer_id).where(Code.tenant_id == tenant_id),
            select(Referral.advocate_customer_id).where(Referral.tenant_id == tenant_id),
            select(Referral.referee_customer_id).where(Referral.tenant_id == tenant_id),
        )
        .subquery()
    )
    return list(await session.scalars(select(ids.c.id)))


async def pseudonymize(
    session: AsyncSession, tenant_id: str, customers: list[str], now: datetime
) -> None:
    """Each customer's id becomes its pseudonym in every row, in one statement per
    table (and role); order hashes go and the advocate's code stops attributing."""
    alias = values(column("id", Text), column("alias", Text), name="alias").data(
        [(c, pseudonym(tenant_id, c)) for c in customers]
    )
    await session.execute(
        update(Order)
        .where(Order.tenant_id == tenant_id, Order.customer_id == alias.c.id)
        .values(
            customer_id=alias.c.alias,
            email_hash=None,
            phone_hash=None,
            shipping_address_hash=None,
            erased_at=now,
        )
    )
    await session.execute(
        update(Code)
        .where(Code.tenant_id == tenant_id, Code.advocate_customer_id == alias.c.id)
        .values(
            advocate_customer_id=alias.c.alias,
            deactivated_at=func.coalesce(Code.deactivated_at, now),
        )
    )
    # A referral's detail can hold a reviewer's free-text note, which may name the
    # person; the machine-readable reason (what the metrics count) stays.
    for role in (Referral.advocate_customer_id, Referral.referee_customer_id):
        await session.execute(
            update(Referral)
            .where(Referral.tenant_id == tenant_id, role == alias.c.id)
            .values({role.key: alias.c.alias, "detail": None})
        )
