"""The statements of a batch of redemptions (afterglow.loyalty.redemptions): each reads
or writes what the whole batch touches in one round trip, whatever its size, and a
batch makes three: lock the accounts (with the tenants' rules), read what the lock
guards (the accounts' spendable lots and the prior redemptions of the batch's keys),
write everything (:data:`write_batch`). Eleven round trips in sequence (a statement
per table, each several ms on a database sharing the machine) were what capped the
batches, so the redemptions, below 1,000 a second.

Keys travel as arrays joined with ``unnest``, so each statement has one text for every
batch size (compiled and prepared once; an ``IN`` list of tuples is a new statement for
each size). The lots and entries are written with store.py's multi-row statements.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Text,
    and_,
    any_,
    bindparam,
    cast,
    literal_column,
    null,
    select,
    union_all,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY
from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.events import Outbox
from afterglow.events.batch import (
    as_columns,
    unnest_insert,
    unnest_keys,
    write_params,
    writes_in_one_statement,
)
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
_locked = store.ACCOUNTS_FOR_UPDATE.with_only_columns(
    _accounts.c.tenant_id, _accounts.c.customer_id, _accounts.c.available, _accounts.c.pending
).cte("locked")
_rules = ProgramRulesRow.__table__
# The tenants' rules ride along with the lock (one round trip for both): they are
# not guarded by it, and a snapshot from before the lock is as good as one from a
# statement before it, which is where they were read.
LOCK_ACCOUNTS_WITH_RULES = union_all(
    select(
        literal_column("'account'").label("kind"),
        _locked.c.tenant_id,
        _locked.c.customer_id,
        _locked.c.available,
        _locked.c.pending,
        cast(null(), _rules.c.rules.type).label("rules"),
    ),
    select(
        literal_column("'rules'"),
        _rules.c.tenant_id,
        null(),
        null(),
        null(),
        _rules.c.rules,
    ).where(_rules.c.tenant_id == any_(bindparam("tenants", type_=ARRAY(Text)))),
)

# What the lock guards, read after it in its own statement: a statement's snapshot is
# taken when it starts, so lots or redemptions read in the locking statement would be
# those from before the batch that held the lock committed (its spending unseen: lots
# spent twice; its Idempotency-Keys unseen: redeemed twice). Spending reads only the
# lots with points left (Wallet.redeem consumes them FIFO); the pending balance is the
# account's. One statement for both sets: the rows of each carry their ``kind`` and
# the other's columns are NULL.
_l = unnest_keys("l", tenant_id=Text, customer_id=Text)  # store.account_params
_r = unnest_keys("r", tenant_id=Text, customer_id=Text, idempotency_key=Text)
_PRIOR_COLUMNS = ("idempotency_key", "request_hash", "response")
_GUARDED_COLUMNS = [*(c.key for c in _lots.c), *_PRIOR_COLUMNS]


def _guarded(kind: str, columns: dict[str, Any]) -> Any:
    """A select of every column of the lots and the prior redemptions, in one order,
    ``columns`` where given and NULL (of the lots' or redemptions' type) elsewhere."""

    def typed_null(name: str) -> Any:
        table = _redemptions if name in _PRIOR_COLUMNS else _lots
        return cast(null(), table.c[name].type)

    return select(
        literal_column(f"'{kind}'").label("kind"),
        *(columns.get(name, typed_null(name)).label(name) for name in _GUARDED_COLUMNS),
    )


LOTS_AND_PRIOR_REDEMPTIONS = union_all(
    _guarded("lot", {c.key: c for c in _lots.c})
    .join(_l, and_(_lots.c.tenant_id == _l.c.tenant_id, _lots.c.customer_id == _l.c.customer_id))
    .where(_lots.c.state == "available", _lots.c.remaining > 0),
    _guarded(
        "prior",
        {
            "tenant_id": _redemptions.c.tenant_id,
            "customer_id": _redemptions.c.customer_id,
            **{c: _redemptions.c[c] for c in _PRIOR_COLUMNS},
        },
    ).join(
        _r,
        and_(
            _redemptions.c.tenant_id == _r.c.tenant_id,
            _redemptions.c.customer_id == _r.c.customer_id,
            _redemptions.c.idempotency_key == _r.c.idempotency_key,
        ),
    ),
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


@functools.cache
def _write_batch(outbox_insert: Any) -> Any:
    """The batch's writes, one statement (built once per outbox table). Independent as
    writes_in_one_statement needs: lots only updated (a redemption spends existing
    lots, each once), one balance per account, new rows elsewhere."""
    return writes_in_one_statement(
        lots=store.UPSERT_LOTS,
        entries=store.NEW_ENTRIES,
        balances=SET_BALANCES,
        redemptions=NEW_REDEMPTIONS,
        outbox=outbox_insert,
    )


async def lock_balances(
    session: AsyncSession, keys: Iterable[Key], tenants: Iterable[str]
) -> tuple[dict[Key, domain.Wallet], dict[str, domain.ProgramRules]]:
    """Lock the existing accounts of ``keys`` (in (tenant, customer) order) and return
    each one's balances as an empty wallet (a missing account is absent), with each of
    ``tenants``' program (the default where it set none); one statement."""
    wanted = sorted(set(tenants))
    rows = await session.execute(
        LOCK_ACCOUNTS_WITH_RULES,
        {**store.account_params(sorted(set(keys))), "tenants": wanted},
    )
    wallets: dict[Key, domain.Wallet] = {}
    found: dict[str, domain.ProgramRules] = {}
    for kind, tenant, customer, available, pending, rules in rows:
        if kind == "account":
            wallets[(tenant, customer)] = domain.Wallet(available=available, pending=pending)
        else:
            found[tenant] = domain.ProgramRules.model_validate(rules)
    return wallets, {t: found.get(t) or domain.ProgramRules() for t in wanted}


async def load_guarded(
    session: AsyncSession, wallets: dict[Key, domain.Wallet], keys: Iterable[RedemptionKey]
) -> dict[RedemptionKey, tuple[str, dict[str, Any]]]:
    """Put each locked wallet's lots with points left into it, and return the
    redemptions already made with these (tenant, customer, Idempotency-Key): their
    request hash and their answer; one statement, after the lock (so a concurrent
    request on the account, with the same key or not, has committed by then)."""
    prior: dict[RedemptionKey, tuple[str, dict[str, Any]]] = {}
    if not wallets:
        return prior
    prior_keys = list(set(keys))
    params = {
        **store.account_params(list(wallets)),
        **{
            f"r_{c}": [k[i] for k in prior_keys]
            for i, c in enumerate(("tenant_id", "customer_id", "idempotency_key"))
        },
    }
    for row in await session.execute(LOTS_AND_PRIOR_REDEMPTIONS, params):
        if row.kind == "lot":
            wallets[(row.tenant_id, row.customer_id)].lots.append(store.to_lot(row))
        else:
            key = (row.tenant_id, row.customer_id, row.idempotency_key)
            prior[key] = (row.request_hash, row.response)
    return prior


async def write_batch(
    session: AsyncSession,
    outbox: Outbox,
    *,
    lots: list[dict[str, Any]],
    entries: list[dict[str, Any]],
    balances: dict[Key, domain.Wallet],
    redemptions: list[dict[str, Any]],
    events: list[Any],
    now: datetime,
) -> None:
    """Write the batch: touched lots, entries, the accounts' available balances, the
    redemptions with their answers and the events, in one statement. Nothing made
    (every request replayed or refused): no statement."""
    if not redemptions:
        return
    keys = sorted(balances)
    await session.execute(
        _write_batch(outbox.insert),
        {
            **write_params("lots", as_columns(lots, store.LOT_COLUMNS)),
            **write_params("entries", as_columns(entries, store.ENTRY_COLUMNS)),
            **write_params(
                "balances",
                {
                    "b_tenant_id": [t for t, _ in keys],
                    "b_customer_id": [c for _, c in keys],
                    "b_available": [balances[k].available for k in keys],
                    "at": now,
                },
            ),
            **write_params("redemptions", as_columns(redemptions, REDEMPTION_COLUMNS)),
            **write_params("outbox", outbox.params(*events)),
        },
    )
