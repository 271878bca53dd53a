"""The ledger on PostgreSQL: load an account's lots into a domain Wallet, apply one
operation, and write entries, lots, balances and events in the caller's transaction.

Concurrency: every operation on an account first locks its row (``SELECT ... FOR
UPDATE``), so two redemptions, or a redemption and a refund, run one after the other
and the second sees the first's balance. The worker uses ``SKIP LOCKED`` instead, so
replicas share the due accounts without waiting on each other.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import date, datetime
from decimal import Decimal
from types import SimpleNamespace
from typing import Any

from sqlalchemy import (
    Boolean,
    Text,
    bindparam,
    case,
    delete,
    func,
    inspect,
    literal,
    or_,
    select,
    text,
    tuple_,
    union,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.events import CloudEvent, Outbox, derived_event_id
from afterglow.events.batch import (
    as_columns,
    json_rows,
    key_params,
    locked_by_keys,
    unnest_insert,
    unnest_keys,
)
from afterglow.events.catalog import MessageRequested, PointsEarned, PointsExpired, TierChanged
from afterglow.events.privacy import pseudonym
from afterglow.kit.period import with_buckets
from afterglow.loyalty import domain
from afterglow.loyalty.models import (
    Account,
    EntryRow,
    ExchangeRateRow,
    LotRow,
    OrderRow,
    ProgramRulesRow,
    Redemption,
)

SOURCE = "loyalty"


# session.info key: a batch of the consumer reads (and validates) each tenant's rules
# once, not two or three times per event. Set only by the consumer's batch handler.
RULES_CACHE = "loyalty.rules"


async def load_rules(session: AsyncSession, tenant_id: str) -> domain.ProgramRules:
    cache: dict[str, domain.ProgramRules] | None = session.info.get(RULES_CACHE)
    if cache is not None and tenant_id in cache:
        return cache[tenant_id]
    row = await session.get(ProgramRulesRow, tenant_id)
    rules = domain.ProgramRules.model_validate(row.rules) if row else domain.ProgramRules()
    if cache is not None:
        cache[tenant_id] = rules
    return rules


# Accounts locked in (tenant, customer) order, the one order every lock of an account is
# taken in: loaded (open_accounts), or only locked (lock_accounts).
ACCOUNTS_FOR_UPDATE = locked_by_keys(Account, unnest_keys("l", tenant_id=Text, customer_id=Text))
LOCK_ACCOUNTS = ACCOUNTS_FOR_UPDATE.with_only_columns(Account.tenant_id)


def account_params(keys: list[tuple[str, str]]) -> dict[str, list[str]]:
    return {"l_tenant_id": [t for t, _ in keys], "l_customer_id": [c for _, c in keys]}


async def lock_accounts(session: AsyncSession, keys: set[tuple[str, str]]) -> None:
    """Lock the existing accounts of ``keys`` (tenant, customer) with one statement, in
    that order. A batch holds its accounts until it commits, and one account is reached
    from several partitions (an advocate's orders and their referral bonuses): locked
    in event order, two batches could each hold one and wait for the other's."""
    if not keys:
        return
    await session.execute(LOCK_ACCOUNTS, account_params(sorted(keys)))


async def save_rules(
    session: AsyncSession, tenant_id: str, rules: domain.ProgramRules, now: datetime
) -> None:
    """Replace the tenant's program (one upsert; the version counts the replacements)."""
    stmt = pg_insert(ProgramRulesRow).values(
        tenant_id=tenant_id, rules=rules.model_dump(mode="json"), version=1, updated_at=now
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


# --- exchange rates -----------------------------------------------------------------


async def load_rates(
    session: AsyncSession, tenant_id: str, quote: str
) -> dict[str, domain.ExchangeRate]:
    """The tenant's rates into ``quote`` (the program currency), by currency: a handful
    of rows, read only for an order that states no amount in the program's currency."""
    rows = await rate_rows(session, tenant_id, quote)
    return {r.currency: domain.ExchangeRate(r.currency, r.quote, r.rate, r.as_of) for r in rows}


async def rate_rows(session: AsyncSession, tenant_id: str, quote: str) -> list[ExchangeRateRow]:
    """The tenant's rates into ``quote``, by currency code (as the API lists them)."""
    rows = await session.execute(
        select(ExchangeRateRow)
        .where(ExchangeRateRow.tenant_id == tenant_id, ExchangeRateRow.quote == quote)
        .order_by(ExchangeRateRow.currency)
    )
    return list(rows.scalars())


async def upsert_rate(
    session: AsyncSession,
    tenant_id: str,
    currency: str,
    quote: str,
    rate: Decimal,
    as_of: date,
    now: datetime,
) -> ExchangeRateRow:
    """Set the rate of ``currency`` into ``quote``, replacing the one there was."""
    stmt = pg_insert(ExchangeRateRow).values(
        tenant_id=tenant_id,
        currency=currency,
        quote=quote,
        rate=rate,
        as_of=as_of,
        updated_at=now,
    )
    row = await session.execute(
        stmt.on_conflict_do_update(
            index_elements=["tenant_id", "currency", "quote"],
            set_={"rate": rate, "as_of": as_of, "updated_at": now},
        ).returning(ExchangeRateRow)
    )
    return row.scalar_one()


async def delete_rate(session: AsyncSession, tenant_id: str, currency: str, quote: str) -> bool:
    """Forget the rate of ``currency`` into ``quote``; False when there was none."""
    deleted = await session.execute(
        delete(ExchangeRateRow)
        .where(
            ExchangeRateRow.tenant_id == tenant_id,
            ExchangeRateRow.currency == currency,
            ExchangeRateRow.quote == quote,
        )
        .returning(ExchangeRateRow.currency)
    )
    return deleted.scalar() is not None


async def lock_account(
    session: AsyncSession,
    tenant_id: str,
    customer_id: str,
    now: datetime,
    rules: domain.ProgramRules,
    *,
    create: bool = True,
    skip_locked: bool = False,
) -> Account | None:
    if create:
        await session.execute(
            pg_insert(Account)
            .values(
                tenant_id=tenant_id,
                customer_id=customer_id,
                available=0,
                pending=0,
                lifetime_earned=0,
                tier=rules.tiers[0].name,
                orders_count=0,
                erased=False,
                created_at=now,
                updated_at=now,
            )
            .on_conflict_do_nothing()
        )
    stmt = (
        select(Account)
        .where(Account.tenant_id == tenant_id, Account.customer_id == customer_id)
        .with_for_update(skip_locked=skip_locked)
        .execution_options(populate_existing=True)
    )
    return (await session.execute(stmt)).scalar_one_or_none()


def to_lot(row: Any) -> domain.Lot:
    """A lot of the domain from a stored row (a LotRow, or a Core row of its columns)."""
    return domain.Lot(
        id=row.id,
        source=row.source,
        source_id=row.source_id,
        points=row.points,
        earned_at=row.earned_at,
        order_id=row.order_id,
        clawed=row.clawed,
        remaining=row.remaining,
        state=row.state,
        available_at=row.available_at,
        expires_at=row.expires_at,
        notify_at=row.notify_at,
        rule_snapshot=row.rule_snapshot or {},
    )


async def load_wallet(
    session: AsyncSession, account: Account, order_id: str | None = None
) -> domain.Wallet:
    """The account's live lots (pending, or available with points left), plus every lot
    of ``order_id`` (a refund may claw back a lot that is already spent)."""
    live = or_(LotRow.state == "pending", (LotRow.state == "available") & (LotRow.remaining > 0))
    cond = or_(live, LotRow.order_id == order_id) if order_id else live
    rows = (
        await session.execute(
            select(LotRow).where(
                LotRow.tenant_id == account.tenant_id,
                LotRow.customer_id == account.customer_id,
                cond,
            )
        )
    ).scalars()
    return domain.Wallet(
        available=account.available, pending=account.pending, lots=[to_lot(r) for r in rows]
    )


_run_accounts = unnest_keys("a", tenant_id=Text, customer_id=Text, clawing=Boolean)
_run_orders = unnest_keys("o", tenant_id=Text, order_id=Text)
# See load_run_lots.
RUN_LOTS = (
    select(LotRow)
    .join(
        _run_accounts,
        (LotRow.tenant_id == _run_accounts.c.tenant_id)
        & (LotRow.customer_id == _run_accounts.c.customer_id),
    )
    .where(
        or_(
            tuple_(LotRow.tenant_id, LotRow.order_id).in_(
                select(_run_orders.c.tenant_id, _run_orders.c.order_id)
            ),
            _run_accounts.c.clawing
            & or_(
                LotRow.state == "pending", (LotRow.state == "available") & (LotRow.remaining > 0)
            ),
        )
    )
)


async def load_run_lots(
    session: AsyncSession,
    accounts: list[tuple[str, str]],
    orders: list[tuple[str, str]],
    clawing: set[tuple[str, str]],
) -> dict[tuple[str, str], list[domain.Lot]]:
    """:func:`load_wallet`'s lots for a run of order events, in one statement, by
    account (tenant, customer): every lot of the run's ``orders`` (tenant, order id),
    and the live lots of the accounts in ``clawing`` (a clawback takes what its own lot
    lacks from the account's other points). Earning and releasing read no other lot, so
    an account with no clawback in the run does without its live lots."""
    if not accounts:
        return {}
    rows = await session.scalars(
        RUN_LOTS,
        {
            "a_tenant_id": [t for t, _ in accounts],
            "a_customer_id": [c for _, c in accounts],
            "a_clawing": [k in clawing for k in accounts],
            "o_tenant_id": [t for t, _ in orders],
            "o_order_id": [o for _, o in orders],
        },
    )
    out: dict[tuple[str, str], list[domain.Lot]] = {}
    for row in rows:
        out.setdefault((row.tenant_id, row.customer_id), []).append(to_lot(row))
    return out


async def lot_exists(session: AsyncSession, tenant_id: str, source: str, source_id: str) -> bool:
    found = await session.scalar(
        select(func.count()).where(
            LotRow.tenant_id == tenant_id, LotRow.source == source, LotRow.source_id == source_id
        )
    )
    return bool(found)


# Multi-row writes as ONE statement whatever the number of rows (unnest of one array per
# column), compiled once: a VALUES list is compiled again for every batch size, and in a
# profile of the order.placed run that compilation was most of the consumer's time.
LOT_COLUMNS = (
    "id",
    "tenant_id",
    "customer_id",
    "source",
    "source_id",
    "order_id",
    "points",
    "clawed",
    "remaining",
    "state",
    "earned_at",
    "available_at",
    "expires_at",
    "notify_at",
    "rule_snapshot",
)
_new_lots = unnest_insert(LotRow.__table__, LOT_COLUMNS)
UPSERT_LOTS = _new_lots.on_conflict_do_update(
    index_elements=["id"],
    set_={
        c: _new_lots.excluded[c]
        for c in ("clawed", "remaining", "state", "available_at", "expires_at", "notify_at")
    },
)
ENTRY_COLUMNS = (
    "id",
    "tenant_id",
    "customer_id",
    "kind",
    "pending_delta",
    "available_delta",
    "lot_id",
    "order_id",
    "reason",
    "actor",
    "ref",
    "rule_snapshot",
    "created_at",
)
# The entries' sequence (the history's order) follows the rows' order.
NEW_ENTRIES = unnest_insert(EntryRow.__table__, ENTRY_COLUMNS)


def lot_row(tenant: str, customer: str, lot: domain.Lot) -> dict[str, Any]:
    return {
        "id": lot.id,
        "tenant_id": tenant,
        "customer_id": customer,
        "source": lot.source,
        "source_id": lot.source_id,
        "order_id": lot.order_id,
        "points": lot.points,
        "clawed": lot.clawed,
        "remaining": lot.remaining,
        "state": lot.state,
        "earned_at": lot.earned_at,
        "available_at": lot.available_at,
        "expires_at": lot.expires_at,
        "notify_at": lot.notify_at,
        "rule_snapshot": lot.rule_snapshot,
    }


def entry_row(tenant: str, customer: str, e: domain.Entry) -> dict[str, Any]:
    return {
        "id": e.id,
        "tenant_id": tenant,
        "customer_id": customer,
        "kind": e.kind,
        "pending_delta": e.pending_delta,
        "available_delta": e.available_delta,
        "lot_id": e.lot_id,
        "order_id": e.order_id,
        "reason": e.reason,
        "actor": e.actor,
        "ref": e.ref,
        "rule_snapshot": e.rule_snapshot,
        "created_at": e.at,
    }


async def upsert_lots(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """Insert new lots and update touched ones, in one statement. Each lot at most once
    in ``rows`` (PostgreSQL refuses to update one row twice in one statement)."""
    if rows:
        await session.execute(UPSERT_LOTS, as_columns(rows, LOT_COLUMNS))


async def insert_entries(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """Append ledger entries, in one statement (their sequence follows ``rows``)."""
    if rows:
        await session.execute(NEW_ENTRIES, as_columns(rows, ENTRY_COLUMNS))


def settle(
    account: Account, wallet: domain.Wallet, entries: list[domain.Entry], now: datetime
) -> list[CloudEvent[Any]]:
    """Bring the account's cached balances to the wallet's after ``entries``, and return
    the events they cause (points earned, points expired). No statement: the caller
    writes the account, the entries and the events."""
    if not entries:
        return []
    earned = sum(e.pending_delta for e in entries if e.kind == "earn_pending") + sum(
        e.available_delta for e in entries if e.kind == "earn_available" and e.pending_delta == 0
    )
    account.available = wallet.available
    account.pending = wallet.pending
    account.lifetime_earned += earned
    account.updated_at = now
    events: list[CloudEvent[Any]] = []
    for e in entries:
        if e.kind in ("earn_pending", "earn_available"):
            lot = next((lot for lot in wallet.lots if lot.id == e.lot_id), None)
            events.append(
                account_event(
                    account,
                    PointsEarned(
                        entry_id=e.id,
                        points=e.pending_delta if e.kind == "earn_pending" else e.available_delta,
                        status="pending" if e.kind == "earn_pending" else "available",
                        reason=lot.source if lot else (e.reason or "earn"),
                        order_id=e.order_id,
                        available_at=lot.available_at if lot else None,
                        balance_available=wallet.spendable,
                        balance_pending=wallet.pending,
                        earned_at=now,
                    ),
                    e.id,
                )
            )
    expired = sum(-e.available_delta for e in entries if e.kind == "expire")
    if expired:
        first = next(e for e in entries if e.kind == "expire")
        events.append(
            account_event(
                account,
                PointsExpired(points=expired, balance_available=wallet.spendable, expired_at=now),
                first.id,
            )
        )
    return events


async def persist(
    session: AsyncSession,
    outbox: Outbox,
    account: Account,
    wallet: domain.Wallet,
    entries: list[domain.Entry],
    now: datetime,
) -> None:
    """Write the touched lots, the new entries, the cached balances and the events."""
    tenant, customer = account.tenant_id, account.customer_id
    dirty = [lot for lot in wallet.lots if lot.id in wallet.dirty]
    await upsert_lots(session, [lot_row(tenant, customer, lot) for lot in dirty])
    wallet.dirty.clear()
    if not entries:
        return
    await insert_entries(session, [entry_row(tenant, customer, e) for e in entries])
    await outbox.add(session, *settle(account, wallet, entries, now))


def account_event(account: Account, data: Any, *cause: str) -> CloudEvent[Any]:
    """An event about one account, its id derived from the account and its cause.

    The account is part of the id because causes such as a tier review at one instant
    are shared by many accounts; without it the outbox would keep only the first.
    """
    return customer_event(account.tenant_id, account.customer_id, data, *cause)


def customer_event(tenant: str, customer: str, data: Any, *cause: str) -> CloudEvent[Any]:
    """:func:`account_event` for an account known by its key (a set-based path that
    reads balances, not Account objects)."""
    return CloudEvent.new(
        data,
        tenant_id=tenant,
        subject=customer,
        source=SOURCE,
        id=derived_event_id(SOURCE, data.type, tenant, customer, *cause),
        time=getattr(data, "earned_at", None) or None,
    )


def message(
    account: Account,
    kind: str,
    request_id: str,
    variables: dict[str, Any],
    *,
    transactional: bool = False,
) -> CloudEvent[Any]:
    data = MessageRequested(
        request_id=request_id,
        kind=kind,
        category="transactional" if transactional else "marketing",
        variables=variables,
    )
    return account_event(account, data, request_id)


def _qualifying(rules: domain.ProgramRules, tenant_id: str, now: datetime) -> tuple[Any, ...]:
    """(value, oldest, customer column, conditions) of the tier's rolling-window figure."""
    since = domain.add_months(now, -rules.tier_window_months)
    if rules.tier_basis == "spend":
        # Spend in the program's currency only: each order's net amount converted at the
        # factor it was priced at, rounded half up like domain.convert_minor. Unpriced
        # orders (no rate) and orders priced in another program currency do not count;
        # amounts in different currencies are never added up.
        net = func.greatest(OrderRow.total_minor - OrderRow.refunded_minor, 0)
        return (
            func.coalesce(func.sum(func.round(net * OrderRow.fx_factor)), 0),
            func.min(OrderRow.placed_at),
            OrderRow.customer_id,
            (
                OrderRow.tenant_id == tenant_id,
                OrderRow.placed_at > since,
                OrderRow.value_currency == rules.currency,
                OrderRow.fx_factor.is_not(None),
                ~OrderRow.cancelled,
                ~OrderRow.fully_refunded,
            ),
        )
    return (
        func.coalesce(func.sum(LotRow.points - LotRow.clawed), 0),
        func.min(LotRow.earned_at),
        LotRow.customer_id,
        (
            LotRow.tenant_id == tenant_id,
            LotRow.earned_at > since,
            LotRow.state != "void",
            LotRow.source != "adjust",
        ),
    )


async def qualifying_value(
    session: AsyncSession, rules: domain.ProgramRules, account: Account, now: datetime
) -> tuple[int, datetime | None]:
    """The rolling-window figure the tier is based on, and when its oldest part ages out."""
    value, oldest, customer, conds = _qualifying(rules, account.tenant_id, now)
    stmt = select(value, oldest).where(*conds, customer == account.customer_id)
    found, first = (await session.execute(stmt)).one()
    return int(found), first


async def qualifying_values(
    session: AsyncSession,
    rules: dict[str, domain.ProgramRules],
    keys: list[tuple[str, str]],
    now: datetime,
) -> dict[tuple[str, str], tuple[int, datetime | None]]:
    """:func:`qualifying_value` of many accounts: one statement per tenant (each has its
    own basis and window). An account with nothing in its window is (0, None)."""
    out: dict[tuple[str, str], tuple[int, datetime | None]] = dict.fromkeys(keys, (0, None))
    by_tenant: dict[str, list[str]] = {}
    for tenant, customer in keys:
        by_tenant.setdefault(tenant, []).append(customer)
    for tenant, customers in sorted(by_tenant.items()):
        value, oldest, customer, conds = _qualifying(rules[tenant], tenant, now)
        rows = await session.execute(
            select(customer, value, oldest)
            .where(*conds, customer == func.any(bindparam("customers", type_=ARRAY(Text))))
            .group_by(customer),
            {"customers": customers},
        )
        for who, found, first in rows:
            out[(tenant, who)] = (int(found), first)
    return out


def tier_events(
    rules: domain.ProgramRules,
    account: Account,
    value: int,
    oldest: datetime | None,
    now: datetime,
    cause: str,
    *,
    notify: bool = True,
) -> list[CloudEvent[Any]]:
    """Move the account to the tier ``value`` earns and return the events that causes
    (none when the tier stays); ``notify`` False (a historical order moved it) records
    the change without a tier-up message. No statement."""
    account.tier_review_at = (
        domain.add_months(oldest, rules.tier_window_months) if oldest is not None else None
    )
    new = domain.tier_for(rules, value).name
    direction = domain.tier_direction(rules, account.tier, new)
    if direction is None:
        return []
    old, account.tier = account.tier, new
    events = [
        account_event(
            account,
            TierChanged(from_tier=old, to_tier=new, direction=direction, changed_at=now),
            cause,
            new,
        )
    ]
    if direction == "up" and notify:
        key = derived_event_id(account.tenant_id, account.customer_id, cause, new)
        request_id = f"loyalty:tier_up:{key}"
        events.append(message(account, "tier_up", request_id, {"tier": new, "from_tier": old}))
    return events


async def refresh_tier(
    session: AsyncSession,
    outbox: Outbox,
    rules: domain.ProgramRules,
    account: Account,
    now: datetime,
    cause: str,
    *,
    notify: bool = True,
) -> None:
    """Move the account to the tier its qualifying value earns; ``notify`` False (a
    historical order moved it) records the change without a tier-up message."""
    value, oldest = await qualifying_value(session, rules, account, now)
    events = tier_events(rules, account, value, oldest, now, cause, notify=notify)
    await outbox.add(session, *events)


async def mark_notified(session: AsyncSession, lot_ids: list[str], now: datetime) -> None:
    await session.execute(
        update(LotRow).where(LotRow.id.in_(lot_ids)).values(expiry_notified_at=now)
    )


# --- accounts as the API shows them -------------------------------------------------


async def get_account(session: AsyncSession, tenant_id: str, customer_id: str) -> Account | None:
    """The account without a lock (a read for the API)."""
    return await session.get(Account, (tenant_id, customer_id))


async def unpriced_orders(
    session: AsyncSession, tenant_id: str, customer_id: str, limit: int
) -> list[OrderRow]:
    """The customer's latest orders that could not be priced (no exchange rate)."""
    rows = await session.execute(
        select(OrderRow)
        .where(
            OrderRow.tenant_id == tenant_id,
            OrderRow.customer_id == customer_id,
            OrderRow.fx_factor.is_(None),
        )
        .order_by(OrderRow.placed_at.desc())
        .limit(limit)
    )
    return list(rows.scalars())


async def entries_before(
    session: AsyncSession, tenant_id: str, customer_id: str, before_seq: int | None, limit: int
) -> list[EntryRow]:
    """Up to ``limit`` ledger entries of the customer, newest first, older than
    ``before_seq`` when given (the history's cursor)."""
    stmt = select(EntryRow).where(
        EntryRow.tenant_id == tenant_id, EntryRow.customer_id == customer_id
    )
    if before_seq is not None:
        stmt = stmt.where(EntryRow.seq < before_seq)
    rows = await session.execute(stmt.order_by(EntryRow.seq.desc()).limit(limit))
    return list(rows.scalars())


# --- redemptions --------------------------------------------------------------------


async def redemption_by_key(
    session: AsyncSession, tenant_id: str, customer_id: str, idempotency_key: str
) -> Redemption | None:
    return await session.scalar(
        select(Redemption).where(
            Redemption.tenant_id == tenant_id,
            Redemption.customer_id == customer_id,
            Redemption.idempotency_key == idempotency_key,
        )
    )


async def redemption_by_id(
    session: AsyncSession, tenant_id: str, redemption_id: str
) -> Redemption | None:
    return await session.scalar(
        select(Redemption).where(Redemption.tenant_id == tenant_id, Redemption.id == redemption_id)
    )


async def insert_redemption(session: AsyncSession, **values: Any) -> None:
    """Record a redemption (its answer too, replayed for the same Idempotency-Key)."""
    await session.execute(pg_insert(Redemption).values(**values))


async def lot_exists_by_id(session: AsyncSession, lot_id: str) -> bool:
    return await session.get(LotRow, lot_id) is not None


# --- orders -------------------------------------------------------------------------


async def lock_order(session: AsyncSession, tenant_id: str, order_id: str) -> OrderRow | None:
    """The order, locked and re-read (another event of the batch may have changed it)."""
    return await session.get(
        OrderRow, (tenant_id, order_id), with_for_update=True, populate_existing=True
    )


LOCK_ORDERS = locked_by_keys(
    OrderRow, unnest_keys("k", tenant_id=Text, order_id=Text)
).execution_options(populate_existing=True)


async def lock_orders(
    session: AsyncSession, keys: set[tuple[str, str]]
) -> dict[tuple[str, str], OrderRow]:
    """:func:`lock_order` for many orders (tenant, order id) in one statement, locked in
    key order; an order never recorded is absent. The rows come detached from the
    session: the caller changes them and writes them with :func:`save_orders`, one
    statement for the lot. Left to the session's flush, a run of 2,000 fulfilments was
    2,000 UPDATEs of one row each (an executemany), each executed and timed apart by
    PostgreSQL: ~540-690 us of server time per event of the loyalty bench, more than
    every other statement of the run together."""
    if not keys:
        return {}
    rows = list(
        await session.scalars(
            LOCK_ORDERS, {"k_tenant_id": [t for t, _ in keys], "k_order_id": [o for _, o in keys]}
        )
    )
    for o in rows:
        session.expunge(o)
    return {(o.tenant_id, o.order_id): o for o in rows}


_ORDER_KEY = ("tenant_id", "order_id")
# Every other column: what a run may change of an order is written back as it is.
_ORDER_VALUES = [c for c in OrderRow.__table__.columns if c.name not in _ORDER_KEY]
_order_rows = json_rows("v", **{c.name: c.type for c in OrderRow.__table__.columns})
SAVE_ORDERS = (
    update(OrderRow.__table__)
    .where(*(OrderRow.__table__.c[k] == _order_rows.c[k] for k in _ORDER_KEY))
    .values({c.name: _order_rows.c[c.name] for c in _ORDER_VALUES})
)


async def save_orders(session: AsyncSession, orders: Iterable[OrderRow]) -> None:
    """Write the orders :func:`lock_orders` read that the caller changed, in one UPDATE.
    An order its events left as it was (a fulfilment announced again, an event about a
    cancelled order) is not written, as the session's flush skipped it."""
    rows = [
        {c.name: getattr(o, c.name) for c in OrderRow.__table__.columns}
        for o in orders
        if _changed(o)
    ]
    if rows:
        await session.execute(SAVE_ORDERS, {"rows": rows})


def _changed(order: OrderRow) -> bool:
    """A value differs from the one read (a detached row still keeps its history; an
    attribute set to the value it had marks the row modified, but changes nothing)."""
    state = inspect(order)
    return state.modified and any(a.history.has_changes() for a in state.attrs)


async def add_order(session: AsyncSession, order: OrderRow) -> None:
    """Insert a new order now (flushed: the account's later reads of its orders see it)."""
    session.add(order)
    await session.flush()


_known_keys = unnest_keys("kn", tenant_id=Text, order_id=Text)
# The same text for any number of keys, so prepared once: a row-wise IN list is a new
# statement, prepared and planned again, for every size a batch comes in.
KNOWN_ORDERS = select(OrderRow.tenant_id, OrderRow.order_id).join(
    _known_keys,
    (OrderRow.tenant_id == _known_keys.c.tenant_id) & (OrderRow.order_id == _known_keys.c.order_id),
)


async def known_orders(session: AsyncSession, keys: set[tuple[str, str]]) -> set[tuple[str, str]]:
    """Those of the orders ``keys`` (tenant, order id) already recorded: one statement."""
    if not keys:
        return set()
    rows = await session.execute(
        KNOWN_ORDERS, key_params("kn", ("tenant_id", "order_id"), sorted(keys))
    )
    return {(r[0], r[1]) for r in rows}


_account_keys = (
    func.unnest(
        bindparam("tenant_id", type_=ARRAY(Text)),
        bindparam("customer_id", type_=ARRAY(Text)),
        bindparam("tier", type_=ARRAY(Text)),
    )
    .table_valued("tenant_id", "customer_id", "tier")
    .render_derived(name="new_accounts")
)
_at = bindparam("at", type_=Account.__table__.c.created_at.type)
# New accounts (zero balances, the tenant's first tier), one statement for any number.
NEW_ACCOUNTS = (
    pg_insert(Account.__table__)
    .from_select(
        [
            "tenant_id",
            "customer_id",
            "tier",
            "available",
            "pending",
            "lifetime_earned",
            "orders_count",
            "erased",
            "created_at",
            "updated_at",
        ],
        select(
            _account_keys.c.tenant_id,
            _account_keys.c.customer_id,
            _account_keys.c.tier,
            literal(0),
            literal(0),
            literal(0),
            literal(0),
            literal(False),
            _at,
            _at,
        ),
    )
    .on_conflict_do_nothing()
)


async def open_accounts(
    session: AsyncSession,
    keys: list[tuple[str, str]],
    first_tier: dict[str, str],
    now: datetime,
) -> dict[tuple[str, str], Account]:
    """The accounts of ``keys`` (tenant, customer), created where missing (in the
    tenant's first tier) and locked: one insert and one locking read, both in (tenant,
    customer) order, the order every lock of an account is taken in (lock_accounts)."""
    keys = sorted(keys)
    if not keys:
        return {}
    await _create_missing(session, keys, first_tier, now)
    return await locked_accounts(session, keys)


async def _create_missing(
    session: AsyncSession, keys: list[tuple[str, str]], first_tier: dict[str, str], now: datetime
) -> None:
    """Insert the accounts of ``keys`` (sorted) that do not exist, in their tenant's
    first tier; the ones that do are left as they are."""
    await session.execute(
        NEW_ACCOUNTS,
        {
            "tenant_id": [t for t, _ in keys],
            "customer_id": [c for _, c in keys],
            "tier": [first_tier[t] for t, _ in keys],
            "at": now,
        },
    )


async def locked_accounts(
    session: AsyncSession, keys: list[tuple[str, str]]
) -> dict[tuple[str, str], Account]:
    """The existing accounts of ``keys`` (tenant, customer, sorted), locked in that
    order and re-read, in one statement."""
    rows = await session.scalars(
        ACCOUNTS_FOR_UPDATE.execution_options(populate_existing=True), account_params(keys)
    )
    return {(a.tenant_id, a.customer_id): a for a in rows}


# The batch's accounts as plain rows: a run of order.placed events reads, changes and
# writes them without ORM objects (loading, tracking and flushing one per account was
# the largest cost of the run's Python after the orders' own construction).
_ACCOUNT_ROWS_FOR_UPDATE = locked_by_keys(
    Account.__table__, unnest_keys("l", tenant_id=Text, customer_id=Text)
)
# What a run changes on an account: its balances, its order count and its tier.
ACCOUNT_CHANGES = (
    "available",
    "pending",
    "lifetime_earned",
    "orders_count",
    "tier",
    "tier_review_at",
    "updated_at",
)
_accounts_changed = unnest_keys(
    "a",
    tenant_id=Text,
    customer_id=Text,
    **{c: Account.__table__.c[c].type for c in ACCOUNT_CHANGES},
)
UPDATE_ACCOUNTS = (
    update(Account.__table__)
    .where(
        Account.__table__.c.tenant_id == _accounts_changed.c.tenant_id,
        Account.__table__.c.customer_id == _accounts_changed.c.customer_id,
    )
    .values({c: _accounts_changed.c[c] for c in ACCOUNT_CHANGES})
)


async def open_account_rows(
    session: AsyncSession,
    keys: list[tuple[str, str]],
    first_tier: dict[str, str],
    now: datetime,
) -> dict[tuple[str, str], Any]:
    """:func:`open_accounts` as plain rows (attributes, no ORM state): created where
    missing and locked, in (tenant, customer) order. The caller changes them and
    writes them back with :func:`update_account_rows`."""
    keys = sorted(keys)
    if not keys:
        return {}
    await _create_missing(session, keys, first_tier, now)
    rows = await session.execute(_ACCOUNT_ROWS_FOR_UPDATE, account_params(keys))
    return {(r.tenant_id, r.customer_id): SimpleNamespace(**r._mapping) for r in rows}


async def update_account_rows(session: AsyncSession, accounts: list[Any]) -> None:
    """Write what a run changed on its accounts (:data:`ACCOUNT_CHANGES`), one
    statement for all, in (tenant, customer) order, the order they were locked in."""
    if not accounts:
        return
    ordered = sorted(accounts, key=lambda a: (a.tenant_id, a.customer_id))
    await session.execute(
        UPDATE_ACCOUNTS,
        {
            f"a_{c}": [getattr(a, c) for a in ordered]
            for c in ("tenant_id", "customer_id", *ACCOUNT_CHANGES)
        },
    )


# Every column of a new order but its refunds (none yet: an empty array, which unnest
# cannot carry as one element of an array of arrays).
ORDER_COLUMNS = tuple(c.key for c in OrderRow.__table__.columns if c.key != "refund_ids")
_order_rows = (
    func.unnest(*[bindparam(c, type_=ARRAY(OrderRow.__table__.c[c].type)) for c in ORDER_COLUMNS])
    .table_valued(*ORDER_COLUMNS)
    .render_derived(name="new_rows")
)
NEW_ORDERS = pg_insert(OrderRow.__table__).from_select(
    [*ORDER_COLUMNS, "refund_ids"],
    select(*[_order_rows.c[c] for c in ORDER_COLUMNS], literal([], ARRAY(Text))),
)


async def insert_orders(session: AsyncSession, orders: list[OrderRow]) -> None:
    """Insert new orders (built, never added to the session) in one statement."""
    if orders:
        await session.execute(
            NEW_ORDERS, {c: [getattr(o, c) for o in orders] for c in ORDER_COLUMNS}
        )


# --- erasure ------------------------------------------------------------------------


async def live_customers(session: AsyncSession, tenant_id: str) -> list[str]:
    """Every customer of the tenant whose account is not erased yet."""
    rows = await session.execute(
        select(Account.customer_id).where(Account.tenant_id == tenant_id, ~Account.erased)
    )
    return list(rows.scalars())


async def pseudonymize(session: AsyncSession, tenant: str, customer: str) -> None:
    """Replace the customer key everywhere with a one-way pseudonym; balances, entries and
    metrics stay (aggregates survive erasure). Free-text reasons may name the person."""
    alias = pseudonym(tenant, customer)
    for model in (Account, LotRow, OrderRow, Redemption):
        await session.execute(
            update(model)
            .where(model.tenant_id == tenant, model.customer_id == customer)
            .values(customer_id=alias)
        )
    await session.execute(
        update(EntryRow)
        .where(EntryRow.tenant_id == tenant, EntryRow.customer_id == customer)
        .values(customer_id=alias, reason=None)
    )
    await session.execute(
        update(Account)
        .where(Account.tenant_id == tenant, Account.customer_id == alias)
        .values(erased=True)
    )


# --- program metrics ----------------------------------------------------------------


async def ledger_totals(session: AsyncSession, tenant_id: str) -> tuple[int, int, int, int]:
    """(issued, redeemed, expired, clawed back) over the tenant's whole ledger, as
    positive numbers: issued is what became spendable (positive adjustments too)."""

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
            ).where(EntryRow.tenant_id == tenant_id)
        )
    ).one()
    return int(row[0]), -int(row[1]), -int(row[2]), -int(row[3])


async def balance_totals(session: AsyncSession, tenant_id: str) -> tuple[int, int, int, int]:
    """(outstanding available, debt, pending, accounts) summed over the tenant's accounts."""
    row = (
        await session.execute(
            select(
                func.coalesce(func.sum(func.greatest(Account.available, 0)), 0),
                func.coalesce(func.sum(func.greatest(-Account.available, 0)), 0),
                func.coalesce(func.sum(Account.pending), 0),
                func.count(),
            ).where(Account.tenant_id == tenant_id)
        )
    ).one()
    outstanding, debt, pending, accounts = (int(x) for x in row)
    return outstanding, debt, pending, accounts


async def orders_by_currency(
    session: AsyncSession, tenant_id: str
) -> list[tuple[str, int, int, int]]:
    """(currency, orders, total in minor units, unpriced orders) per order currency, by
    code: each currency on its own row, never added to another."""
    priced = OrderRow.fx_factor.is_not(None)
    rows = await session.execute(
        select(
            OrderRow.currency,
            func.count(),
            func.coalesce(func.sum(OrderRow.total_minor), 0),
            func.count().filter(~priced),
        )
        .where(OrderRow.tenant_id == tenant_id)
        .group_by(OrderRow.currency)
        .order_by(OrderRow.currency)
    )
    return [(cur, int(n), int(total), int(unpriced)) for cur, n, total, unpriced in rows]


# --- the background worker's reads -------------------------------------------------


async def due_accounts(session: AsyncSession, now: datetime, limit: int) -> list[tuple[str, str]]:
    """Up to ``limit`` accounts (tenant, customer) with work due at ``now``: pending
    points to release, points to expire, an expiry notice to send, a tier to review."""
    pending = select(LotRow.tenant_id, LotRow.customer_id).where(
        LotRow.state == "pending", LotRow.available_at <= now
    )
    expiring = select(LotRow.tenant_id, LotRow.customer_id).where(
        LotRow.state == "available", LotRow.remaining > 0, LotRow.expires_at <= now
    )
    # notify_at is fixed when the lot starts to expire, so an account is due for a
    # notice only once, not on every pass until the lot expires.
    notices = select(LotRow.tenant_id, LotRow.customer_id).where(
        LotRow.state == "available",
        LotRow.remaining > 0,
        LotRow.expiry_notified_at.is_(None),
        LotRow.notify_at <= now,
    )
    tiers = select(Account.tenant_id, Account.customer_id).where(Account.tier_review_at <= now)
    rows = await session.execute(union(pending, expiring, notices, tiers).limit(limit))
    return [(r[0], r[1]) for r in rows]


async def unnotified_lots(session: AsyncSession, ids: list[str]) -> set[str]:
    """Those of the lots ``ids`` whose expiry notice was not sent yet."""
    rows = await session.execute(
        select(LotRow.id).where(LotRow.id.in_(ids), LotRow.expiry_notified_at.is_(None))
    )
    return set(rows.scalars())


# --- points over a period (GET /v1/metrics/points) ----------------------------------
# Per bucket: issued, redeemed, expired (the console's dashboard), and the outstanding
# balance with its liability in money now; one statement per figure (the series a GROUP
# BY over the ledger's buckets).
# Definitions (the same as the programme totals of ``GET /v1/metrics``):
#
# - issued: points that became spendable (``earn_available``, and positive
#   adjustments), when they did; pending points are not issued until the return window
#   passes, so a refunded order never counts;
# - redeemed, expired: what redemptions and expiries took, as positive numbers;
# - outstanding: the available balances now (a balance is a state, not a flow: it has no
#   period), and the liability: outstanding times the programme's point value.

_SERIES = text(
    with_buckets(
        """flows AS (
        SELECT date_trunc(:interval, created_at, 'UTC') AS bucket,
               sum(available_delta) FILTER (
                   WHERE kind = 'earn_available' OR (kind = 'adjust' AND available_delta > 0)
               ) AS issued,
               -sum(available_delta) FILTER (WHERE kind = 'redeem') AS redeemed,
               -sum(available_delta) FILTER (WHERE kind = 'expire') AS expired
        FROM loyalty.entries
        WHERE tenant_id = :tenant AND created_at >= :start AND created_at < :end
          AND kind IN ('earn_available', 'adjust', 'redeem', 'expire')
        GROUP BY 1
    )
    SELECT b.bucket, coalesce(f.issued, 0)::bigint AS issued,
           coalesce(f.redeemed, 0)::bigint AS redeemed, coalesce(f.expired, 0)::bigint AS expired
    FROM buckets b LEFT JOIN flows f ON f.bucket = b.bucket
    ORDER BY b.bucket
    """
    )
)

_OUTSTANDING = text(
    """
    SELECT coalesce(sum(greatest(available, 0)), 0)::bigint AS outstanding
    FROM loyalty.accounts WHERE tenant_id = :tenant
    """
)


async def points_series(
    session: AsyncSession,
    tenant_id: str,
    start: datetime,
    end: datetime,
    interval: str,
    point_value_minor: Decimal,
    currency: str,
) -> dict[str, Any]:
    """The figures of ``GET /v1/metrics/points`` over [start, end), by ``interval``
    (definitions above)."""
    params = {"tenant": tenant_id, "start": start, "end": end, "interval": interval}
    rows = (await session.execute(_SERIES, params)).all()
    outstanding = int((await session.execute(_OUTSTANDING, {"tenant": tenant_id})).scalar_one())
    series = [
        {
            "start": r.bucket.date(),
            "issued": int(r.issued),
            "redeemed": int(r.redeemed),
            "expired": int(r.expired),
        }
        for r in rows
    ]
    return {
        "interval": interval,
        "issued": sum(p["issued"] for p in series),
        "redeemed": sum(p["redeemed"] for p in series),
        "expired": sum(p["expired"] for p in series),
        "outstanding": outstanding,
        "outstanding_liability": {
            "amount": int(Decimal(outstanding) * point_value_minor),
            "currency": currency,
        },
        "series": series,
    }
