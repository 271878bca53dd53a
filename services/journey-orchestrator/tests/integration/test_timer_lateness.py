"""The timer loop reports how late it claims due timers: deploy/ alerts when journey
timers run more than five minutes late, from this histogram."""

from __future__ import annotations

from datetime import timedelta

from prometheus_client import REGISTRY

from afterglow.events import catalog as c

from ..conftest import DAY, Orchestrator, new_customer, order_placed
from .test_default_journey import kind

LATENESS = "afterglow_journey_timer_lateness_seconds"


def _late_over_five_minutes() -> float:
    count = REGISTRY.get_sample_value(f"{LATENESS}_count") or 0.0
    within = REGISTRY.get_sample_value(f"{LATENESS}_bucket", {"le": "300.0"}) or 0.0
    return count - within


async def test_a_timer_claimed_ten_minutes_after_due_is_observed_late(
    orch: Orchestrator, tenant_id: str
) -> None:
    customer = new_customer()
    h = await orch.headers(tenant_id)
    order = f"o-{customer}"
    now = orch.clock.now()
    await orch.publish(tenant_id, customer, order_placed(order, now))
    await orch.out(tenant_id, customer, lambda e: kind(e) == "welcome")
    await orch.publish(
        tenant_id,
        customer,
        c.OrderDelivered(order_id=order, delivered_at=now, reported_by="api"),
    )
    await orch.until(
        tenant_id,
        customer,
        h,
        lambda j: bool(j) and "afterglow.order.delivered.v1" in j["instances"][0]["anchors"],
    )
    late_before = _late_over_five_minutes()
    # The check-in timer is due three days after delivery; the loop first sees the
    # clock ten minutes past that, as a loop stuck for ten minutes would.
    orch.clock.advance(3 * DAY + timedelta(minutes=10))
    await orch.out(tenant_id, customer, lambda e: kind(e) == "check_in")
    assert _late_over_five_minutes() > late_before
