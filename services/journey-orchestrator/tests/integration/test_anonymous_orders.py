"""An order without a customer (a POS sale: no customer id, email or phone) reaches us
with the subject ``order:<order id>``: nobody to message, so no profile, no journey and
no contact, whatever consent a default would assume."""

from __future__ import annotations

from sqlalchemy import func, select

from afterglow.events import CloudEvent
from afterglow.events import catalog as c
from afterglow.events.batch import BatchHandler
from afterglow.journeys import handlers
from afterglow.journeys.messaging import handlers as messaging
from afterglow.journeys.messaging.models import MessageContact
from afterglow.journeys.models import CustomerProfile, JourneyInstance

from ..conftest import Orchestrator, new_customer


def placed(order_id: str, at) -> c.OrderPlaced:  # type: ignore[no-untyped-def]
    return c.OrderPlaced(
        order_id=order_id,
        platform="shopify",
        placed_at=at,
        customer=c.CustomerInfo(),
        total=c.Money(amount=1999, currency="USD"),
    )


async def rows(orch: Orchestrator, tenant: str, customer: str) -> tuple[int, int, int]:
    async with orch.runtime.sessionmaker() as s:
        counts = []
        for model in (CustomerProfile, JourneyInstance, MessageContact):
            stmt = select(func.count()).where(
                model.tenant_id == tenant, model.customer_id == customer
            )
            counts.append(int((await s.execute(stmt)).scalar_one()))
    return counts[0], counts[1], counts[2]


async def apply(orch: Orchestrator, tenant: str, subject: str, data: c.EventData) -> None:
    event = CloudEvent.new(
        data, tenant_id=tenant, subject=subject, source="tests", time=orch.clock.now()
    )
    on_placed = messaging.MESSAGING.handlers(orch.runtime)["afterglow.order.placed.v1"]
    assert isinstance(on_placed, BatchHandler)  # the contact book keeps orders in sets
    async with orch.runtime.sessionmaker.begin() as s:
        await handlers.apply_event(s, orch.runtime, event)
        if isinstance(data, c.OrderPlaced):
            await on_placed.apply(s, [event])


async def test_order_without_customer_starts_no_journey(orch: Orchestrator, tenant_id: str) -> None:
    subject = f"{c.ANONYMOUS_SUBJECT_PREFIX}shopify:4001"
    await apply(orch, tenant_id, subject, placed("shopify:4001", orch.clock.now()))
    await apply(
        orch,
        tenant_id,
        subject,
        c.OrderFulfilled(order_id="shopify:4001", fulfilled_at=orch.clock.now()),
    )
    assert await rows(orch, tenant_id, subject) == (0, 0, 0)
    # The same order with a customer does start one: the rule is the subject's.
    customer = new_customer()
    await apply(orch, tenant_id, customer, placed("shopify:4002", orch.clock.now()))
    profiles, instances, contacts = await rows(orch, tenant_id, customer)
    assert profiles == 1 and instances >= 1 and contacts == 1
