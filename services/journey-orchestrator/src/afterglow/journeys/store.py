"""Persistence of the journey engine, in sets: load what :mod:`engine` needs for a
whole batch with one query per table, and write back what it decided (state,
transitions, timers, outbox events, profiles) with one statement per table, in the
caller's transaction.

Event handlers, the timer loop and the migrate endpoint all go through
:class:`Changes`, so every path writes the same rows and emits the same events.

Lock order (prevents deadlocks and lost updates): profile rows, then instance rows,
then timer rows; within a table rows are locked sorted by (tenant, customer)
(``ORDER BY ... FOR UPDATE`` locks in the sorted order). Event handlers wait for
locks; the timer loop never waits (``SKIP LOCKED`` on profiles and instances, and it
holds only timer rows before them), so a handler, the timer loop and a second replica
can never wait on each other in a cycle, and a customer is only ever changed by the
transaction that holds their profile row.

Statements are built once at import: each is one SQL text whatever the batch size
(rows travel as one JSON document unpacked by ``jsonb_to_recordset``, keys as
``unnest`` arrays), so PostgreSQL and SQLAlchemy prepare and compile each once.
"""

from __future__ import annotations

import functools
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import (
    BigInteger,
    Boolean,
    DateTime,
    Integer,
    SmallInteger,
    Text,
    bindparam,
    case,
    cast,
    func,
    literal,
    literal_column,
    select,
    text,
    update,
)
from sqlalchemy.dialects.postgresql import ARRAY, JSONB
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncSession, async_sessionmaker

from afterglow.events import Outbox, OutboxRow, derived_event_id, outbox_row
from afterglow.events import catalog as c
from afterglow.events.batch import json_rows, write_params, writes_in_one_statement
from afterglow.events.tracing import current
from afterglow.events.trusted import construct
from afterglow.journeys import engine as d
from afterglow.journeys.models import (
    SCHEMA,
    CustomerProfile,
    GoalConversion,
    JourneyDefinition,
    JourneyInstance,
    JourneyTimer,
    JourneyTransition,
)

SOURCE = "journeys"
MESSAGE_KINDS = set(c.MessageKind.__args__)  # type: ignore[attr-defined]
# The most recent instances of a customer the engine sees (goals, re-entry); older
# ones are finished history.
INSTANCES_PER_CUSTOMER = 50

Key = tuple[str, str]  # (tenant_id, customer_id)
TS = DateTime(timezone=True)
TEXTS = ARRAY(Text)


# --- definitions -----------------------------------------------------------------------


_TENANTS_WITH_DEFINITIONS: set[str] = set()


async def ensure_default(session: AsyncSession, tenant_id: str, now: datetime) -> None:
    """Every tenant starts with DESIGN.md's journey as ``default`` v1, active."""
    await ensure_defaults(session, [tenant_id], now)


async def ensure_defaults(
    session: AsyncSession,
    tenants: Iterable[str],
    now: datetime,
    *,
    apart: async_sessionmaker[AsyncSession] | None = None,
) -> None:
    """:func:`ensure_default` for a set of tenants: one query for those not seen yet.

    Definitions are never deleted, so a tenant seen with one needs no further check
    (saves a query per batch).

    ``apart`` (the consumer's batches): the missing defaults are inserted in a short
    transaction of their own, committed before this returns; ``session`` reads them
    at its next statement (read committed). Inserted in the batch's transaction, their
    keys were held until the whole batch committed, and the batch of every other
    partition of the same new tenant waited on them: a new shop's first poll was
    applied one partition at a time (4 waits, 0.6 s of server time, in the bench's
    15,000 order.placed). The defaults are the same whoever inserts them, so they stay
    if the batch then rolls back."""
    unseen = sorted(set(tenants) - _TENANTS_WITH_DEFINITIONS)
    if not unseen:
        return
    have = set(
        (
            await session.scalars(
                select(JourneyDefinition.tenant_id)
                .where(JourneyDefinition.tenant_id.in_(unseen))
                .distinct()
            )
        ).all()
    )
    _TENANTS_WITH_DEFINITIONS.update(have)
    missing = [t for t in unseen if t not in have]
    if not missing:
        return
    insert = _insert_defaults(missing, now)
    if apart is None:
        await session.execute(insert)
        return
    async with apart.begin() as own:
        await own.execute(insert)
    _TENANTS_WITH_DEFINITIONS.update(missing)


def _insert_defaults(tenants: list[str], now: datetime) -> Any:
    body = d.DEFAULT_JOURNEY.model_dump(mode="json")
    return (
        pg_insert(JourneyDefinition)
        .values(
            [
                dict(
                    tenant_id=t,
                    name="default",
                    version=1,
                    body=body,
                    active=True,
                    created_at=now,
                    activated_at=now,
                )
                for t in tenants
            ]
        )
        .on_conflict_do_nothing()
    )


async def active_journeys(
    session: AsyncSession, tenant_id: str
) -> dict[str, tuple[int, d.Journey]]:
    return (await tenant_journeys(session, [tenant_id], []))[tenant_id].active_with_bodies()


_VERSIONS: dict[tuple[str, str, int], d.Journey] = {}


def _remember(key: tuple[str, str, int], body: Any) -> d.Journey:
    if len(_VERSIONS) > 10_000:
        _VERSIONS.clear()
    _VERSIONS[key] = d.parse_journey(body)
    return _VERSIONS[key]


async def journey_version(
    session: AsyncSession, tenant_id: str, name: str, version: int
) -> d.Journey:
    # A stored version never changes, so it is read and validated once per process.
    key = (tenant_id, name, version)
    if key in _VERSIONS:
        return _VERSIONS[key]
    body = await session.scalar(
        select(JourneyDefinition.body).where(
            JourneyDefinition.tenant_id == tenant_id,
            JourneyDefinition.name == name,
            JourneyDefinition.version == version,
        )
    )
    if body is None:
        raise LookupError(f"journey {name!r} v{version} is not stored")
    return _remember(key, body)


@dataclass
class TenantJourneys:
    """A tenant's active versions and every version its loaded instances run on."""

    journeys: dict[tuple[str, int], d.Journey]
    active: dict[str, int]

    def active_with_bodies(self) -> dict[str, tuple[int, d.Journey]]:
        return {n: (v, self.journeys[(n, v)]) for n, v in self.active.items()}


_ACTIVE = select(
    JourneyDefinition.tenant_id, JourneyDefinition.name, JourneyDefinition.version
).where(
    JourneyDefinition.tenant_id == func.any(bindparam("tenants", type_=TEXTS)),
    JourneyDefinition.active.is_(True),
)
_WANTED = (
    func.unnest(
        bindparam("t", type_=TEXTS),
        bindparam("n", type_=TEXTS),
        bindparam("v", type_=ARRAY(Integer)),
    )
    .table_valued("t", "n", "v")
    .render_derived(name="wanted")
)
_BODIES = select(
    JourneyDefinition.tenant_id,
    JourneyDefinition.name,
    JourneyDefinition.version,
    JourneyDefinition.body,
).join(
    _WANTED,
    (JourneyDefinition.tenant_id == _WANTED.c.t)
    & (JourneyDefinition.name == _WANTED.c.n)
    & (JourneyDefinition.version == _WANTED.c.v),
)


async def tenant_journeys(
    session: AsyncSession, tenants: Iterable[str], instances: Iterable[tuple[str, d.InstanceState]]
) -> dict[str, TenantJourneys]:
    """Per tenant: its active versions (one query for all tenants, as the API may have
    activated one since the last batch) and the bodies of those and of every version
    an instance in ``instances`` (tenant, state) runs on (cached; the missing ones in
    one more query)."""
    tenants = sorted(set(tenants))
    out = {t: TenantJourneys({}, {}) for t in tenants}
    wanted: set[tuple[str, str, int]] = set()
    # No tenants: only the versions the instances run on (a timer round), no query.
    for r in (await session.execute(_ACTIVE, {"tenants": tenants})).all() if tenants else []:
        out[r.tenant_id].active[r.name] = r.version
        wanted.add((r.tenant_id, r.name, r.version))
    for tenant, inst in instances:
        wanted.add((tenant, inst.journey, inst.version))
    missing = sorted(k for k in wanted if k not in _VERSIONS)
    if missing:
        rows = await session.execute(
            _BODIES,
            {
                "t": [k[0] for k in missing],
                "n": [k[1] for k in missing],
                "v": [k[2] for k in missing],
            },
        )
        for r in rows.all():
            _remember((r.tenant_id, r.name, r.version), r.body)
    for t, name, version in wanted:
        key = (t, name, version)
        if key not in _VERSIONS:
            raise LookupError(f"journey {name!r} v{version} is not stored")
        out.setdefault(t, TenantJourneys({}, {})).journeys[(name, version)] = _VERSIONS[key]
    return out


async def load_journeys_for(
    session: AsyncSession, tenant_id: str, instances: list[d.InstanceState]
) -> tuple[dict[tuple[str, int], d.Journey], dict[str, int]]:
    tj = (await tenant_journeys(session, [tenant_id], [(tenant_id, i) for i in instances]))[
        tenant_id
    ]
    return tj.journeys, tj.active


# --- sets of rows in one parameter -------------------------------------------------------


def _keys(rows: Any, *cols: str) -> Any:
    """``unnest(:tenant_ids, :customer_ids) AS name(tenant_id, customer_id)``: keys
    travel as two arrays, one statement text for any number of them."""
    return (
        func.unnest(*(bindparam(c_, type_=TEXTS) for c_ in cols))
        .table_valued(*cols)
        .render_derived(name=rows)
    )


# --- profiles --------------------------------------------------------------------------


_P = CustomerProfile.__table__
_NEW_PROFILES = _keys("k", "tenant_id", "customer_id")
_INSERT_PROFILES = (
    pg_insert(_P)
    .from_select(
        ["tenant_id", "customer_id", "state", "updated_at"],
        select(
            _NEW_PROFILES.c.tenant_id,
            _NEW_PROFILES.c.customer_id,
            text("'{}'::jsonb"),
            bindparam("now", type_=TS),
        )
        # Rows are created in the same order as they are locked below: two
        # transactions creating the same customers never wait on each other in a cycle.
        .order_by(_NEW_PROFILES.c.tenant_id, _NEW_PROFILES.c.customer_id),
    )
    .on_conflict_do_nothing()
    # The rows created: this transaction's until it commits (invisible to the others,
    # and a concurrent insert of the same customer waits on it), so they need no lock.
    .returning(_P.c.tenant_id, _P.c.customer_id)
)
_LOCK_KEYS = _keys("k", "tenant_id", "customer_id")


def _lock_profiles(skip_locked: bool) -> Any:
    # The state as text, parsed and validated in one pass (model_validate_json), as
    # _INSTANCES_BY_ID does: decoding it to dicts and validating those was ~8% of a
    # timer round.
    return (
        select(_P.c.tenant_id, _P.c.customer_id, cast(_P.c.state, Text).label("state"))
        .join(
            _LOCK_KEYS,
            (_P.c.tenant_id == _LOCK_KEYS.c.tenant_id)
            & (_P.c.customer_id == _LOCK_KEYS.c.customer_id),
        )
        .order_by(_P.c.tenant_id, _P.c.customer_id)
        .with_for_update(of=_P, skip_locked=skip_locked)
    )


_LOCK_PROFILES = {False: _lock_profiles(False), True: _lock_profiles(True)}
_PROFILE_ROWS = json_rows(
    "v",
    tenant_id=Text,
    customer_id=Text,
    orders_count=Integer,
    total_spent=BigInteger,
    currency=Text,
    first_order_at=TS,
    last_order_at=TS,
    open_tickets=Integer,
    consent=Boolean,
    timezone=Text,
    tier=Text,
    last_surveyed_at=TS,
    last_nps=SmallInteger,
    last_band=Text,
    state=JSONB,
    updated_at=TS,
)
_SAVE_PROFILES = (
    update(_P)
    .where(
        _P.c.tenant_id == _PROFILE_ROWS.c.tenant_id,
        _P.c.customer_id == _PROFILE_ROWS.c.customer_id,
    )
    .values(
        {col.key: col for col in _PROFILE_ROWS.c if col.key not in ("tenant_id", "customer_id")}
    )
)


def _split(keys: Sequence[Key]) -> dict[str, list[str]]:
    return {"tenant_id": [k[0] for k in keys], "customer_id": [k[1] for k in keys]}


async def claim_profiles(
    session: AsyncSession, keys: Iterable[Key], now: datetime
) -> tuple[dict[Key, d.Profile], set[Key]]:
    """The profiles of ``keys``, each held by this transaction: the missing ones
    created, the others locked, both in (tenant, customer) order. Returns them and
    the keys created here: a customer new to this transaction has no instance and no
    timer yet (those are only written with the profile row held), so the caller need
    not look for any."""
    ordered = sorted(set(keys))
    if not ordered:
        return {}, set()
    created = await session.execute(_INSERT_PROFILES, {**_split(ordered), "now": now})
    # A new customer's profile is the empty one its row holds ('{}'), and the row is
    # this transaction's already: only the customers who had one are locked and read.
    # (Locking the rows just created cost a lock record each in PostgreSQL.)
    profiles = {(r.tenant_id, r.customer_id): d.Profile() for r in created}
    new = set(profiles)
    if len(new) < len(ordered):
        profiles |= await _locked_profiles(session, [k for k in ordered if k not in new], False)
    return profiles, new


async def lock_profiles(
    session: AsyncSession, keys: Iterable[Key], now: datetime, *, skip_locked: bool = False
) -> dict[Key, d.Profile]:
    """Lock the profiles of ``keys`` in (tenant, customer) order, creating the missing
    ones first. With ``skip_locked`` nothing is created and a profile another
    transaction holds is left out, not waited for."""
    if not skip_locked:
        return (await claim_profiles(session, keys, now))[0]
    return await _locked_profiles(session, sorted(set(keys)), True)


async def _locked_profiles(
    session: AsyncSession, ordered: list[Key], skip_locked: bool
) -> dict[Key, d.Profile]:
    if not ordered:
        return {}
    rows = await session.execute(_LOCK_PROFILES[skip_locked], _split(ordered))
    return {
        (r.tenant_id, r.customer_id): d.Profile.model_validate_json(
            "{}" if r.state in (None, "null") else r.state
        )
        for r in rows.all()
    }


async def lock_profile(
    session: AsyncSession,
    tenant_id: str,
    customer_id: str,
    now: datetime,
    *,
    skip_locked: bool = False,
) -> d.Profile | None:
    got = await lock_profiles(session, [(tenant_id, customer_id)], now, skip_locked=skip_locked)
    return got.get((tenant_id, customer_id))


def profile_row(key: Key, p: d.Profile, now: datetime) -> dict[str, Any]:
    return dict(
        tenant_id=key[0],
        customer_id=key[1],
        orders_count=p.orders_count,
        total_spent=p.total_spent,
        currency=p.currency,
        first_order_at=p.first_order_at,
        last_order_at=p.last_order_at,
        open_tickets=len(p.open_tickets),
        consent=p.consent,
        timezone=p.timezone,
        tier=p.tier,
        last_surveyed_at=p.last_surveyed_at,
        last_nps=p.last_nps,
        last_band=p.last_band,
        # The model itself: the rows' JSON encoder (pydantic-core, afterglow.kit.db)
        # writes the same text as model_dump(mode="json") then encoding the dicts, in
        # half the time (no intermediate dicts). The engine never changes a profile it
        # returned (every projection copies), so the row says what it said here.
        state=p,
        updated_at=now,
    )


async def save_profiles(session: AsyncSession, rows: list[dict[str, Any]]) -> None:
    """One UPDATE for every profile of a batch (rows from :func:`profile_row`)."""
    if rows:
        await session.execute(_SAVE_PROFILES, {"rows": rows})


async def save_profile(
    session: AsyncSession, tenant_id: str, customer_id: str, p: d.Profile, now: datetime
) -> None:
    await save_profiles(session, [profile_row((tenant_id, customer_id), p, now)])


# --- instances -------------------------------------------------------------------------


_I = JourneyInstance.__table__
# The newest instances of each customer, locked (FOR UPDATE inside the lateral
# subquery: only instance rows are locked). Customers come sorted, so rows are locked
# in (tenant, customer) order.
_CUSTOMER_INSTANCES = {
    skip: text(
        f"""
        SELECT k.tenant_id, k.customer_id, i.state
        FROM unnest(CAST(:tenant_id AS text[]), CAST(:customer_id AS text[]))
             WITH ORDINALITY AS k(tenant_id, customer_id, n)
        CROSS JOIN LATERAL (
            SELECT state, started_at FROM "{SCHEMA}".journey_instances j
            WHERE j.tenant_id = k.tenant_id AND j.customer_id = k.customer_id
            ORDER BY j.started_at DESC
            LIMIT {INSTANCES_PER_CUSTOMER}
            FOR UPDATE{" SKIP LOCKED" if skip else ""}
        ) i
        ORDER BY k.n, i.started_at DESC
        """  # noqa: S608 - module constants only, no input
    )
    for skip in (False, True)
}


async def instances_of(
    session: AsyncSession, keys: Iterable[Key], *, skip_locked: bool = False
) -> dict[Key, list[d.InstanceState]]:
    """The newest instances of each customer, newest first, locked; one query."""
    ordered = sorted(set(keys))
    out: dict[Key, list[d.InstanceState]] = {k: [] for k in ordered}
    if not ordered:
        return out
    rows = await session.execute(_CUSTOMER_INSTANCES[skip_locked], _split(ordered))
    for r in rows.all():
        out[(r.tenant_id, r.customer_id)].append(d.InstanceState.model_validate(r.state))
    return out


async def customer_instances(
    session: AsyncSession, tenant_id: str, customer_id: str, *, skip_locked: bool = False
) -> list[d.InstanceState]:
    key = (tenant_id, customer_id)
    return (await instances_of(session, [key], skip_locked=skip_locked))[key]


_INSTANCE_KEYS = _keys("k", "tenant_id", "id")
_INSTANCES_BY_ID = (
    # The state as text, parsed and validated in one pass by pydantic
    # (model_validate_json): decoding to dicts first and validating those was 5% of
    # a timer round.
    select(_I.c.tenant_id, _I.c.id, cast(_I.c.state, Text).label("state"))
    .join(
        _INSTANCE_KEYS,
        (_I.c.tenant_id == _INSTANCE_KEYS.c.tenant_id) & (_I.c.id == _INSTANCE_KEYS.c.id),
    )
    .order_by(_I.c.tenant_id, _I.c.customer_id, _I.c.id)
    .with_for_update(of=_I, skip_locked=True)
)
_EXISTING_BY_ID = select(_I.c.tenant_id, _I.c.id).join(
    _INSTANCE_KEYS,
    (_I.c.tenant_id == _INSTANCE_KEYS.c.tenant_id) & (_I.c.id == _INSTANCE_KEYS.c.id),
)


@dataclass
class Loaded:
    """An instance read for a timer round; ``state`` moves as its timers fire."""

    tenant: str
    state: d.InstanceState


async def instances_by_id(
    session: AsyncSession, keys: Sequence[tuple[str, str]]
) -> tuple[dict[tuple[str, str], Loaded], set[tuple[str, str]]]:
    """The instances (tenant, id) locked without waiting, and the ones that exist but
    another transaction holds (their timers wait for the next round). An id in
    neither is gone."""
    if not keys:
        return {}, set()
    params = {"tenant_id": [k[0] for k in keys], "id": [k[1] for k in keys]}
    rows = (await session.execute(_INSTANCES_BY_ID, params)).all()
    got = {
        (r.tenant_id, r.id): Loaded(r.tenant_id, d.InstanceState.model_validate_json(r.state))
        for r in rows
    }
    held: set[tuple[str, str]] = set()
    if len(got) < len(keys):
        existing = (await session.execute(_EXISTING_BY_ID, params)).all()
        held = {(r.tenant_id, r.id) for r in existing} - got.keys()
    return got, held


_INSTANCE_ROWS = json_rows(
    "v",
    id=Text,
    tenant_id=Text,
    customer_id=Text,
    journey=Text,
    version=Integer,
    stage=Text,
    status=Text,
    order_id=Text,
    anchors=JSONB,
    state=JSONB,
    started_at=TS,
    updated_at=TS,
    ended_at=TS,
)
_UPSERT_INSTANCES = pg_insert(_I).from_select(
    list(_INSTANCE_ROWS.c.keys()), select(*_INSTANCE_ROWS.c)
)
_UPSERT_INSTANCES = _UPSERT_INSTANCES.on_conflict_do_update(
    index_elements=["id"],
    set_={
        k: _UPSERT_INSTANCES.excluded[k]
        for k in ("stage", "status", "anchors", "state", "updated_at", "ended_at", "version")
    },
)


# --- timers ----------------------------------------------------------------------------


_T = JourneyTimer.__table__
_TIMER_KEYS = _keys("k", "tenant_id", "instance_id")
_TIMERS_OF = select(_T.c.id, _T.c.instance_id, _T.c.state).join(
    _TIMER_KEYS,
    (_T.c.tenant_id == _TIMER_KEYS.c.tenant_id) & (_T.c.instance_id == _TIMER_KEYS.c.instance_id),
)
_TIMER_ROWS = json_rows(
    "v",
    id=Text,
    tenant_id=Text,
    customer_id=Text,
    instance_id=Text,
    kind=Text,
    key=Text,
    due_at=TS,
    payload=JSONB,
    state=Text,
    created_at=TS,
)
# A timer id already fired (same step, same due time) is not re-armed.
_INSERT_TIMERS = (
    pg_insert(_T)
    .from_select(list(_TIMER_ROWS.c.keys()), select(*_TIMER_ROWS.c))
    .on_conflict_do_nothing()
)
# Every stored timer whose state moves, in one UPDATE: (id, state read, new state)
# as arrays, each row guarded by the state it was read in (the profile lock makes that
# state current).
_MOVES = (
    func.unnest(
        bindparam("ids", type_=TEXTS),
        bindparam("from_states", type_=TEXTS),
        bindparam("to_states", type_=TEXTS),
    )
    .table_valued("id", "from_state", "to_state")
    .render_derived(name="m")
)
_MOVE_TIMERS = (
    update(_T)
    .where(_T.c.id == _MOVES.c.id, _T.c.state == _MOVES.c.from_state)
    .values(
        state=_MOVES.c.to_state,
        fired_at=case(
            (_MOVES.c.to_state == literal_column("'fired'"), bindparam("fired_at", type_=TS)),
            else_=_T.c.fired_at,
        ),
    )
)


@dataclass
class TimerRow:
    instance_id: str
    state: str  # pending, fired, cancelled
    stored: bool  # in the table before this transaction (else inserted by it)
    initial: str = ""  # the stored state as read

    def __post_init__(self) -> None:
        self.initial = self.initial or self.state


async def timers_of(
    session: AsyncSession, instances: Iterable[tuple[str, str]]
) -> dict[str, TimerRow]:
    """Every timer row of the (tenant, instance id)s, whatever its state: one query.
    A fired or cancelled id must be known too, since arming it again is a no-op."""
    ordered = sorted(set(instances))
    if not ordered:
        return {}
    rows = await session.execute(
        _TIMERS_OF,
        {"tenant_id": [k[0] for k in ordered], "instance_id": [k[1] for k in ordered]},
    )
    return {r.id: TimerRow(r.instance_id, r.state, True) for r in rows.all()}


@dataclass(frozen=True)
class Lane:
    """One of ``of`` timer loops running side by side in one process (Settings
    ``journeys_timer_lanes``): lane ``index`` claims only the timers of the customers
    whose (tenant, customer) hash falls to it. So while one lane's round waits on
    PostgreSQL another computes, and two lanes never hold timers of one customer (a
    round moves every timer of the instances it steps, so rounds sharing a customer
    could each wait for a timer row the other claimed)."""

    index: int = 0
    of: int = 1

    def __post_init__(self) -> None:
        if not 0 <= self.index < self.of:
            raise ValueError(f"lane {self.index} of {self.of}")


_PENDING = JourneyTimer.state == literal_column("'pending'")


async def claim_due_timers(
    session: AsyncSession,
    now: datetime,
    batch: int,
    tenant_id: str | None = None,
    lane: Lane = Lane(),
) -> list[Any]:
    """Lock up to ``batch`` due, pending timers (of ``lane``'s customers); rows another
    transaction holds are skipped, not waited for. The locks last until the caller's
    transaction ends."""
    return list((await session.execute(*_claim_with_binds(now, batch, tenant_id, lane))).all())


def claim_statement(
    now: datetime, batch: int, tenant_id: str | None = None, lane: Lane = Lane()
) -> Any:
    """The SELECT of :func:`claim_due_timers` with its values bound (a test reads its
    plan)."""
    statement, binds = _claim_with_binds(now, batch, tenant_id, lane)
    return statement.params(binds)


def _claim_with_binds(
    now: datetime, batch: int, tenant_id: str | None, lane: Lane
) -> tuple[Any, dict[str, Any]]:
    binds: dict[str, Any] = {"now": now}
    if tenant_id is not None:
        binds["tenant_id"] = tenant_id
    return _claim(batch, tenant_id is not None, lane), binds


@functools.cache
def _claim(batch: int, by_tenant: bool, lane: Lane) -> Any:
    """The claim, built once per batch size, tenant filter and lane (binds ``now`` and,
    ``by_tenant``, ``tenant_id``): the timer loop runs it every round, and building it
    anew each time, with SQLAlchemy's cache key of the new statement, was work a
    round repeated for the same text."""
    q = (
        select(
            JourneyTimer.id,
            JourneyTimer.tenant_id,
            JourneyTimer.customer_id,
            JourneyTimer.instance_id,
            JourneyTimer.due_at,
            JourneyTimer.kind,
            JourneyTimer.payload["traceparent"].astext.label("traceparent"),
        )
        # 'pending' is a literal, not a parameter: only then can PostgreSQL prove the
        # partial index ix_journey_timers_due (WHERE state = 'pending') matches. With a
        # bound value a generic plan scanned every pending timer and sorted them, so a
        # round cost grew with the table (27 ms per round at 200,000 pending, 3 ms at
        # 10,000); through the index the scan stops after ``batch`` due rows.
        .where(_PENDING, JourneyTimer.due_at <= bindparam("now", type_=TS))
        .order_by(JourneyTimer.due_at)
        .limit(batch)
        .with_for_update(skip_locked=True)
    )
    if by_tenant:
        q = q.where(JourneyTimer.tenant_id == bindparam("tenant_id", type_=Text))
    if lane.of > 1:
        # hashtext is an int4; shifted to be non-negative before the modulo.
        key = JourneyTimer.tenant_id + literal(":") + JourneyTimer.customer_id
        q = q.where(func.mod(cast(func.hashtext(key), BigInteger) + 2**31, lane.of) == lane.index)
    return q


# --- transitions, goals ----------------------------------------------------------------


_TRANSITION_ROWS = json_rows(
    "v",
    tenant_id=Text,
    customer_id=Text,
    instance_id=Text,
    journey=Text,
    version=Integer,
    kind=Text,
    from_stage=Text,
    to_stage=Text,
    cause=Text,
    reason=Text,
    at=TS,
)
# Rows come out of the function in array order, so ids follow the steps' order.
_INSERT_TRANSITIONS = pg_insert(JourneyTransition.__table__).from_select(
    list(_TRANSITION_ROWS.c.keys()), select(*_TRANSITION_ROWS.c)
)
_GOAL_ROWS = json_rows(
    "v",
    tenant_id=Text,
    instance_id=Text,
    customer_id=Text,
    journey=Text,
    version=Integer,
    event_id=Text,
    converted_at=TS,
    order_id=Text,
    amount_minor=BigInteger,
    currency=Text,
)
_INSERT_GOALS = (
    pg_insert(GoalConversion.__table__)
    .from_select(list(_GOAL_ROWS.c.keys()), select(*_GOAL_ROWS.c))
    .on_conflict_do_nothing()
)


def _timer_payload(s: d.InstanceState) -> dict[str, Any]:
    payload: dict[str, Any] = {"journey": s.journey, "version": s.version}
    if (traceparent := current()) is not None:
        # What scheduled it: its firing links to that trace (workers.fire_due_timers).
        payload["traceparent"] = traceparent
    return payload


# --- the changes of a batch ----------------------------------------------------------------


@dataclass
class Changes:
    """What a batch decided, gathered in memory in step order and written by
    :meth:`write` with one statement per table.

    ``timers`` must hold every timer row of the instances the steps touch that existed
    before (:func:`timers_of`); timers armed, cancelled and fired by earlier steps of
    the batch are tracked here, so each step diffs against what the database would
    hold after the steps before it."""

    outbox: Outbox
    now: datetime
    timers: dict[str, TimerRow] = field(default_factory=dict)
    instances: dict[str, dict[str, Any]] = field(default_factory=dict)
    transitions: list[dict[str, Any]] = field(default_factory=list)
    events: list[OutboxRow] = field(default_factory=list)
    goals: list[dict[str, Any]] = field(default_factory=list)
    profiles: dict[Key, dict[str, Any]] = field(default_factory=dict)
    new_timers: dict[str, dict[str, Any]] = field(default_factory=dict)
    _by_instance: dict[str, list[str]] | None = None

    def step(
        self, tenant: str, customer: str, j: d.Journey, res: d.StepResult, profile: d.Profile
    ) -> None:
        """One engine result of one instance: its row, transitions, events, timers."""
        s = res.state
        now = self.now
        self.instances[s.id] = dict(
            id=s.id,
            tenant_id=tenant,
            customer_id=customer,
            journey=s.journey,
            version=s.version,
            stage=s.stage,
            status=s.status,
            order_id=s.order_id,
            # Text in a jsonb column, read back as it is (the export shows it): kept in
            # isoformat's form, unlike the timestamptz columns below.
            anchors={k: v.isoformat() for k, v in s.anchors.items()},
            # The model, encoded with the batch's rows (see profile_row): a step's
            # result is not changed after it is written here (the next step of the
            # instance works on a copy).
            state=s,
            started_at=s.started_at,
            updated_at=now,
            ended_at=now if s.status in ("exited", "completed", "skipped") else None,
        )
        for t in res.transitions:
            self.transitions.append(
                dict(
                    tenant_id=tenant,
                    customer_id=customer,
                    instance_id=s.id,
                    journey=s.journey,
                    version=s.version,
                    kind=t.kind,
                    from_stage=t.from_stage,
                    to_stage=t.to_stage,
                    cause=t.cause,
                    reason=t.reason,
                    at=t.at,
                )
            )
            if t.kind in ("stage", "exit", "complete"):
                to = (
                    t.to_stage
                    if t.kind == "stage"
                    else ("exited" if t.kind == "exit" else "completed")
                )
                self.events.append(
                    _event(
                        _stage_changed(
                            instance_id=s.id,
                            journey=s.journey,
                            version=s.version,
                            from_stage=t.from_stage,
                            to_stage=to or "unknown",
                            cause=t.cause,
                            changed_at=t.at,
                            order_id=s.order_id,
                        ),
                        tenant,
                        customer,
                        now,
                        (s.id, "stage", t.cause, t.kind, to or ""),
                    )
                )
        for a in res.actions:
            self.events.append(_action_event(tenant, customer, now, s, a))
        self._sync_timers(tenant, customer, j, s, profile)

    def _sync_timers(
        self, tenant: str, customer: str, j: d.Journey, s: d.InstanceState, profile: d.Profile
    ) -> None:
        """Make the pending timers equal to what the state needs (engine.timers_for)."""
        wanted = {d.timer_id(s.id, t): t for t in d.timers_for(j, s, profile)}
        for tid in self._of_instance(s.id):
            row = self.timers[tid]
            if row.state == "pending" and tid not in wanted:
                self._move(tid, row, "cancelled")
        for tid, t in wanted.items():
            have = self.timers.get(tid)
            if have is not None:
                if have.state == "cancelled":
                    # A pause cancelled it and the resume wants the same timer (same
                    # step, same due time): armed again, or the stage would never come.
                    self._move(tid, have, "pending")
                continue  # pending already, or fired: a fired timer is not re-armed
            ids = self._of_instance(s.id)  # indexed before the row is added
            self.timers[tid] = TimerRow(s.id, "pending", False)
            ids.append(tid)
            self.new_timers[tid] = dict(
                id=tid,
                tenant_id=tenant,
                customer_id=customer,
                instance_id=s.id,
                kind=t.kind,
                key=t.key,
                due_at=t.due_at,
                payload=_timer_payload(s),
                state="pending",
                created_at=self.now,
            )

    def _of_instance(self, instance_id: str) -> list[str]:
        """The timer ids of one instance (an index: a scan of every timer of the batch
        per step made a batch quadratic)."""
        if self._by_instance is None:
            self._by_instance = {}
            for tid, row in self.timers.items():
                self._by_instance.setdefault(row.instance_id, []).append(tid)
        return self._by_instance.setdefault(instance_id, [])

    def _move(self, tid: str, row: TimerRow, state: str) -> None:
        row.state = state
        if not row.stored:
            self.new_timers[tid]["state"] = state

    def fire(self, timer_id: str, instance_id: str) -> None:
        """A claimed timer fires: marked fired before its step runs (unless an earlier
        step of the round cancelled it; its step still runs and finds nothing due)."""
        row = self.timers.get(timer_id)
        if row is None:
            ids = self._of_instance(instance_id)  # indexed before the row is added
            row = self.timers[timer_id] = TimerRow(instance_id, "pending", True)
            ids.append(timer_id)
        if row.state == "pending":
            self._move(timer_id, row, "fired")

    def goal(
        self,
        tenant: str,
        customer: str,
        inst: d.InstanceState,
        event_id: str,
        value: d.GoalValue | None = None,
    ) -> None:
        self.goals.append(
            dict(
                tenant_id=tenant,
                instance_id=inst.id,
                customer_id=customer,
                journey=inst.journey,
                version=inst.version,
                event_id=event_id,
                converted_at=self.now,
                order_id=value.order_id if value else None,
                amount_minor=value.amount_minor if value else None,
                currency=value.currency if value else None,
            )
        )

    def profile(self, key: Key, p: d.Profile) -> None:
        self.profiles[key] = profile_row(key, p, self.now)

    async def write(self, session: AsyncSession) -> None:
        """Every table's rows in ONE statement (:func:`_writes`): one round trip for
        the batch's writes instead of one per table (the writes are independent: no
        row is written twice, none reads another's rows)."""
        moved = [
            (tid, row.initial, row.state)
            for tid, row in self.timers.items()
            if row.stored and row.state != row.initial
        ]
        if not (
            self.profiles
            or self.instances
            or self.transitions
            or self.goals
            or moved
            or self.new_timers
            or self.events
        ):
            return
        params = {
            **write_params("profiles", {"rows": list(self.profiles.values())}),
            **write_params("instances", {"rows": list(self.instances.values())}),
            **write_params("transitions", {"rows": self.transitions}),
            **write_params("goals", {"rows": self.goals}),
            **write_params(
                "moves",
                {
                    "ids": [m[0] for m in moved],
                    "from_states": [m[1] for m in moved],
                    "to_states": [m[2] for m in moved],
                    "fired_at": self.now,
                },
            ),
            **write_params("timers", {"rows": list(self.new_timers.values())}),
            **write_params("outbox", self.outbox.params(*self.events)),
        }
        await session.execute(_writes(self.outbox.insert), params)


@functools.cache
def _writes(outbox_insert: Any) -> Any:
    """The writes of :meth:`Changes.write` as one statement, built once per outbox
    insert (its table is the service's). Written in lock order (profiles, instances,
    timers)."""
    return writes_in_one_statement(
        profiles=_SAVE_PROFILES,
        instances=_UPSERT_INSTANCES,
        transitions=_INSERT_TRANSITIONS,
        goals=_INSERT_GOALS,
        moves=_MOVE_TIMERS,
        timers=_INSERT_TIMERS,
        outbox=outbox_insert,
    )


@dataclass
class Writer:
    """Writes one customer's engine results and their events, one result at a time
    (the migrate endpoint and erasure; the hot paths use :class:`Changes` directly)."""

    session: AsyncSession
    outbox: Outbox
    tenant_id: str
    customer_id: str
    now: datetime

    async def apply(
        self, j: d.Journey, res: d.StepResult, profile: d.Profile, *, new: bool = False
    ) -> None:
        changes = Changes(
            self.outbox,
            self.now,
            await timers_of(self.session, [(self.tenant_id, res.state.id)]),
        )
        changes.step(self.tenant_id, self.customer_id, j, res, profile)
        await changes.write(self.session)

    async def goal(self, inst: d.InstanceState, event_id: str) -> None:
        changes = Changes(self.outbox, self.now)
        changes.goal(self.tenant_id, self.customer_id, inst, event_id)
        await changes.write(self.session)


# --- the events a step emits -------------------------------------------------------------


def _stage_changed(**fields: Any) -> c.JourneyStageChanged:
    """The event of a transition, validated once: the engine's own values (the
    instance's UUIDv5, the journey's and stages' names, which the definition's patterns
    allow, its version) are not validated again (afterglow.events.trusted; the
    constructor was ~4% of the engine consumer's apply). The values that came from
    outside are checked as the model would check them: the cause (a consumed event's
    id, whose envelope does not refuse control characters, or a timer's), the instant
    (a consumed event's time) and the order id. One that fails goes through the
    validating constructor, which refuses it as it always did."""
    if c.is_clean(fields["cause"], fields["changed_at"], fields["order_id"]):
        return construct(c.JourneyStageChanged, fields)
    return c.JourneyStageChanged(**fields)


def _event(
    data: Any, tenant: str, customer: str, now: datetime, parts: tuple[str, ...]
) -> OutboxRow:
    """The outbox row of an event a step emits, built without an envelope model
    (afterglow.events.outbox_row): the tenant and the customer are those of the
    consumed event or of a row written from one, the id a UUIDv5, the time the clock's
    (aware), and ``data`` a catalog model its constructor validated (or
    :func:`_stage_changed` checked)."""
    return outbox_row(
        data,
        tenant_id=tenant,
        subject=customer,
        source=SOURCE,
        id=derived_event_id(SOURCE, tenant, *parts),
        time=now,
    )


def _action_event(
    tenant: str, customer: str, now: datetime, s: d.InstanceState, a: d.ActionOut
) -> OutboxRow:
    # The request id comes from the instance and the step: a retried transaction or a
    # timer fired twice produces the same id, and the receiver de-duplicates.
    request_id = derived_event_id("journey-step", s.id, a.step)
    p = a.params
    data: Any
    if a.type == "message":
        kind = p["kind"] if p["kind"] in MESSAGE_KINDS else "custom"
        data = c.MessageRequested(
            request_id=request_id,
            kind=kind,
            template=p.get("template") or (None if kind == p["kind"] else p["kind"]),
            category=p["category"],
            order_id=p.get("order_id"),
            variables={"journey": s.journey, "stage": s.stage, "instance_id": s.id},
        )
    elif a.type == "survey":
        reminder_of = p.get("reminder_of")
        data = c.SurveyRequested(
            request_id=request_id,
            kind=p["kind"],
            order_id=p.get("order_id"),
            reminder=reminder_of is not None,
            reminder_of=derived_event_id("journey-step", s.id, reminder_of)
            if reminder_of
            else None,
            requested_at=now,
        )
    elif a.type == "request_review":
        if not p.get("order_id"):
            raise ValueError("a review is asked for an order; this instance has none")
        data = c.ReviewRequested(
            request_id=request_id,
            order_id=p["order_id"],
            requested_at=now,
            reminder=bool(p.get("reminder")),
        )
    elif a.type == "invite_referral":
        data = c.ReferralInvited(
            invited_at=now,
            reason="promoter",
            score=p.get("score"),
            journey_instance_id=s.id,
        )
    elif a.type == "escalate_support":
        data = c.SupportEscalationRequested(
            reason=p["reason"],
            requested_at=now,
            priority=p["priority"],
            order_id=p.get("order_id"),
            score=p.get("score"),
            comment=p.get("comment"),
            survey_id=p.get("survey_id"),
        )
    else:  # pragma: no cover - the engine emits only the types above
        raise ValueError(f"unknown action {a.type}")
    return _event(data, tenant, customer, now, (s.id, a.step, a.type))
