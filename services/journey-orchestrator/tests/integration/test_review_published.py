"""A journey may wait for ``review.published``: the engine's consumer subscribes to every
event a definition accepts (engine.ENGINE_EVENTS), so such a wait ends when the review is
published, not only at its timeout."""

from __future__ import annotations

from typing import Any

from afterglow.events import catalog as c
from afterglow.events.catalog import MessageRequested
from afterglow.journeys import engine, handlers
from afterglow.journeys.handlers import ENGINE

from ..conftest import Orchestrator, new_customer, order_placed

AWAIT_REVIEW: dict[str, Any] = {
    "description": "Thank the customer once their review is live on the shop.",
    "trigger": {"events": ["order.placed"]},
    "stages": [
        {
            "name": "await_review",
            "actions": [{"type": "wait_for", "event": "review.published", "timeout": "P14D"}],
        },
        {"name": "thanks", "actions": [{"type": "message", "kind": "review_live_thanks"}]},
    ],
}


def test_the_engine_consumes_every_event_a_definition_accepts() -> None:
    accepted = {engine.event_type(name) for name in engine.KNOWN_EVENTS}
    assert accepted <= set(ENGINE.event_types)
    assert "afterglow.review.published.v1" in accepted


def test_every_engine_event_says_when_it_happened() -> None:
    # Anchors use the moment in the world, not the envelope's time: a late delivery
    # report still anchors a delay on the real delivery.
    for cls in engine.ENGINE_EVENTS:
        assert set(cls.model_fields) & set(handlers._WHEN_FIELDS), cls.__name__


async def test_a_wait_for_review_published_advances_when_the_review_is_published(
    orch: Orchestrator, tenant_id: str
) -> None:
    h = await orch.headers(tenant_id)
    r = await orch.client.put("/v1/journeys/review-live", json=AWAIT_REVIEW, headers=h)
    assert r.status_code == 201, r.text
    r = await orch.client.post(
        "/v1/journeys/review-live/activate", json={"version": r.json()["version"]}, headers=h
    )
    assert r.status_code == 200, r.text
    assert (await orch.client.post("/v1/journeys/default/deactivate", headers=h)).status_code == 200

    customer = new_customer()
    await orch.publish(tenant_id, customer, order_placed("rv-order-1", orch.clock.now()))
    await orch.until(
        tenant_id,
        customer,
        h,
        lambda j: bool(j) and j["instances"][0]["stage"] == "await_review",
    )

    # The clock does not move: the 14-day timeout cannot be what ends the wait.
    published = c.ReviewPublished(
        review_id="rv-1", rating=5, sku="MUG-01", published_at=orch.clock.now()
    )
    review_event = await orch.publish(tenant_id, customer, published)
    j = await orch.until(
        tenant_id, customer, h, lambda j: j["instances"][0]["status"] == "completed"
    )
    history = j["instances"][0]["history"]
    assert [x["to_stage"] for x in history if x["kind"] == "stage"] == ["await_review", "thanks"]
    assert not [x for x in history if x["kind"] == "timeout"]
    assert any(x["cause"] == review_event for x in history)
    await orch.out(
        tenant_id,
        customer,
        lambda e: (
            isinstance(e.data, MessageRequested)
            and (e.data.template or e.data.kind) == "review_live_thanks"
        ),
    )
