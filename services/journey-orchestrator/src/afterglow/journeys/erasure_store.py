"""The statements of a customer's erasure (handlers.erase) that the engine's store has
no use for: which customers a tenant-wide erasure covers, and wiping the order and its
dates from the customer's instances. In the caller's transaction, after the profile
lock (store.py's lock order)."""

from __future__ import annotations

from sqlalchemy import cast, select, update
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.journeys.models import CustomerProfile, JourneyInstance

# Merged into an erased customer's instance state (JSONB ||): their order and its dates.
ERASED_STATE_FIELDS = cast({"order_id": None, "anchors": {}}, JSONB)


async def tenant_customers(session: AsyncSession, tenant: str) -> list[str]:
    """Every customer with a profile at the tenant (a tenant-wide erasure erases each)."""
    return list(
        (
            await session.scalars(
                select(CustomerProfile.customer_id).where(CustomerProfile.tenant_id == tenant)
            )
        ).all()
    )


async def wipe_instance_orders(session: AsyncSession, tenant: str, customer: str) -> None:
    """Forget the order and its dates on every instance of the customer."""
    await session.execute(
        update(JourneyInstance)
        .where(JourneyInstance.tenant_id == tenant, JourneyInstance.customer_id == customer)
        # The state keeps its own copy of both (engine.InstanceState): wiped too.
        .values(
            order_id=None,
            anchors={},
            state=JourneyInstance.state.op("||")(ERASED_STATE_FIELDS),
        )
    )
