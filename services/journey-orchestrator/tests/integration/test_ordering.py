"""Redelivered and out-of-order events on the real broker."""

from __future__ import annotations

from datetime import timedelta

from afterglow.events import CloudEvent, to_record
from afterglow.events import catalog as c

from ..conftest import DAY, Orchestrator, new_customer, order_placed


async def test_duplicate_events_apply_once(orch: Orchestrator, tenant_id: str) -> None:
    h = await orch.headers(tenant_id)
    customer = new_customer()
    placed = order_placed("dup-1", orch.clock.now())
    for _ in range(3):  # the same event id, as a retrying producer would send it
        await orch.publish(tenant_id, customer, placed, id=f"evt-{customer}")
    j = await orch.until(
        tenant_id, customer, h, lambda j: bool(j) and j["instances"][0]["stage"] == "onboarding"
    )
    await orch.tap.events(settle=1.0)
    assert len(j["instances"]) == 1
    assert j["profile"]["orders_count"] == 1
    welcomes = {
        e.id for e in orch.seen(tenant_id, customer) if getattr(e.data, "kind", None) == "welcome"
    }
    assert len(welcomes) == 1


async def test_delivered_before_placed_anchors_the_check_in(
    orch: Orchestrator, tenant_id: str
) -> None:
    h = await orch.headers(tenant_id)
    customer = new_customer()
    delivered_at = orch.clock.now() - timedelta(hours=2)
    await orch.publish(
        tenant_id,
        customer,
        c.OrderDelivered(order_id="ooo-1", delivered_at=delivered_at, reported_by="aftership"),
    )
    await orch.until(tenant_id, customer, h, lambda j: bool(j) and j["profile"] is not None)
    await orch.publish(
        tenant_id, customer, order_placed("ooo-1", orch.clock.now() - timedelta(days=1))
    )
    j = await orch.until(
        tenant_id,
        customer,
        h,
        lambda j: bool(j["instances"]) and j["instances"][0]["next_timer"] is not None,
    )
    due = j["instances"][0]["next_timer"]["due_at"]
    assert due.startswith((delivered_at + 3 * DAY).isoformat()[:19])


async def test_refund_before_placed_never_starts_messaging(
    orch: Orchestrator, tenant_id: str
) -> None:
    h = await orch.headers(tenant_id)
    customer = new_customer()
    refund = c.OrderRefunded(
        order_id="r-1",
        refund_id="rf",
        refunded_at=orch.clock.now(),
        amount=c.Money(amount=100, currency="USD"),
        full=True,
    )
    await orch.publish(tenant_id, customer, refund)
    await orch.until(tenant_id, customer, h, lambda j: bool(j) and j["profile"] is not None)
    await orch.publish(tenant_id, customer, order_placed("r-1", orch.clock.now()))
    j = await orch.until(tenant_id, customer, h, lambda j: bool(j["instances"]))
    assert j["instances"][0]["status"] == "exited"
    await orch.tap.events(settle=0.5)
    assert not [
        e for e in orch.seen(tenant_id, customer) if e.type == "afterglow.message.requested.v1"
    ]


async def test_repeat_order_restarts_onboarding_without_a_second_survey(
    orch: Orchestrator, tenant_id: str
) -> None:
    h = await orch.headers(tenant_id)
    customer = new_customer()
    now = orch.clock.now()
    await orch.publish(tenant_id, customer, order_placed("first", now))
    await orch.publish(
        tenant_id, customer, c.OrderDelivered(order_id="first", delivered_at=now, reported_by="api")
    )
    await orch.until(
        tenant_id, customer, h, lambda j: bool(j) and j["instances"][0]["next_timer"] is not None
    )
    orch.clock.advance(7 * DAY)
    await orch.out(tenant_id, customer, lambda e: e.type == "afterglow.survey.requested.v1")
    now = orch.clock.now()
    await orch.publish(tenant_id, customer, order_placed("second", now))
    await orch.out(tenant_id, customer, lambda e: getattr(e.data, "kind", None) == "thank_you")
    await orch.publish(
        tenant_id,
        customer,
        c.OrderDelivered(order_id="second", delivered_at=now, reported_by="api"),
    )
    j = await orch.until(tenant_id, customer, h, lambda j: len(j["instances"]) == 2)
    old = next(i for i in j["instances"] if i["order_id"] == "first")
    assert old["status"] == "exited" and old["exit_reason"] == "superseded by a new order"
    orch.clock.advance(8 * DAY)  # the second order's survey is due, inside the 30-day window
    j = await orch.until(
        tenant_id,
        customer,
        h,
        lambda j: any(
            x["kind"] == "skip" and x["to_stage"] == "survey" for x in j["instances"][0]["history"]
        ),
    )
    surveys = {
        e.id for e in orch.seen(tenant_id, customer) if e.type == "afterglow.survey.requested.v1"
    }
    assert len(surveys) == 1


async def test_erasure_stops_the_journey_and_wipes_the_profile(
    orch: Orchestrator, tenant_id: str
) -> None:
    h = await orch.headers(tenant_id)
    customer = new_customer()
    now = orch.clock.now()
    await orch.publish(tenant_id, customer, order_placed("e-1", now))
    await orch.publish(
        tenant_id, customer, c.OrderDelivered(order_id="e-1", delivered_at=now, reported_by="api")
    )
    await orch.until(
        tenant_id, customer, h, lambda j: bool(j) and j["instances"][0]["next_timer"] is not None
    )
    await orch.publish(tenant_id, customer, c.CustomerErasureRequested(requested_at=now))
    j = await orch.until(tenant_id, customer, h, lambda j: j["instances"][0]["status"] == "exited")
    inst = j["instances"][0]
    assert inst["exit_reason"] == "erasure requested" and inst["next_timer"] is None
    assert inst["order_id"] is None and inst["anchors"] == {}
    assert j["profile"]["timezone"] is None and j["profile"]["consent"] is False
    assert j["profile"]["orders_count"] == 1  # aggregates remain


async def test_placed_and_refunded_in_one_batch_apply_in_order_and_exit(
    orch: Orchestrator, tenant_id: str
) -> None:
    """One produce request, one fetch, one transaction for both: the refund sees the
    instance its order started a moment earlier in the same transaction."""
    h = await orch.headers(tenant_id)
    customer = new_customer()
    now = orch.clock.now()
    events = [
        CloudEvent.new(data, tenant_id=tenant_id, subject=customer, source="tests", time=now)
        for data in (
            order_placed("b-1", now),
            c.OrderDelivered(order_id="b-1", delivered_at=now, reported_by="api"),
            c.OrderRefunded(
                order_id="b-1",
                refund_id="rf-b-1",
                refunded_at=now,
                amount=c.Money(amount=5000, currency="USD"),
                full=True,
            ),
        )
    ]
    for e in events:
        r = to_record(e)
        await orch.producer.send(r.topic, r.value, key=r.key, headers=r.headers)
    await orch.producer.flush()
    j = await orch.until(
        tenant_id, customer, h, lambda j: bool(j) and j["instances"][0]["status"] == "exited"
    )
    inst = j["instances"][0]
    assert len(j["instances"]) == 1
    assert inst["next_timer"] is None, "the check-in the delivery scheduled is cancelled"
    assert inst["history"][0]["cause"] == events[0].id
    assert inst["history"][-1]["cause"] == events[2].id
    assert j["profile"]["orders_count"] == 1
