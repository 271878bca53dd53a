"""The engine applies a partition batch in sets (handlers.apply_events): what one batch
holds is applied as if its events came one by one, in order, each once.

The batches here go through the consumer runtime's own transaction
(:func:`afterglow.events.batch.apply_in_one_transaction`, the inbox claim and the
engine's registered handlers), so "in one batch" is certain rather than left to how the
broker groups records; the broker path is covered by test_ordering and test_replicas."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import func, select

from afterglow.events import CloudEvent
from afterglow.events import catalog as c
from afterglow.events.batch import apply_in_one_transaction, inbox_claim
from afterglow.journeys import store
from afterglow.journeys.handlers import ENGINE as ENGINE_GROUP
from afterglow.journeys.models import (
    CustomerProfile,
    JourneyInstance,
    JourneyTimer,
    JourneyTransition,
)

from ..batch_support import apply_batch as apply_group_batch
from ..batch_support import event
from ..conftest import Orchestrator, new_customer, order_placed

# The engine's inbox name: a batch applied here is one the live consumer skips.
ENGINE = "journeys.engine"


async def apply_batch(orch: Orchestrator, *events: CloudEvent[Any]) -> list[str]:
    return await apply_group_batch(orch, ENGINE_GROUP, ENGINE, *events)


async def transitions(orch: Orchestrator, tenant: str, customer: str) -> list[tuple[str, str]]:
    async with orch.runtime.sessionmaker() as s:
        rows = await s.execute(
            select(JourneyTransition.kind, JourneyTransition.cause)
            .where(JourneyTransition.tenant_id == tenant, JourneyTransition.customer_id == customer)
            .order_by(JourneyTransition.id)
        )
        return [(r.kind, r.cause) for r in rows]


async def profile_state(orch: Orchestrator, tenant: str, customer: str) -> dict[str, Any]:
    async with orch.runtime.sessionmaker() as s:
        row = await s.get(CustomerProfile, (tenant, customer))
        assert row is not None
        return row.state


async def instances(orch: Orchestrator, tenant: str, customer: str) -> list[JourneyInstance]:
    async with orch.runtime.sessionmaker() as s:
        rows = await s.scalars(
            select(JourneyInstance)
            .where(JourneyInstance.tenant_id == tenant, JourneyInstance.customer_id == customer)
            .order_by(JourneyInstance.started_at)
        )
        return list(rows.all())


async def pending_timers(orch: Orchestrator, tenant: str, customer: str) -> int:
    async with orch.runtime.sessionmaker() as s:
        return int(
            await s.scalar(
                select(func.count())
                .select_from(JourneyTimer)
                .where(
                    JourneyTimer.tenant_id == tenant,
                    JourneyTimer.customer_id == customer,
                    JourneyTimer.state == "pending",
                )
            )
            or 0
        )


class TestDuplicates:
    async def test_a_duplicate_in_the_batch_and_one_applied_before_are_applied_once(
        self, orch: Orchestrator, tenant_id: str
    ) -> None:
        customer = new_customer()
        now = orch.clock.now()
        first = event(orch, tenant_id, customer, order_placed(f"o1-{customer}", now))
        second = event(orch, tenant_id, customer, order_placed(f"o2-{customer}", now))
        assert await apply_batch(orch, first) == [first.id]

        # first again (applied before), second twice in the same batch
        applied = await apply_batch(orch, first, second, second)

        assert applied == [second.id]
        prof = await profile_state(orch, tenant_id, customer)
        assert prof["orders_count"] == 2
        assert prof["spent"] == {"USD": 10000}
        rows = await instances(orch, tenant_id, customer)
        assert len(rows) == 2
        ts = await transitions(orch, tenant_id, customer)
        # one onboarding per order; the repeat order restarts the journey (re-entry)
        assert [t for t in ts if t[0] == "stage"] == [("stage", first.id), ("stage", second.id)]
        assert ts.count(("exit", second.id)) == 1
        # Both started at the same instant (the clock does not move): by order, not by
        # started_at, whose tie PostgreSQL breaks either way.
        assert sorted((r.order_id, r.status) for r in rows) == [
            (f"o1-{customer}", "exited"),
            (f"o2-{customer}", "running"),
        ]

    async def test_a_batch_of_many_customers_moves_each_once(
        self, orch: Orchestrator, tenant_id: str
    ) -> None:
        customers = [new_customer() for _ in range(30)]
        now = orch.clock.now()
        batch = [event(orch, tenant_id, cu, order_placed(f"o-{cu}", now)) for cu in customers]
        assert await apply_batch(orch, *batch, *batch[:10]) == [e.id for e in batch]
        for cu in customers:
            assert (await profile_state(orch, tenant_id, cu))["orders_count"] == 1
            assert [r.stage for r in await instances(orch, tenant_id, cu)] == ["onboarding"]


class TestNewAndKnownCustomers:
    async def test_a_batch_of_new_and_known_customers_reads_the_known_ones_state(
        self, orch: Orchestrator, tenant_id: str
    ) -> None:
        """The profiles a batch creates are new (no instance to read); the others are
        read as stored: a known customer's repeat order, next to new customers in one
        batch, still finds the instance of their first order and restarts it."""
        now = orch.clock.now()
        known, new_ones = new_customer(), [new_customer() for _ in range(3)]
        first = event(orch, tenant_id, known, order_placed(f"o1-{known}", now))
        await apply_batch(orch, first)
        repeat = event(orch, tenant_id, known, order_placed(f"o2-{known}", now))
        batch = [event(orch, tenant_id, cu, order_placed(f"o-{cu}", now)) for cu in new_ones]

        assert await apply_batch(orch, batch[0], repeat, *batch[1:]) == [
            batch[0].id,
            repeat.id,
            *(e.id for e in batch[1:]),
        ]

        assert (await profile_state(orch, tenant_id, known))["orders_count"] == 2
        assert sorted((r.order_id, r.status) for r in await instances(orch, tenant_id, known)) == [
            (f"o1-{known}", "exited"),
            (f"o2-{known}", "running"),
        ]
        assert ("exit", repeat.id) in await transitions(orch, tenant_id, known)
        for cu in new_ones:
            assert (await profile_state(orch, tenant_id, cu))["orders_count"] == 1
            assert [(r.stage, r.status) for r in await instances(orch, tenant_id, cu)] == [
                ("onboarding", "running")
            ]


class TestANewTenant:
    async def test_batches_of_two_partitions_do_not_wait_for_each_other(
        self, orch: Orchestrator, tenant_id: str
    ) -> None:
        """The first batch of a tenant never seen before is still open when batches of
        other partitions run, in this process and in one that never saw the tenant
        (a second replica): each applies at once. The default journey the first batch
        created was committed apart; inserted inside its transaction, the others'
        inserts of it waited until that batch committed."""
        now = orch.clock.now()
        first, second, third = (new_customer() for _ in range(3))
        opening = event(orch, tenant_id, first, order_placed(f"o-{first}", now))
        handlers = ENGINE_GROUP.handlers(orch.runtime)
        claim = inbox_claim(orch.runtime.tables.inbox)
        async with orch.runtime.sessionmaker.begin() as held:
            await apply_in_one_transaction(held, claim, ENGINE, [(opening, handlers[opening.type])])
            for customer, replica in ((second, False), (third, True)):
                if replica:
                    store._TENANTS_WITH_DEFINITIONS.discard(tenant_id)
                e = event(orch, tenant_id, customer, order_placed(f"o-{customer}", now))
                async with asyncio.timeout(10):
                    assert await apply_batch(orch, e) == [e.id]
                assert [r.stage for r in await instances(orch, tenant_id, customer)] == [
                    "onboarding"
                ]
        assert [r.stage for r in await instances(orch, tenant_id, first)] == ["onboarding"]


class TestOneCustomerTwiceInABatch:
    async def test_placed_then_refunded_in_one_batch_exits_the_journey(
        self, orch: Orchestrator, tenant_id: str
    ) -> None:
        customer = new_customer()
        now = orch.clock.now()
        order = f"o-{customer}"
        placed = event(orch, tenant_id, customer, order_placed(order, now))
        refunded = event(
            orch,
            tenant_id,
            customer,
            c.OrderRefunded(
                order_id=order,
                refund_id="rf-1",
                refunded_at=now,
                amount=c.Money(amount=5000, currency="USD"),
                full=True,
            ),
        )

        assert await apply_batch(orch, placed, refunded) == [placed.id, refunded.id]

        (inst,) = await instances(orch, tenant_id, customer)
        assert inst.status == "exited"
        assert inst.stage == "onboarding"  # the welcome ran first: placed came first
        ts = await transitions(orch, tenant_id, customer)
        assert [t for t in ts if t[0] in ("stage", "exit")] == [
            ("stage", placed.id),
            ("exit", refunded.id),
        ]
        assert ts[-1] == ("exit", refunded.id)
        assert await pending_timers(orch, tenant_id, customer) == 0
        prof = await profile_state(orch, tenant_id, customer)
        assert set(prof["orders"][order]) == {
            "afterglow.order.placed.v1",
            "afterglow.order.refunded.v1",
        }

    async def test_refunded_then_placed_in_one_batch_never_starts_messaging(
        self, orch: Orchestrator, tenant_id: str
    ) -> None:
        customer = new_customer()
        now = orch.clock.now()
        order = f"o-{customer}"
        refunded = event(
            orch,
            tenant_id,
            customer,
            c.OrderRefunded(
                order_id=order,
                refund_id="rf-1",
                refunded_at=now,
                amount=c.Money(amount=5000, currency="USD"),
                full=True,
            ),
        )
        placed = event(orch, tenant_id, customer, order_placed(order, now))

        await apply_batch(orch, refunded, placed)

        (inst,) = await instances(orch, tenant_id, customer)
        assert inst.status == "exited"
        assert inst.stage is None
        assert await transitions(orch, tenant_id, customer) == [("exit", placed.id)]
