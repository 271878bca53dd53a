"""Bearer API keys with scopes, verified by every service against its own table.

Keys look like ``agk_<key id>_<secret>``. The tenant registry (orders-ingest) issues
them and announces only their SHA-256 as ``tenant.api_key_issued`` events; every service
keeps that hash in its own ``api_keys`` table (no cross-schema reads) and compares in
constant time. The tenant of a request comes from its key, never from its body.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from fastapi import Request
from sqlalchemy import ARRAY, Column, DateTime, MetaData, Table, Text, select, update
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.ext.asyncio import AsyncEngine, AsyncSession

from afterglow.events.catalog import ApiKeyIssued, ApiKeyRevoked
from afterglow.events.envelope import CloudEvent
from afterglow.events.subscriptions import ConsumerGroup, on
from afterglow.kit import openapi
from afterglow.kit.errors import RETRY_AFTER_S, Forbidden, Unauthorized
from afterglow.kit.group_commit import GroupCommit

KEY_PREFIX = "agk_"
ALL_SCOPES = "*"


def api_keys_table(metadata: MetaData) -> Table:
    return Table(
        "api_keys",
        metadata,
        Column("key_id", Text, primary_key=True),
        Column("tenant_id", Text, nullable=False, index=True),
        Column("key_hash", Text, nullable=False),
        Column("scopes", ARRAY(Text), nullable=False),
        Column("issued_at", DateTime(timezone=True), nullable=False),
        Column("expires_at", DateTime(timezone=True)),
        Column("revoked_at", DateTime(timezone=True)),
    )


def hash_key(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


@dataclass(frozen=True)
class NewKey:
    key_id: str
    key: str  # shown once, never stored
    key_hash: str


def generate_key() -> NewKey:
    key_id = secrets.token_hex(6)
    key = f"{KEY_PREFIX}{key_id}_{secrets.token_urlsafe(32)}"
    return NewKey(key_id=key_id, key=key, key_hash=hash_key(key))


@dataclass(frozen=True)
class Principal:
    tenant_id: str
    key_id: str
    scopes: frozenset[str]

    def allows(self, scope: str) -> bool:
        return ALL_SCOPES in self.scopes or scope in self.scopes


class ApiKeyStore:
    """This service's copy of the tenants' API keys."""

    def __init__(self, table: Table) -> None:
        self.table = table

    async def save(
        self,
        session: AsyncSession,
        *,
        tenant_id: str,
        key_id: str,
        key_hash: str,
        scopes: list[str],
        issued_at: datetime,
        expires_at: datetime | None = None,
    ) -> None:
        stmt = (
            pg_insert(self.table)
            .values(
                key_id=key_id,
                tenant_id=tenant_id,
                key_hash=key_hash,
                scopes=scopes,
                issued_at=issued_at,
                expires_at=expires_at,
            )
            .on_conflict_do_nothing(index_elements=["key_id"])
        )
        await session.execute(stmt)

    async def revoke(
        self, session: AsyncSession, *, tenant_id: str, key_id: str, revoked_at: datetime
    ) -> None:
        await session.execute(
            update(self.table)
            .where(self.table.c.key_id == key_id, self.table.c.tenant_id == tenant_id)
            .values(revoked_at=revoked_at)
        )

    async def create(self, session: AsyncSession, tenant_id: str, scopes: list[str]) -> str:
        """Issue a key directly into this service's table; returns the key (tests, CLI)."""
        new = generate_key()
        await self.save(
            session,
            tenant_id=tenant_id,
            key_id=new.key_id,
            key_hash=new.key_hash,
            scopes=scopes,
            issued_at=datetime.now(UTC),
        )
        return new.key

    async def verify(self, session: AsyncSession, presented: str) -> Principal | None:
        return (await self.verify_many(session, [presented]))[0]

    async def verify_many(
        self, session: AsyncSession, presented: Sequence[str]
    ) -> list[Principal | None]:
        """Each presented key's principal, or None when it is not valid: one statement
        for all of them (the requests waiting at one moment, :func:`batched_verifier`)."""
        ids = sorted({_key_id(p) for p in presented if p.startswith(KEY_PREFIX)})
        rows = (
            {
                r.key_id: r
                for r in await session.execute(
                    select(self.table).where(self.table.c.key_id.in_(ids))
                )
            }
            if ids
            else {}
        )
        now = datetime.now(UTC)
        return [
            _principal(rows.get(_key_id(p)), p, now) if p.startswith(KEY_PREFIX) else None
            for p in presented
        ]

    # The handlers of the "tenants" consumer group (API_KEYS below): the table follows
    # the tenant registry.
    async def key_issued(self, session: AsyncSession, event: CloudEvent[ApiKeyIssued]) -> None:
        data = event.data
        await self.save(
            session,
            tenant_id=event.tenantid,
            key_id=data.key_id,
            key_hash=data.key_hash,
            scopes=list(data.scopes),
            issued_at=data.issued_at,
            expires_at=data.expires_at,
        )

    async def key_revoked(self, session: AsyncSession, event: CloudEvent[ApiKeyRevoked]) -> None:
        data = event.data
        await self.revoke(
            session, tenant_id=event.tenantid, key_id=data.key_id, revoked_at=data.revoked_at
        )


def _key_id(presented: str) -> str:
    return presented[len(KEY_PREFIX) :].split("_", 1)[0]


def _principal(row: Any, presented: str, now: datetime) -> Principal | None:
    # Compare even when the row is missing, so timing says nothing about key ids.
    expected = row.key_hash if row else hash_key("absent")
    if not hmac.compare_digest(expected, hash_key(presented)) or row is None:
        return None
    if row.revoked_at is not None or (row.expires_at is not None and row.expires_at <= now):
        return None
    return Principal(tenant_id=row.tenant_id, key_id=row.key_id, scopes=frozenset(row.scopes))


KeyVerifier = GroupCommit[str, Principal | None]


def batched_verifier(api_keys: ApiKeyStore, engine: AsyncEngine) -> KeyVerifier:
    """The keys of concurrent requests verified with one statement (a group commit of
    reads): a lookup per request cost a pool checkout, a ping, the query and a rollback,
    and under wrk at 50 connections those lookups were most of a redemption's time.
    Every request still reads the table (nothing is cached: a revocation applies to
    the next request). A database that is away is raised in each request as it is:
    the app's handlers answer it 503 with Retry-After.

    ``engine``: the writers' pool (afterglow.kit.db.writer_engine). The lookup runs in
    autocommit, one round trip: a single read needs no BEGIN and ROLLBACK around it."""

    async def verify(tokens: Sequence[str]) -> list[Principal | None]:
        async with engine.connect() as conn:
            await conn.execution_options(isolation_level="AUTOCOMMIT")
            async with AsyncSession(bind=conn) as session:
                return await api_keys.verify_many(session, tokens)

    return GroupCommit(
        verify,
        name="api-keys",
        max_waiting=VERIFY_MAX_WAITING,
        max_batch=500,
        retry_after_s=RETRY_AFTER_S,
        transient=lambda exc: exc,
    )


# Requests waiting for their key's lookup at once: far above any concurrency a process
# serves (before, each waited for a pooled connection, without bound).
VERIFY_MAX_WAITING = 10_000


def _api_keys_of(runtime: Any) -> ApiKeyStore:
    store: ApiKeyStore = runtime.api_keys
    return store


# Every service keeps its api_keys table with this group ("<service>.tenants"), which
# afterglow.kit.app adds to the service's own CONSUMERS.
API_KEYS = ConsumerGroup(
    "tenants",
    on(ApiKeyIssued, ApiKeyStore.key_issued),
    on(ApiKeyRevoked, ApiKeyStore.key_revoked),
    context=_api_keys_of,
)


def bearer_token(request: Request) -> str | None:
    header = request.headers.get("authorization", "")
    scheme, _, token = header.partition(" ")
    if scheme.lower() != "bearer" or not token:
        return None
    return token.strip()


def require_scope(scope: str) -> Any:
    """A dependency that authenticates the request and checks one scope: 401 without a
    valid key, 403 with a key that lacks the scope."""

    @openapi.answers(
        {**openapi.UNAUTHORIZED, **openapi.forbidden(scope), **openapi.UNAVAILABLE},
        security=openapi.api_key(scope),
    )
    async def dependency(request: Request) -> Principal:
        token = bearer_token(request)
        challenge = {"WWW-Authenticate": "Bearer"}
        if token is None:
            raise Unauthorized("a bearer API key is required", headers=challenge)
        runtime = request.app.state.runtime
        verifier: KeyVerifier | None = getattr(runtime, "key_verifier", None)
        if verifier is not None:
            principal = await verifier.submit(token)
        else:
            async with runtime.sessionmaker() as session:
                principal = await runtime.api_keys.verify(session, token)
        if principal is None:
            raise Unauthorized("the API key is not valid", headers=challenge)
        if not principal.allows(scope):
            raise Forbidden(f"the API key lacks the scope {scope!r}")
        return principal

    return dependency
