"""The default journey end to end: catalog events in through the broker, the timer loop
on a ManualClock, requests out through the outbox to the broker."""

from __future__ import annotations

import asyncio
from typing import Any

import pytest

from afterglow.events import catalog as c
from afterglow.events.catalog import MessageRequested, ReviewRequested

from ..conftest import DAY, Orchestrator, new_customer, order_placed


def kind(e: Any) -> str | None:
    """What the customer is asked: a message's kind, or the review ask, which feedback
    turns into the message because it owns the review link."""
    if isinstance(e.data, ReviewRequested):
        return "review_reminder" if e.data.reminder else "review_request"
    return getattr(e.data, "kind", None) if isinstance(e.data, MessageRequested) else None


def has_stage(stage: str) -> Any:
    return lambda j: bool(j) and j["instances"][0]["stage"] == stage


async def placed_and_delivered(
    orch: Orchestrator, tenant: str, customer: str, h: dict[str, str]
) -> str:
    """An order placed and delivered now, its check-in timer scheduled. Returns its id."""
    order = f"o-{customer}"
    now = orch.clock.now()
    await orch.publish(tenant, customer, order_placed(order, now))
    await orch.publish(
        tenant, customer, c.OrderDelivered(order_id=order, delivered_at=now, reported_by="api")
    )
    await orch.until(
        tenant, customer, h, lambda j: bool(j) and j["instances"][0]["next_timer"] is not None
    )
    return order


async def run_to_survey(orch: Orchestrator, tenant: str, customer: str, h: dict[str, str]) -> str:
    """Placed -> welcome; delivered; +3d check-in; +4d survey request. Returns order id."""
    order = f"o-{customer}"
    now = orch.clock.now()
    await orch.publish(tenant, customer, order_placed(order, now))
    await orch.out(tenant, customer, lambda e: kind(e) == "welcome")
    await orch.publish(
        tenant, customer, c.OrderDelivered(order_id=order, delivered_at=now, reported_by="api")
    )
    await orch.until(
        tenant,
        customer,
        h,
        lambda j: bool(j) and "afterglow.order.delivered.v1" in j["instances"][0]["anchors"],
    )
    orch.clock.advance(3 * DAY)
    await orch.out(tenant, customer, lambda e: kind(e) == "check_in")
    orch.clock.advance(4 * DAY)
    await orch.out(tenant, customer, lambda e: e.type == "afterglow.survey.requested.v1")
    return order


async def answer(orch: Orchestrator, tenant: str, customer: str, score: int, band: str) -> None:
    # As feedback would: the answer to the survey the journey requested.
    await orch.publish(
        tenant,
        customer,
        c.SurveyResponded(
            survey_id=f"s-{customer}",
            kind="nps",
            score=score,
            band=band,
            responded_at=orch.clock.now(),
        ),
    )


@pytest.mark.parametrize(("score", "band"), [(10, "promoter"), (8, "passive"), (3, "detractor")])
async def test_whole_default_journey_by_band(
    orch: Orchestrator, tenant_id: str, score: int, band: str
) -> None:
    customer = new_customer()
    h = await orch.headers(tenant_id)
    await run_to_survey(orch, tenant_id, customer, h)
    await answer(orch, tenant_id, customer, score, band)
    await orch.until(tenant_id, customer, h, lambda j: j["instances"][0]["band"] == band)
    if band == "detractor":
        esc = await orch.out(
            tenant_id, customer, lambda e: e.type == "afterglow.support.escalation_requested.v1"
        )
        assert esc[0].data.score == 3
        # The helpdesk opens the recovery ticket; the review ask waits for its resolution.
        await orch.publish(
            tenant_id,
            customer,
            c.TicketOpened(
                ticket_id=f"k-{customer}", helpdesk="zendesk", opened_at=orch.clock.now()
            ),
        )
        await orch.until(tenant_id, customer, h, lambda j: j["instances"][0]["status"] == "paused")
        orch.clock.advance(9 * DAY)  # past delivery + 14 days: the ask would be due now
        # A paused instance holds no timer, so nothing can fire however long we wait; the
        # timer loop polls every 50 ms, and a second is plenty for a wrong one to show.
        await asyncio.sleep(1.0)
        inst = (await orch.journey(tenant_id, customer, h))["instances"][0]
        assert (inst["status"], inst["next_timer"]) == ("paused", None)
        assert not [e for e in orch.seen(tenant_id, customer) if kind(e) == "review_request"]
        await orch.publish(
            tenant_id,
            customer,
            c.TicketResolved(ticket_id=f"k-{customer}", resolved_at=orch.clock.now()),
        )
    else:
        orch.clock.advance(7 * DAY)
    await orch.out(tenant_id, customer, lambda e: kind(e) == "review_request")
    orch.clock.advance(7 * DAY)  # no review came: the one reminder
    await orch.out(tenant_id, customer, lambda e: kind(e) == "review_reminder")
    j = await orch.until(
        tenant_id, customer, h, lambda j: j["instances"][0]["status"] == "completed"
    )
    events = await orch.tap.events(settle=0.5)
    mine = [e for e in events if e.tenantid == tenant_id and e.subject == customer]
    kinds = [kind(e) for e in mine if kind(e)]
    invited = [e for e in mine if e.type == "afterglow.referral.invited.v1"]
    escalated = [e for e in mine if e.type == "afterglow.support.escalation_requested.v1"]
    assert kinds.count("review_request") == 1  # everyone is asked: no review gating
    assert kinds.count("review_reminder") == 1
    assert (len(invited) == 1) == (band == "promoter")
    assert (len(escalated) == 1) == (band == "detractor")
    assert ("loyalty_nudge" in kinds) == (band == "passive")
    welcome = next(e for e in mine if kind(e) == "welcome")
    assert welcome.data.category == "transactional"
    ask = next(e for e in mine if kind(e) == "review_request")
    assert ask.data.order_id and ask.type == "afterglow.review.requested.v1"
    stages = [x["to_stage"] for x in j["instances"][0]["history"] if x["kind"] == "stage"]
    assert stages == ["onboarding", "check_in", "survey", "advocacy"]
    assert all(x["cause"] for x in j["instances"][0]["history"])
    changed = [e for e in mine if e.type == "afterglow.journey.stage_changed.v1"]
    assert [e.data.to_stage for e in changed] == [*stages, "completed"]


async def test_ticket_opened_before_survey_pauses_and_resolution_resumes(
    orch: Orchestrator, tenant_id: str
) -> None:
    customer = new_customer()
    h = await orch.headers(tenant_id)
    order = f"o-{customer}"
    now = orch.clock.now()
    await orch.publish(tenant_id, customer, order_placed(order, now))
    await orch.publish(
        tenant_id, customer, c.OrderDelivered(order_id=order, delivered_at=now, reported_by="api")
    )
    await orch.out(tenant_id, customer, lambda e: kind(e) == "welcome")
    await orch.until(tenant_id, customer, h, lambda j: j["instances"][0]["next_timer"] is not None)
    orch.clock.advance(3 * DAY)
    await orch.out(tenant_id, customer, lambda e: kind(e) == "check_in")
    await orch.publish(
        tenant_id,
        customer,
        c.TicketOpened(ticket_id="k1", helpdesk="gorgias", opened_at=orch.clock.now()),
    )
    j = await orch.until(tenant_id, customer, h, lambda j: j["instances"][0]["status"] == "paused")
    assert j["instances"][0]["next_timer"] is None  # no timer runs while paused
    orch.clock.advance(5 * DAY)  # the survey would be due now
    await orch.tap.events(settle=1.0)
    assert not [
        e for e in orch.seen(tenant_id, customer) if e.type == "afterglow.survey.requested.v1"
    ]
    await orch.publish(
        tenant_id, customer, c.TicketResolved(ticket_id="k1", resolved_at=orch.clock.now())
    )
    await orch.out(tenant_id, customer, lambda e: e.type == "afterglow.survey.requested.v1")
    j = await orch.journey(tenant_id, customer, h)
    kinds = [x["kind"] for x in j["instances"][0]["history"]]
    assert "pause" in kinds and "resume" in kinds


async def test_refund_exits_mid_delay_and_cancels_timers(
    orch: Orchestrator, tenant_id: str
) -> None:
    customer = new_customer()
    h = await orch.headers(tenant_id)
    order = await placed_and_delivered(orch, tenant_id, customer, h)
    now = orch.clock.now()
    refund_id = await orch.publish(
        tenant_id,
        customer,
        c.OrderRefunded(
            order_id=order,
            refund_id="r1",
            refunded_at=now,
            amount=c.Money(amount=5000, currency="USD"),
            full=True,
        ),
    )
    j = await orch.until(tenant_id, customer, h, lambda j: j["instances"][0]["status"] == "exited")
    inst = j["instances"][0]
    assert inst["next_timer"] is None
    assert inst["history"][-1]["cause"] == refund_id
    orch.clock.advance(20 * DAY)
    await orch.tap.events(settle=1.0)
    kinds = [kind(e) for e in orch.seen(tenant_id, customer)]
    assert "check_in" not in kinds and "review_request" not in kinds
