"""The statements of a batch of redemptions (afterglow.loyalty.redemptions): each reads
or writes what the whole batch touches in one round trip, whatever its size.

Keys travel as arrays joined with ``unnest``, so each statement has one text for every
batch size (compiled and prepared once; an ``IN`` list of tuples is a new statement for
each size). The lots and entries are written with store.py's multi-row statements.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import BigInteger, Text, and_, bindparam, select, update
from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.events.batch import as_columns, unnest_insert, unnest_keys
from afterglow.loyalty import domain, store
from afterglow.loyalty.models import Account, LotRow, ProgramRulesRow, Redemption

Key = tuple[str, str]  # (tenant, customer)
RedemptionKey = tuple[str, str, str]  # (tenant, customer, idempotency key)

_accounts = Account.__table__
_lots = LotRow.__table__
_redemptions = Redemption.__table__


# Locked in (tenant, customer) order, the order every lock of an account is taken in
# (store.ACCOUNTS_FOR_UPDATE): two batches, or a batch and the consumer, then wait for
# each other instead of each holding one account the other needs (a deadlock).
LOCK_ACCOUNTS = store.ACCOUNTS_FOR_UPDATE.with_only_columns(
    _accounts.c.tenant_id, _accounts.c.customer_id, _accounts.c.available, _accounts.c.pending
)

_r = unnest_keys("r", tenant_id=Text, customer_id=Text, idempotency_key=Text)
PRIOR_REDEMPTIONS = select(
    _redemptions.c.tenant_id,
    _redemptions.c.customer_id,
    _redemptions.c.idempotency_key,
    _redemptions.c.request_hash,
    _redemptions.c.response,
).join(
    _r,
    and_(
        _redemptions.c.tenant_id == _r.c.tenant_id,
        _redemptions.c.customer_id == _r.c.customer_id,
        _redemptions.c.idempotency_key == _r.c.idempotency_key,
    ),
)

_l = unnest_keys("l", tenant_id=Text, customer_id=Text)  # store.account_params
# Spending reads only the lots with points left (Wallet.redeem consumes them FIFO);
# the pending balance is the account's.
SPENDABLE_LOTS = (
    select(_lots)
    .join(_l, and_(_lots.c.tenant_id == _l.c.tenant_id, _lots.c.customer_id == _l.c.customer_id))
    .where(_lots.c.state == "available", _lots.c.remaining > 0)
)

# Not named after the columns (b_*): an UPDATE reserves those names for its SET.
_b = unnest_keys("b", tenant_id=Text, customer_id=Text, available=BigInteger)
# A redemption changes only the available balance (nothing earned, nothing pending).
SET_BALANCES = (
    update(_accounts)
    .where(_accounts.c.tenant_id == _b.c.tenant_id, _accounts.c.customer_id == _b.c.customer_id)
    .values(available=_b.c.available, updated_at=bindparam("at", type_=_accounts.c.updated_at.type))
)

REDEMPTION_COLUMNS = (
    "id",
    "tenant_id",
    "customer_id",
    "idempotency_key",
    "request_hash",
    "reward_id",
    "points",
    "code",
    "response",
    "created_at",
)
NEW_REDEMPTIONS = unnest_insert(_redemptions, REDEMPTION_COLUMNS)


async def rules_of(session: AsyncSession, tenants: Iterable[str]) -> dict[str, domain.ProgramRules]:
    """Each tenant's program (the default where it set none), one statement."""
    wanted = sorted(set(tenants))
    rows = await session.execute(
        select(ProgramRulesRow.tenant_id, ProgramRulesRow.rules).where(
            ProgramRulesRow.tenant_id.in_(wanted)
        )
    )
    found = {t: domain.ProgramRules.model_validate(r) for t, r in rows}
    return {t: found.get(t) or domain.ProgramRules() for t in wanted}


async def lock_balances(session: AsyncSession, keys: Iterable[Key]) -> dict[Key, domain.Wallet]:
    """Lock the existing accounts of ``keys`` (one statement, in (tenant, customer)
    order) and return each one's balances as an empty wallet; a missing account is
    absent from the answer."""
    rows = await session.execute(LOCK_ACCOUNTS, store.account_params(sorted(set(keys))))
    return {(t, c): domain.Wallet(available=a, pending=p) for t, c, a, p in rows}


async def prior_redemptions(
    session: AsyncSession, keys: Iterable[RedemptionKey]
) -> dict[RedemptionKey, tuple[str, dict[str, Any]]]:
    """The redemptions already made with these (tenant, customer, Idempotency-Key):
    their request hash and their answer. Read after the accounts are locked, so a
    concurrent request with the same key has committed by then."""
    rows_of = list(set(keys))
    params = {
        f"r_{c}": [k[i] for k in rows_of]
        for i, c in enumerate(("tenant_id", "customer_id", "idempotency_key"))
    }
    rows = await session.execute(PRIOR_REDEMPTIONS, params)
    return {(t, c, k): (h, response) for t, c, k, h, response in rows}


async def load_spendable_lots(session: AsyncSession, wallets: dict[Key, domain.Wallet]) -> None:
    """Put each wallet's lots with points left into it: one statement for all."""
    if not wallets:
        return
    rows = await session.execute(SPENDABLE_LOTS, store.account_params(list(wallets)))
    for row in rows:
        wallets[(row.tenant_id, row.customer_id)].lots.append(store.to_lot(row))


async def set_balances(
    session: AsyncSession, balances: dict[Key, domain.Wallet], now: datetime
) -> None:
    """Write the accounts' available balances (one statement)."""
    if balances:
        keys = sorted(balances)
        await session.execute(
            SET_BALANCES,
            {
                "b_tenant_id": [t for t, _ in keys],
                "b_customer_id": [c for _, c in keys],
                "b_available": [balances[k].available for k in keys],
                "at": now,
            },
        )


async def insert_redemptions(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """Record redemptions with their answers (one statement)."""
    if rows:
        await session.execute(NEW_REDEMPTIONS, as_columns(rows, REDEMPTION_COLUMNS))
