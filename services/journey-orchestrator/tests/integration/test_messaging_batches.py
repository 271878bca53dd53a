"""Messaging's consumer applies a partition batch in sets (messaging.handlers): what one
batch holds is kept as if its events came one by one, in order, each once.

The batches go through the consumer runtime's own transaction
(:func:`afterglow.events.batch.apply_in_one_transaction`: the inbox claim and the
group's registered handlers), so "in one batch" is certain rather than left to how the
broker groups records."""

from __future__ import annotations

import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import func, select, update

from afterglow.events import CloudEvent
from afterglow.events import catalog as c
from afterglow.journeys.messaging import store
from afterglow.journeys.messaging.handlers import MESSAGING
from afterglow.journeys.messaging.models import Message, MessageContact, MessageDecision

from ..batch_support import apply_batch as apply_group_batch
from ..batch_support import event
from ..conftest import Orchestrator, new_customer

INBOX = "journeys.messaging"


async def apply_batch(orch: Orchestrator, *events: CloudEvent[Any]) -> list[str]:
    return await apply_group_batch(orch, MESSAGING, INBOX, *events)


def order(order_id: str, orch: Orchestrator, amount: int, currency: str, **customer: Any) -> Any:
    return c.OrderPlaced(
        order_id=order_id,
        platform="api",
        placed_at=orch.clock.now(),
        customer=c.CustomerInfo(**customer),
        total=c.Money(amount=amount, currency=currency),
    )


async def contact(orch: Orchestrator, tenant: str, customer: str) -> MessageContact:
    async with orch.runtime.sessionmaker() as s:
        row = await s.get(MessageContact, (tenant, customer))
        assert row is not None
        return row


class TestOrdersInOneBatch:
    async def test_each_order_counts_once_and_a_later_order_fills_what_an_earlier_left_out(
        self, orch: Orchestrator
    ) -> None:
        tenant, ada, bo = f"t-{uuid.uuid4().hex[:8]}", new_customer(), new_customer()
        first = event(orch, tenant, ada, order("o-1", orch, 1000, "EUR", email="ada@x.test"))
        again = event(orch, tenant, ada, first.data)  # the platform sent it twice
        second = event(
            orch,
            tenant,
            ada,
            order("o-2", orch, 500, "EUR", phone="+14155550100", first_name="Ada"),
        )
        foreign = event(orch, tenant, ada, order("o-3", orch, 900, "USD"))
        other = event(orch, tenant, bo, order("o-4", orch, 700, "USD", email="bo@x.test"))

        applied = await apply_batch(orch, first, again, second, foreign, other)

        assert len(applied) == 5  # five distinct events; two of them carry one order
        a = await contact(orch, tenant, ada)
        assert (a.email, a.phone, a.first_name) == ("ada@x.test", "+14155550100", "Ada")
        # Three distinct orders; the total stays in the first order's currency.
        assert (a.orders_count, a.currency, a.total_spent_minor) == (3, "EUR", 1500)
        b = await contact(orch, tenant, bo)
        assert (b.orders_count, b.currency, b.total_spent_minor) == (1, "USD", 700)

        # The same order in a later batch, under a new event id: counted nowhere again.
        await apply_batch(orch, event(orch, tenant, ada, first.data))
        a = await contact(orch, tenant, ada)
        assert (a.orders_count, a.total_spent_minor) == (3, 1500)

    async def test_an_order_with_a_new_address_replaces_the_stored_one_and_unerases(
        self, orch: Orchestrator
    ) -> None:
        tenant, ada = f"t-{uuid.uuid4().hex[:8]}", new_customer()
        await apply_batch(
            orch, event(orch, tenant, ada, order("o-1", orch, 100, "EUR", email="old@x.test"))
        )
        async with orch.runtime.sessionmaker.begin() as s:
            row = await s.get(MessageContact, (tenant, ada))
            assert row is not None
            row.erased_at = orch.clock.now()
        await apply_batch(
            orch,
            event(orch, tenant, ada, order("o-2", orch, 100, "EUR", email="mid@x.test")),
            event(orch, tenant, ada, order("o-3", orch, 100, "EUR", email="new@x.test")),
        )
        a = await contact(orch, tenant, ada)
        assert (a.email, a.erased_at, a.orders_count) == ("new@x.test", None, 3)


class TestRequestsInOneBatch:
    async def test_a_request_repeated_in_the_batch_is_queued_once_and_a_later_one_waits(
        self, orch: Orchestrator
    ) -> None:
        tenant, ada = f"t-{uuid.uuid4().hex[:8]}", new_customer()
        later = orch.clock.now() + timedelta(days=2)
        welcome = c.MessageRequested(request_id="r-welcome", kind="welcome")
        check_in = c.MessageRequested(request_id="r-check-in", kind="check_in", not_before=later)

        await apply_batch(
            orch,
            event(orch, tenant, ada, welcome),
            event(orch, tenant, ada, welcome),
            event(orch, tenant, ada, check_in),
        )

        async with orch.runtime.sessionmaker() as s:
            messages = {
                m.request_id: m
                for m in (await s.scalars(select(Message).where(Message.tenant_id == tenant)))
            }
            first_decisions = [
                (message_id, decision)
                for message_id, decision in await s.execute(
                    select(MessageDecision.message_id, MessageDecision.decision)
                    .where(MessageDecision.tenant_id == tenant)
                    .order_by(MessageDecision.id)
                )
            ]
        assert sorted(messages) == ["r-check-in", "r-welcome"]
        assert messages["r-check-in"].status == "deferred"
        assert messages["r-check-in"].reason == "not_before"
        assert messages["r-check-in"].next_attempt_at == later
        # Each message's first decision is recorded once: the repeat queued nothing.
        firsts: dict[str, str] = {}
        for message_id, decision in first_decisions:
            firsts.setdefault(message_id, decision)
        assert firsts == {
            messages["r-welcome"].id: "queued",
            messages["r-check-in"].id: "deferred",
        }
        assert [d for d in first_decisions if d[1] == "queued"] == [
            (messages["r-welcome"].id, "queued")
        ]


class TestSentSettledTogether:
    async def test_only_sends_still_on_their_lease_become_sent_each_with_its_decisions_in_order(
        self, orch: Orchestrator
    ) -> None:
        # The dispatcher settles every send the provider accepted meanwhile in one
        # statement: a message still on the lease that sent it becomes sent; one a
        # later lease took over (another attempt) or an erasure suppressed is left
        # as it is, whichever other rows share the statement.
        tenant, ada = f"t-{uuid.uuid4().hex[:8]}", new_customer()
        requests = {
            name: c.MessageRequested(request_id=f"r-{name}", kind="thank_you")
            for name in ("sent", "taken_over", "erased")
        }
        await apply_batch(orch, *(event(orch, tenant, ada, r) for r in requests.values()))
        leased_until = orch.clock.now() + timedelta(days=1)  # not due: no claim takes them
        async with orch.runtime.sessionmaker.begin() as s:
            ids = {
                m.request_id.removeprefix("r-"): m.id
                for m in await s.scalars(select(Message).where(Message.tenant_id == tenant))
            }
            await s.execute(
                update(Message)
                .where(Message.tenant_id == tenant)
                .values(status="queued", reason="sending", attempts=2, next_attempt_at=leased_until)
            )
            await s.execute(
                update(Message)
                .where(Message.id == ids["erased"])
                .values(status="suppressed", reason="erased")
            )
            before = await s.scalar(
                select(func.max(MessageDecision.id)).where(MessageDecision.tenant_id == tenant)
            )

        at = orch.clock.now()
        async with orch.runtime.sessionmaker.begin() as s:
            await store.settle_sent(
                s,
                [
                    (ids["taken_over"], 1, at, "HTTP 200"),  # an earlier attempt's send
                    (ids["sent"], 2, at, "HTTP 202"),
                    (ids["erased"], 2, at, "HTTP 200"),
                ],
            )

        async with orch.runtime.sessionmaker() as s:
            rows = {
                m.id: (m.status, m.reason, m.sent_at)
                for m in await s.scalars(select(Message).where(Message.tenant_id == tenant))
            }
            decided = [
                (d.message_id, d.decision, d.reason, d.at)
                for d in await s.scalars(
                    select(MessageDecision)
                    .where(MessageDecision.tenant_id == tenant, MessageDecision.id > before)
                    .order_by(MessageDecision.id)
                )
            ]
        assert rows == {
            ids["sent"]: ("sent", None, at),
            ids["taken_over"]: ("queued", "sending", None),
            ids["erased"]: ("suppressed", "erased", None),
        }
        assert decided == [
            (ids["sent"], "sent", None, at),
            (ids["sent"], "delivered", "HTTP 202", at),
        ]
