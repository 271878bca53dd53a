"""Who a customer is, from the hash of their email: the console's "find a customer by
email" (scope ``orders:read``).

The caller sends the sha256 of the normalized email (``afterglow.kit.contact_hash``),
never the address: a query string ends up in access logs, a hash of an address the
caller already knows tells a log reader nothing new. The answer is the customer ids
ingest linked to it from the tenant's own orders; another tenant's links are never
read."""

from __future__ import annotations

from typing import Annotated

from fastapi import Depends, Query
from pydantic import BaseModel

from afterglow.ingest import identity_store
from afterglow.kit import openapi
from afterglow.kit.auth import Principal, require_scope
from afterglow.kit.db import Session
from afterglow.kit.routing import service_router

router = service_router(prefix="/v1", tags=["orders and support events"])

SHA256_HEX = r"^[0-9a-f]{64}$"


class CustomerMatches(BaseModel):
    customer_ids: list[str]


@router.get(
    "/customer-links",
    summary="The customer ids an email hash is linked to (scope orders:read)",
    response_model=CustomerMatches,
    responses=openapi.example(200, {"customer_ids": ["cus_42"]}),
)
async def customers_of_email(
    session: Session,
    email_hash: Annotated[str, Query(pattern=SHA256_HEX, description="sha256 hex")],
    principal: Principal = Depends(require_scope("orders:read")),
) -> CustomerMatches:
    rows = await identity_store.subjects_of_email_hash(session, principal.tenant_id, email_hash)
    return CustomerMatches(customer_ids=rows)
