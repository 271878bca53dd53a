"""A customer's data export: what one service holds about one customer, in one shape.

The right of access (GDPR art. 15) and Shopify's mandatory ``customers/data_request``
webhook (answer within 30 days) need every service's share of a customer's data. Each
service mounts :func:`export_router` with a ``collect`` function naming its own tables;
this module fixes the route, the scope, the envelope and the row encoding, so the five
exports read alike and an operator can merge them (``afterglow customer-export``).

The scope ``customers:export`` is separate from a service's read scope: a key that reads
dashboards should not be able to pull a customer's personal data wholesale. ``*`` keys
carry it. Rows already pseudonymized by an erasure are no longer the customer's and are
not exported; secrets and token hashes are left out by each ``collect``.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Collection, Mapping, Sequence
from datetime import UTC, datetime
from typing import Annotated, Any
from urllib.parse import quote

import httpx
from fastapi import APIRouter, Depends
from fastapi.encoders import jsonable_encoder
from pydantic import BaseModel, ConfigDict, Field
from sqlalchemy import ColumnElement, FromClause, select
from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.events.privacy import is_pseudonym
from afterglow.kit.auth import Principal, require_scope
from afterglow.kit.db import Session, read_one_snapshot
from afterglow.kit.routing import service_router
from afterglow.kit.types import Id

EXPORT_SCOPE = "customers:export"
EXPORT_PATH = "/v1/customers/{customer_id}/export"

Records = dict[str, list[dict[str, Any]]]
# (session, tenant id, customer id) -> rows per table, tables named as in the database.
Collect = Callable[[AsyncSession, str, str], Awaitable[Records]]


class CustomerExport(BaseModel):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "service": "loyalty",
                    "tenant_id": "acme",
                    "customer_id": "7390123",
                    "exported_at": "2026-03-09T10:00:00Z",
                    "records": {
                        "accounts": [{"customer_id": "7390123", "available": 120}],
                        "entries": [],
                    },
                }
            ]
        }
    )

    service: str = Field(examples=["loyalty"])
    tenant_id: str = Field(examples=["acme"])
    customer_id: str = Field(examples=["7390123"])
    exported_at: datetime
    records: Records = Field(
        description="Rows per table, as stored; a table with nothing on the customer is "
        "an empty list, so an empty export says the service holds nothing.",
        examples=[{"accounts": [{"customer_id": "7390123", "balance": 120}], "entries": []}],
    )


async def rows(
    session: AsyncSession,
    table: FromClause,
    *where: ColumnElement[bool],
    exclude: Collection[str] = (),
    order_by: Collection[str] = (),
) -> list[dict[str, Any]]:
    """The rows of ``table`` matching ``where``, as JSON-ready dicts without ``exclude``
    (secrets, hashes), in ``order_by`` column order (stable exports diff well).
    ``table`` is a Table or a model's ``__table__``."""
    unknown = set(exclude) - set(table.c.keys())
    if unknown:  # a renamed secret column must not slip into exports silently
        raise ValueError(f"{table.description} has no columns {sorted(unknown)}")
    columns = [c for c in table.c if c.name not in exclude]
    stmt = select(*columns).where(*where).order_by(*(table.c[name] for name in order_by))
    return [jsonable_encoder(dict(row._mapping)) for row in await session.execute(stmt)]


async def by_customer(
    session: AsyncSession,
    tenant_id: str,
    customer_id: str,
    tables: Sequence[tuple[FromClause, Sequence[str]]],
) -> Records:
    """Tables with ``tenant_id`` and ``customer_id`` columns, each read by both, each in
    its own stable order, keyed by table name."""
    return {
        table.description: await rows(
            session,
            table,
            table.c.tenant_id == tenant_id,
            table.c.customer_id == customer_id,
            order_by=order_by,
        )
        for table, order_by in tables
    }


async def through_parent(
    session: AsyncSession,
    tenant_id: str,
    customer_id: str,
    table: FromClause,
    link: str,
    parent: FromClause,
    key: str,
    order_by: Sequence[str],
) -> list[dict[str, Any]]:
    """Rows of ``table``, which has no customer column, that are the customer's through
    a parent row: ``table.<link>`` is the ``key`` of one of the customer's ``parent``
    rows (a survey's reminders, an order's lines, a message's decisions)."""
    theirs = select(parent.c[key]).where(
        parent.c.tenant_id == tenant_id, parent.c.customer_id == customer_id
    )
    return await rows(
        session,
        table,
        table.c.tenant_id == tenant_id,
        table.c[link].in_(theirs),
        order_by=order_by,
    )


def export_router(
    service: str, collect: Collect, *, erased: Callable[[str], bool] = is_pseudonym
) -> APIRouter:
    """``GET /v1/customers/{customer_id}/export`` for ``service``, reading with ``collect``.

    ``erased`` tells the ids that stand for erased customers (the shared pseudonym, or a
    service's own marker): asked for as a customer, they export nothing."""
    router = service_router(tags=["privacy"])

    @router.get(
        EXPORT_PATH,
        response_model=CustomerExport,
        summary="Everything this service holds about a customer (data access request)",
    )
    async def export_customer(
        customer_id: Id,
        principal: Annotated[Principal, Depends(require_scope(EXPORT_SCOPE))],
        session: Session,
    ) -> CustomerExport:
        # One snapshot for every table: an order arriving mid-export shows in all of its
        # tables or in none.
        await read_one_snapshot(session)
        records = await collect(session, principal.tenant_id, customer_id)
        if erased(customer_id):
            # Erased rows carry the marker; asking for it must not bring them back.
            records = {table: [] for table in records}
        return CustomerExport(
            service=service,
            tenant_id=principal.tenant_id,
            customer_id=customer_id,
            exported_at=datetime.now(UTC),
            records=records,
        )

    return router


class ExportIncomplete(Exception):
    """Some service did not answer its share: a partial export must not pass for one."""


async def gather_exports(
    http: httpx.AsyncClient, urls: Mapping[str, str], key: str, customer_id: str
) -> dict[str, Any]:
    """Every service's export of one customer, merged under ``services``.

    ``urls`` maps service names to base URLs. All of them must answer 200 for the same
    tenant, else :class:`ExportIncomplete` names each one that did not."""
    path = EXPORT_PATH.format(customer_id=quote(customer_id, safe=""))
    headers = {"Authorization": f"Bearer {key}"}

    async def one(base: str) -> dict[str, Any]:
        r = await http.get(base.rstrip("/") + path, headers=headers)
        if r.status_code != 200:
            raise ExportIncomplete(f"answered {r.status_code}: {r.text[:300]}")
        return dict(r.json())

    names = list(urls)
    answers = await asyncio.gather(*(one(urls[n]) for n in names), return_exceptions=True)
    failed = [
        f"{name} ({urls[name]}): {type(a).__name__}: {a}"
        for name, a in zip(names, answers, strict=True)
        if isinstance(a, BaseException)
    ]
    if failed:
        raise ExportIncomplete("; ".join(failed))
    exports = {n: a for n, a in zip(names, answers, strict=True) if isinstance(a, dict)}
    tenants = {e["tenant_id"] for e in exports.values()}
    if len(tenants) != 1:  # one key is one tenant everywhere; anything else is a bug
        raise ExportIncomplete(f"the services answered for different tenants: {sorted(tenants)}")
    return {
        "tenant_id": tenants.pop(),
        "customer_id": customer_id,
        "exported_at": datetime.now(UTC).isoformat(),
        "services": {name: e["records"] for name, e in exports.items()},
    }
