"""Handlers registered by catalog class: ``on(OrderPlaced, handle_order_placed)``.

A service declares its consumer groups as data, at import time::

    CONSUMERS = (
        ConsumerGroup(
            "ledger",
            on(OrderPlaced, Handlers.order_placed),
            on_batch(OrderRefunded, Handlers.orders_refunded),
            context=Handlers,
        ),
    )

so that the runtime, the deploy generator (consumer groups, topics, ACLs, autoscaler
triggers) and a reader all see the same list. The class is the key, not a type string:

* the handler is typed: ``handle_order_placed(ctx, session, event: CloudEvent[OrderPlaced])``
  and mypy checks that the function registered for ``OrderPlaced`` takes that event
  (``on(OrderFulfilled, handle_order_placed)`` does not type-check);
* it is validated: the bound handler checks that the event's data is an instance of the
  class subscribed before calling it, and a record that is not is poison
  (:class:`PermanentError`, to the DLQ), never a handler reading fields that are not there;
* a misspelt type string cannot subscribe to nothing: only catalog classes are accepted.

``ctx`` is what the handlers need (the service's dependencies); the group's ``context``
builds it once at start-up from what the service's app hands in (afterglow.kit's
``Runtime``). This module knows nothing of that object.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any, Generic, TypeVar

from sqlalchemy.ext.asyncio import AsyncSession

from afterglow.events.batch import BatchHandler, Handler
from afterglow.events.catalog import ALL_EVENT_MODELS, EventData, topic_for
from afterglow.events.envelope import CloudEvent
from afterglow.events.failures import PermanentError

Ctx = TypeVar("Ctx")
E = TypeVar("E", bound=EventData)

# The group id is "<service>.<name>" (afterglow.kit.app); Kafka allows [a-zA-Z0-9._-].
_GROUP_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")


class WrongEventData(PermanentError):
    """A handler was handed an event whose data is not the class it subscribed to."""


@dataclass(frozen=True)
class Subscription(Generic[Ctx]):
    """One catalog class and the function that handles it (one event, or a batch)."""

    event: type[EventData]
    handle: Callable[[Ctx, AsyncSession, Any], Awaitable[None]]
    batch: bool = False

    @property
    def event_type(self) -> str:
        return type_of(self.event)


def on(
    event: type[E], handle: Callable[[Ctx, AsyncSession, CloudEvent[E]], Awaitable[None]]
) -> Subscription[Ctx]:
    """``handle(ctx, session, event)`` is called for each new event of class ``event``,
    in partition order, in the consumer's transaction (afterglow.events.batch)."""
    return Subscription(_catalog_class(event), handle)


def on_batch(
    event: type[E], handle: Callable[[Ctx, AsyncSession, list[CloudEvent[E]]], Awaitable[None]]
) -> Subscription[Ctx]:
    """``handle(ctx, session, events)`` gets each run of consecutive new events of the
    class; one function registered for several classes gets them interleaved, as they
    came (it is bound once per group, so the runs are not cut at each change of type)."""
    return Subscription(_catalog_class(event), handle, batch=True)


def type_of(event: type[EventData]) -> str:
    """The CloudEvents type of a catalog class: ``OrderPlaced`` -> ``afterglow.order.placed.v1``."""
    value = event.model_fields["type"].default
    assert isinstance(value, str)
    return value


class ConsumerGroup(Generic[Ctx]):
    """One consumer group of a service: its name (the group id's suffix), the catalog
    classes it handles, and how its handlers' context is built."""

    def __init__(
        self,
        name: str,
        *subscriptions: Subscription[Ctx],
        context: Callable[[Any], Ctx],
    ) -> None:
        if not _GROUP_NAME.match(name):
            raise ValueError(f"consumer group name {name!r} must match {_GROUP_NAME.pattern}")
        if not subscriptions:
            raise ValueError(f"consumer group {name!r} handles no event")
        seen: set[type[EventData]] = set()
        for sub in subscriptions:
            # Two handlers for one type in one group: only one could be called, and
            # which one would depend on the order of this list.
            if sub.event in seen:
                raise ValueError(f"consumer group {name!r} subscribes {sub.event.__name__} twice")
            seen.add(sub.event)
        self.name = name
        self.subscriptions: tuple[Subscription[Ctx], ...] = subscriptions
        self.context = context

    def __repr__(self) -> str:
        return f"ConsumerGroup({self.name!r}, {', '.join(self.event_types)})"

    @property
    def events(self) -> tuple[type[EventData], ...]:
        return tuple(s.event for s in self.subscriptions)

    @property
    def event_types(self) -> list[str]:
        return [s.event_type for s in self.subscriptions]

    @property
    def topics(self) -> list[str]:
        """The topics this group reads: where its classes are published."""
        return sorted({topic_for(t) for t in self.event_types})

    def handlers(self, source: Any) -> dict[str, Handler]:
        """The runtime's table (event type -> handler) with the context built from
        ``source`` and bound into every handler."""
        return bind(self.subscriptions, self.context(source))


def bind(subscriptions: tuple[Subscription[Ctx], ...], ctx: Ctx) -> dict[str, Handler]:
    """Event type -> handler, each checking its events' data before calling ``handle``."""
    table: dict[str, Handler] = {}
    batches: dict[Any, BatchHandler] = {}
    for sub in subscriptions:
        if sub.batch:
            key = sub.handle
            if key not in batches:
                classes = tuple(s.event for s in subscriptions if s.handle is key and s.batch)
                batches[key] = BatchHandler(_bound_batch(sub.handle, ctx, classes))
            table[sub.event_type] = batches[key]
        else:
            table[sub.event_type] = _bound_one(sub.handle, ctx, sub.event)
    return table


def _bound_one(
    handle: Callable[[Ctx, AsyncSession, Any], Awaitable[None]], ctx: Ctx, cls: type[EventData]
) -> Callable[[AsyncSession, CloudEvent[Any]], Awaitable[None]]:
    async def handler(session: AsyncSession, event: CloudEvent[Any]) -> None:
        _check(event, (cls,))
        await handle(ctx, session, event)

    handler.__qualname__ = getattr(handle, "__qualname__", handler.__qualname__)
    return handler


def _bound_batch(
    handle: Callable[[Ctx, AsyncSession, Any], Awaitable[None]],
    ctx: Ctx,
    classes: tuple[type[EventData], ...],
) -> Callable[[AsyncSession, list[CloudEvent[Any]]], Awaitable[None]]:
    async def handler(session: AsyncSession, events: list[CloudEvent[Any]]) -> None:
        for event in events:
            _check(event, classes)
        await handle(ctx, session, events)

    handler.__qualname__ = getattr(handle, "__qualname__", handler.__qualname__)
    return handler


def _check(event: CloudEvent[Any], classes: tuple[type[EventData], ...]) -> None:
    if not isinstance(event.data, classes):
        wanted = " or ".join(c.__name__ for c in classes)
        raise WrongEventData(
            f"event {event.id} of type {event.type} carries {type(event.data).__name__}, "
            f"not {wanted}"
        )


def _catalog_class(event: type[E]) -> type[E]:
    if event not in ALL_EVENT_MODELS:
        raise TypeError(f"{event!r} is not a class of afterglow.events.catalog")
    return event
