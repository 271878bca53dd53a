"""Handlers registered by catalog class: typed, validated, one table per consumer group."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any, cast

import pytest
from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.events import (
    BatchHandler,
    CloudEvent,
    ConsumerGroup,
    Verdict,
    classify,
    on,
    on_batch,
)
from afterglow.events import catalog as c
from afterglow.events.subscriptions import WrongEventData

T = datetime(2026, 3, 2, 12, 0, tzinfo=UTC)
SESSION = cast(AsyncSession, object())  # handed through untouched


def placed(order_id: str = "o-1") -> CloudEvent[c.OrderPlaced]:
    data = c.OrderPlaced(
        order_id=order_id,
        platform="api",
        placed_at=T,
        customer=c.CustomerInfo(email="jo@example.com"),
        total=c.Money(amount=1000, currency="USD"),
    )
    return CloudEvent.new(data, tenant_id="t1", subject="cust-1", source="tests")


def fulfilled() -> CloudEvent[c.OrderFulfilled]:
    data = c.OrderFulfilled(order_id="o-1", fulfilled_at=T)
    return CloudEvent.new(data, tenant_id="t1", subject="cust-1", source="tests")


class Seen:
    """The context the handlers get: records what reached them."""

    built: list[Seen] = []

    def __init__(self, source: object) -> None:
        self.source = source
        self.events: list[Any] = []
        self.batches: list[list[str]] = []
        Seen.built.append(self)


async def on_placed(ctx: Seen, session: AsyncSession, event: CloudEvent[c.OrderPlaced]) -> None:
    assert session is SESSION
    ctx.events.append(event.data.order_id)  # a field only OrderPlaced has


async def on_orders(ctx: Seen, session: AsyncSession, events: list[CloudEvent[Any]]) -> None:
    ctx.batches.append([e.type for e in events])


class TestRegistration:
    def test_the_group_is_keyed_by_the_classes_cloudevents_type(self) -> None:
        group = ConsumerGroup(
            "ledger",
            on(c.OrderPlaced, on_placed),
            on_batch(c.ReviewSubmitted, on_orders),
            context=Seen,
        )
        assert group.events == (c.OrderPlaced, c.ReviewSubmitted)
        assert group.event_types == ["afterglow.order.placed.v1", "afterglow.review.submitted.v1"]
        assert group.topics == ["afterglow.orders", "afterglow.reviews"]
        assert set(group.handlers(None)) == set(group.event_types)

    def test_a_class_outside_the_catalog_is_refused(self) -> None:
        class OrderPlacedV2(c.OrderPlaced):
            pass

        with pytest.raises(TypeError, match=r"not a class of afterglow\.events\.catalog"):
            on(OrderPlacedV2, on_placed)

    def test_a_class_subscribed_twice_in_one_group_is_refused(self) -> None:
        with pytest.raises(ValueError, match="subscribes OrderPlaced twice"):
            ConsumerGroup(
                "ledger", on(c.OrderPlaced, on_placed), on(c.OrderPlaced, on_placed), context=Seen
            )

    def test_a_group_name_kafka_would_refuse_is_refused(self) -> None:
        with pytest.raises(ValueError, match="must match"):
            ConsumerGroup("led ger", on(c.OrderPlaced, on_placed), context=Seen)

    def test_a_group_without_events_is_refused(self) -> None:
        with pytest.raises(ValueError, match="handles no event"):
            ConsumerGroup("ledger", context=Seen)


class TestBoundHandlers:
    async def test_the_context_is_built_once_from_the_source_and_handed_to_each_call(
        self,
    ) -> None:
        group = ConsumerGroup("ledger", on(c.OrderPlaced, on_placed), context=Seen)
        Seen.built.clear()
        handler = group.handlers("the runtime")["afterglow.order.placed.v1"]
        assert callable(handler)
        await handler(SESSION, placed("o-1"))
        await handler(SESSION, placed("o-2"))
        [ctx] = Seen.built
        assert ctx.source == "the runtime"
        assert ctx.events == ["o-1", "o-2"]

    async def test_an_event_whose_data_is_not_the_class_subscribed_is_poison(self) -> None:
        group = ConsumerGroup("ledger", on(c.OrderPlaced, on_placed), context=Seen)
        handler = group.handlers(None)["afterglow.order.placed.v1"]
        assert callable(handler)
        # A record filed under order.placed whose data parsed as another class: the
        # handler would read fields that are not there.
        wrong = cast(CloudEvent[Any], fulfilled()).model_copy(
            update={"type": "afterglow.order.placed.v1"}
        )
        with pytest.raises(WrongEventData, match="carries OrderFulfilled, not OrderPlaced") as err:
            await handler(SESSION, wrong)
        assert classify(err.value) is Verdict.POISON

    async def test_one_batch_function_for_several_classes_is_one_handler(self) -> None:
        group = ConsumerGroup(
            "ledger",
            on_batch(c.OrderPlaced, on_orders),
            on_batch(c.OrderFulfilled, on_orders),
            context=Seen,
        )
        handlers = group.handlers(None)
        first, second = (
            handlers["afterglow.order.placed.v1"],
            handlers["afterglow.order.fulfilled.v1"],
        )
        # The same object, so the consumer hands it one run of interleaved events
        # (afterglow.events.batch groups runs by handler object).
        assert first is second and isinstance(first, BatchHandler)
        batch = group.handlers(None)["afterglow.order.placed.v1"]
        assert isinstance(batch, BatchHandler)
        await batch.apply(SESSION, [placed(), fulfilled(), placed("o-2")])
        assert Seen.built[-1].batches == [
            [
                "afterglow.order.placed.v1",
                "afterglow.order.fulfilled.v1",
                "afterglow.order.placed.v1",
            ]
        ]
        # One stranger in the run (data of a class not subscribed) and nothing is applied.
        stranger = cast(CloudEvent[Any], placed()).model_copy(
            update={"data": c.TicketResolved(ticket_id="tk-1", resolved_at=T)}
        )
        with pytest.raises(WrongEventData, match="carries TicketResolved"):
            await batch.apply(SESSION, [placed(), stranger])
        assert len(Seen.built[-1].batches) == 1
