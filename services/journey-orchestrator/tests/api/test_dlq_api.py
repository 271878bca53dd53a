"""A service's dead letters over REST (afterglow.kit.dlq_api, which every service gets):
a tenant sees and redrives its own letters of this service's consumers, no others."""

from __future__ import annotations

from typing import Any

from afterglow.events import CloudEvent, to_record
from afterglow.events.testing import TopicTap

from ..conftest import Orchestrator, new_customer, order_placed

DLQ = "afterglow.orders.dlq"


async def dead_letter(orch: Orchestrator, tenant: str, consumer: str) -> str:
    """An order.placed event as a consumer dead-letters it: the record with its
    verdict in x-* headers, on the DLQ. Returns the event id."""
    event = CloudEvent.new(
        order_placed(f"o-{new_customer()}", orch.clock.now()),
        tenant_id=tenant,
        subject=new_customer(),
        source="tests",
    )
    rec = to_record(event)
    headers = [
        *rec.headers,
        ("x-consumer", consumer.encode()),
        ("x-original-topic", rec.topic.encode()),
        ("x-error", b"ValueError: boom"),
        ("x-attempts", b"5"),
    ]
    await orch.producer.send_and_wait(DLQ, rec.value, key=rec.key, headers=headers)
    return event.id


def ours(listing: dict[str, Any], tenant: str) -> list[dict[str, Any]]:
    return [x for x in listing["dlqs"][DLQ] if x["tenant"] == tenant]


async def test_a_tenant_lists_and_redrives_its_own_letters_of_this_service(
    orch: Orchestrator, tenant_id: str
) -> None:
    mine = await dead_letter(orch, tenant_id, "journeys.engine")
    await dead_letter(orch, tenant_id, "loyalty.points")  # another service's consumer
    other = f"{tenant_id}-other"
    theirs = await dead_letter(orch, other, "journeys.engine")
    h = await orch.headers(tenant_id, ["dlq:read", "dlq:write"])

    r = await orch.client.get("/v1/dlq", headers=h)

    assert r.status_code == 200, r.text
    assert "afterglow.messages.dlq" in r.json()["dlqs"]  # the dispatcher's, journeys reads it
    [letter] = r.json()["dlqs"][DLQ]  # neither loyalty's nor the other tenant's
    assert (letter["event_id"], letter["consumer"], letter["error"]) == (
        mine,
        "journeys.engine",
        "ValueError: boom",
    )
    their_listing = await orch.client.get(
        "/v1/dlq", headers=await orch.headers(other, ["dlq:read"])
    )
    [their_letter] = ours(their_listing.json(), other)
    assert their_letter["event_id"] == theirs
    # Another tenant's letter cannot be redriven with this key, nor a mix with it.
    refused = await orch.client.post(
        f"/v1/dlq/{DLQ}/redrive",
        json={"offsets": [letter["offset"], their_letter["offset"]]},
        headers=h,
    )
    assert refused.status_code == 422 and refused.json()["error"]["field"] == "offsets"

    async with TopicTap(orch.runtime.settings.kafka_bootstrap_servers, "afterglow.orders") as tap:
        r = await orch.client.post(
            f"/v1/dlq/{DLQ}/redrive", json={"offsets": [letter["offset"]]}, headers=h
        )
        assert r.status_code == 200, r.text
        assert [x["event_id"] for x in r.json()["redriven"]] == [mine]
        [back] = await tap.wait_for_records(
            lambda rec: dict(rec.headers).get("ce_id") == mine.encode()
        )
    headers = dict(back.headers)
    assert headers["x-redriven-from"] == f"{DLQ}:{letter['offset']}".encode()
    assert "x-error" not in headers
    assert not [rec for rec in tap.records if dict(rec.headers).get("ce_id") == theirs.encode()]


async def test_scopes_and_unknown_dlqs(orch: Orchestrator, tenant_id: str) -> None:
    reader = await orch.headers(tenant_id, ["dlq:read"])
    r = await orch.client.post(f"/v1/dlq/{DLQ}/redrive", json={"offsets": [0]}, headers=reader)
    assert r.status_code == 403
    none = await orch.headers(tenant_id, ["journeys:read"])
    assert (await orch.client.get("/v1/dlq", headers=none)).status_code == 403
    writer = await orch.headers(tenant_id, ["dlq:write"])
    r = await orch.client.post(
        "/v1/dlq/afterglow.discounts/redrive", json={"offsets": [0]}, headers=writer
    )
    assert r.status_code == 404 and r.json()["error"]["field"] == "topic"
    r = await orch.client.post(f"/v1/dlq/{DLQ}/redrive", json={"offsets": []}, headers=writer)
    assert r.status_code == 422
