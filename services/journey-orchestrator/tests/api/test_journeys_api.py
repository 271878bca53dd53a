"""Definitions over REST, a tenant-defined journey run live, simulate agreeing with the
live engine, migration of waiting instances, and the funnel."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from afterglow.events import catalog as c
from afterglow.events.catalog import MessageRequested

from ..conftest import DAY, Orchestrator, new_customer, order_placed

VIP: dict[str, Any] = {
    "description": "Big spenders get a gift after delivery, then we wait for their review.",
    "trigger": {
        "events": ["order.placed"],
        "filter": {"spend_above": {"amount": 10000, "currency": "USD"}},
    },
    "reentry": "ignore",
    "goal": {"event": "order.placed", "within": "P30D"},
    "stages": [
        {
            "name": "hello",
            "actions": [{"type": "message", "kind": "vip_hello", "category": "transactional"}],
        },
        {
            "name": "gift",
            "wait": "PT2S after order.delivered",
            "actions": [{"type": "message", "kind": "loyalty_nudge"}],
        },
        {
            "name": "wait_review",
            "actions": [{"type": "wait_for", "event": "review.submitted", "timeout": "PT5S"}],
        },
        {"name": "thanks", "actions": [{"type": "message", "kind": "vip_thanks"}]},
    ],
}


def template(e: Any) -> str | None:
    if not isinstance(e.data, MessageRequested):
        return None
    return e.data.template or e.data.kind


async def install_vip(orch: Orchestrator, h: dict[str, str], body: dict[str, Any] = VIP) -> int:
    r = await orch.client.put("/v1/journeys/vip", json=body, headers=h)
    assert r.status_code == 201, r.text
    version = r.json()["version"]
    r = await orch.client.post("/v1/journeys/vip/activate", json={"version": version}, headers=h)
    assert r.status_code == 200 and r.json()["active"]
    r = await orch.client.post("/v1/journeys/default/deactivate", headers=h)
    assert r.status_code == 200
    return int(version)


class TestDefinitions:
    async def test_invalid_definition_is_422_with_the_path(
        self, orch: Orchestrator, tenant_id: str
    ) -> None:
        h = await orch.headers(tenant_id)
        bad = {
            **VIP,
            "stages": [
                *VIP["stages"][:2],
                {
                    "name": "x",
                    "actions": [
                        {"type": "wait_for", "event": "review.submitted", "timeout": "soon"}
                    ],
                },
            ],
        }
        r = await orch.client.put("/v1/journeys/vip", json=bad, headers=h)
        assert r.status_code == 422
        assert r.json()["error"]["field"] == "stages[2].actions[0].timeout"
        listed = (await orch.client.get("/v1/journeys", headers=h)).json()["journeys"]
        assert [j["name"] for j in listed] == ["default"]  # nothing stored

    async def test_review_gating_is_refused(self, orch: Orchestrator, tenant_id: str) -> None:
        h = await orch.headers(tenant_id)
        gated = {
            "stages": [
                {
                    "name": "advocacy",
                    "actions": [
                        {"type": "request_review", "when": {"nps_band": ["promoter", "passive"]}}
                    ],
                }
            ]
        }
        r = await orch.client.put("/v1/journeys/happy-only", json=gated, headers=h)
        assert r.status_code == 422
        assert r.json()["error"]["field"] == "stages[0].actions[0]"
        assert "review gating" in r.json()["error"]["message"]
        listed = (await orch.client.get("/v1/journeys", headers=h)).json()["journeys"]
        assert "happy-only" not in [j["name"] for j in listed]

    async def test_yaml_versions_and_activation(self, orch: Orchestrator, tenant_id: str) -> None:
        h = await orch.headers(tenant_id)
        yaml_body = (
            "stages:\n  - name: only\n    actions:\n      - {type: message, kind: check_in}\n"
        )
        for expected in (1, 2):
            r = await orch.client.put(
                "/v1/journeys/tiny",
                content=yaml_body,
                headers={**h, "content-type": "application/yaml"},
            )
            assert r.status_code == 201 and r.json()["version"] == expected
        await orch.client.post("/v1/journeys/tiny/activate", json={"version": 1}, headers=h)
        listed = {
            j["name"]: j
            for j in (await orch.client.get("/v1/journeys", headers=h)).json()["journeys"]
        }
        assert listed["tiny"]["active_version"] == 1 and listed["default"]["active_version"] == 1
        assert len(listed["tiny"]["versions"]) == 2

    async def test_scopes(self, orch: Orchestrator, tenant_id: str) -> None:
        ro = await orch.headers(tenant_id, ["journeys:read"])
        assert (await orch.client.get("/v1/journeys")).status_code == 401
        assert (await orch.client.put("/v1/journeys/vip", json=VIP, headers=ro)).status_code == 403
        assert (await orch.client.get("/v1/journeys", headers=ro)).status_code == 200


async def test_tenant_journey_runs_live_and_simulate_agrees(
    orch: Orchestrator, tenant_id: str
) -> None:
    h = await orch.headers(tenant_id)
    await install_vip(orch, h)
    customer = new_customer()
    t0 = orch.clock.now()
    placed = order_placed("vip-1", t0, amount=25000)
    await orch.publish(tenant_id, customer, placed)
    await orch.out(tenant_id, customer, lambda e: template(e) == "vip_hello")
    delivered = c.OrderDelivered(order_id="vip-1", delivered_at=t0, reported_by="api")
    await orch.publish(tenant_id, customer, delivered)
    await orch.until(tenant_id, customer, h, lambda j: j["instances"][0]["next_timer"] is not None)
    orch.clock.advance(timedelta(seconds=2))
    await orch.out(tenant_id, customer, lambda e: template(e) == "loyalty_nudge")
    await orch.until(tenant_id, customer, h, lambda j: j["instances"][0]["stage"] == "wait_review")
    review_at = orch.clock.now()
    review = c.ReviewSubmitted(
        review_id="rv1", rating=5, verified=True, submitted_at=review_at, order_id="vip-1"
    )
    await orch.publish(tenant_id, customer, review)
    j = await orch.until(
        tenant_id, customer, h, lambda j: j["instances"][0]["status"] == "completed"
    )
    live = [(x["kind"], x["to_stage"]) for x in j["instances"][0]["history"]]
    assert [s for k, s in live if k == "stage"] == ["hello", "gift", "wait_review", "thanks"]
    await orch.out(tenant_id, customer, lambda e: template(e) == "vip_thanks")
    live_actions = [template(e) for e in orch.seen(tenant_id, customer) if template(e)]

    sim = await orch.client.post(
        "/v1/journeys/vip/simulate",
        json={
            "events": [
                {
                    "type": "order.placed",
                    "at": t0.isoformat(),
                    "data": placed.model_dump(mode="json"),
                },
                {
                    "type": "order.delivered",
                    "at": t0.isoformat(),
                    "data": delivered.model_dump(mode="json"),
                },
                {
                    "type": "review.submitted",
                    "at": review_at.isoformat(),
                    "data": review.model_dump(mode="json"),
                },
            ]
        },
        headers=h,
    )
    assert sim.status_code == 200, sim.text
    body = sim.json()
    assert [(t["kind"], t["to_stage"]) for t in body["transitions"]] == live
    assert [a.get("template") or a.get("kind") for a in body["actions"]] == live_actions
    # The dry run touched nothing: still one instance.
    assert len((await orch.journey(tenant_id, customer, h))["instances"]) == 1

    # A repeat purchase within 30 days is the journey's goal.
    await orch.publish(tenant_id, customer, order_placed("vip-2", orch.clock.now(), amount=30000))
    await orch.until(tenant_id, customer, h, lambda j: len(j["instances"]) == 2)
    frm, to = (
        (t0 - timedelta(days=1)).isoformat(),
        (orch.clock.now() + timedelta(days=1)).isoformat(),
    )
    f = (
        await orch.client.get(
            "/v1/metrics/funnel", params={"from": frm, "to": to, "journey": "vip"}, headers=h
        )
    ).json()
    assert f["goal_conversions"] == {"1": 1}
    entered = {s["stage"]: s["entered"] for s in f["stages"]}
    assert entered["hello"] == 2 and entered["thanks"] == 1
    # ... two journeys through "hello", but one customer
    assert {s["stage"]: s["customers"] for s in f["stages"]}["hello"] == 1


async def test_trigger_filter_keeps_small_orders_out(orch: Orchestrator, tenant_id: str) -> None:
    h = await orch.headers(tenant_id)
    await install_vip(orch, h)
    customer = new_customer()
    await orch.publish(tenant_id, customer, order_placed("small", orch.clock.now(), amount=500))
    j = await orch.until(
        tenant_id, customer, h, lambda j: bool(j) and j["profile"]["orders_count"] == 1
    )
    assert j["instances"] == []


async def test_migrate_moves_waiting_instances_and_reports(
    orch: Orchestrator, tenant_id: str
) -> None:
    h = await orch.headers(tenant_id)
    await install_vip(orch, h)
    waiting, mid = new_customer(), new_customer()
    for cust in (waiting, mid):
        await orch.publish(
            tenant_id, cust, order_placed(f"o-{cust}", orch.clock.now(), amount=20000)
        )
    await orch.publish(
        tenant_id,
        mid,
        c.OrderDelivered(order_id=f"o-{mid}", delivered_at=orch.clock.now(), reported_by="api"),
    )
    await orch.until(
        tenant_id, waiting, h, lambda j: bool(j) and j["instances"][0]["stage"] == "hello"
    )
    orch.clock.advance(timedelta(seconds=2))
    await orch.until(
        tenant_id, mid, h, lambda j: bool(j) and j["instances"][0]["stage"] == "wait_review"
    )
    # v2: the gift waits longer; wait_review is gone.
    v2 = {
        **VIP,
        "stages": [
            VIP["stages"][0],
            {**VIP["stages"][1], "wait": "PT30S after order.delivered"},
            VIP["stages"][3],
        ],
    }
    r = await orch.client.put("/v1/journeys/vip", json=v2, headers=h)
    await orch.client.post("/v1/journeys/vip/activate", headers=h)
    r = await orch.client.post("/v1/journeys/vip/migrate", json={}, headers=h)
    assert r.status_code == 200, r.text
    report = {x["customer_id"]: x for x in r.json()["instances"]}
    assert report[waiting]["result"] == "migrated" and report[waiting]["to_version"] == 2
    assert report[mid]["result"] == "kept" and "wait_review" in report[mid]["reason"]
    j = await orch.journey(tenant_id, waiting, h)
    assert j["instances"][0]["version"] == 2
    assert j["instances"][0]["history"][-1]["kind"] == "migrate"


async def test_profile_spend_is_per_currency_and_spend_above_reads_its_own(
    orch: Orchestrator, tenant_id: str
) -> None:
    """120 EUR is not above 100 USD, and 50 USD + 120 EUR are not 170 of anything."""
    h = await orch.headers(tenant_id)
    await install_vip(orch, h)
    customer = new_customer()
    eur = order_placed("eur-1", orch.clock.now(), amount=12_000).model_copy(
        update={"total": c.Money(amount=12_000, currency="EUR")}
    )
    await orch.publish(tenant_id, customer, order_placed("usd-1", orch.clock.now(), amount=5_000))
    await orch.publish(tenant_id, customer, eur)
    j = await orch.until(
        tenant_id, customer, h, lambda j: bool(j) and j["profile"]["orders_count"] == 2
    )
    assert j["profile"]["spent_by_currency"] == [
        {"currency": "EUR", "amount": 12_000},
        {"currency": "USD", "amount": 5_000},
    ]
    assert [i for i in j["instances"] if i["journey"] == "vip"] == []


async def test_step_counts_say_where_instances_are_per_version(
    orch: Orchestrator, tenant_id: str
) -> None:
    h = await orch.headers(tenant_id)
    await install_vip(orch, h)
    waiting, moved_on = new_customer(), new_customer()
    for cust in (waiting, moved_on):
        await orch.publish(
            tenant_id, cust, order_placed(f"o-{cust}", orch.clock.now(), amount=20000)
        )
    await orch.publish(
        tenant_id,
        moved_on,
        c.OrderDelivered(
            order_id=f"o-{moved_on}", delivered_at=orch.clock.now(), reported_by="api"
        ),
    )
    await orch.until(
        tenant_id, waiting, h, lambda j: bool(j) and j["instances"][0]["stage"] == "hello"
    )
    orch.clock.advance(timedelta(seconds=2))
    await orch.until(
        tenant_id, moved_on, h, lambda j: bool(j) and j["instances"][0]["stage"] == "wait_review"
    )
    # Another tenant's instances of a journey of the same name are not counted.
    other = f"{tenant_id}-other"
    await install_vip(orch, await orch.headers(other))
    stranger = new_customer()
    await orch.publish(other, stranger, order_placed(f"o-{stranger}", orch.clock.now(), 20000))
    await orch.until(
        other, stranger, await orch.headers(other), lambda j: bool(j) and j["instances"]
    )

    r = await orch.client.get("/v1/journeys/vip/step-counts", headers=h)

    assert r.status_code == 200, r.text
    [v1] = r.json()["versions"]
    assert v1["version"] == 1
    stages = v1["stages"]
    # Both entered hello; one waits there (for its delivery), one moved on through gift.
    assert stages["hello"] == {"now": {"running": 1}, "entered": 2}
    assert stages["gift"] == {"now": {}, "entered": 1}
    assert stages["wait_review"] == {"now": {"running": 1}, "entered": 1}
    assert "thanks" not in stages
    assert (v1["ended"], v1["goal_conversions"]) == ({}, 0)
    reader = await orch.headers(tenant_id, ["journeys:write"])
    assert (
        await orch.client.get("/v1/journeys/vip/step-counts", headers=reader)
    ).status_code == 403


# A journey whose instances wait days at their first stage: each holds a pending timer,
# and a repeat buyer runs two of them side by side.
PATIENT: dict[str, Any] = {
    "reentry": "parallel",
    "stages": [
        {"name": "hello", "actions": [{"type": "message", "kind": "patient_hello"}]},
        {"name": "later", "wait": "P3D", "actions": [{"type": "message", "kind": "later"}]},
    ],
}


async def install_only(orch: Orchestrator, h: dict[str, str], name: str, body: Any) -> int:
    """``body`` as the tenant's one active journey (the default one switched off)."""
    r = await orch.client.put(f"/v1/journeys/{name}", json=body, headers=h)
    assert r.status_code == 201, r.text
    version = int(r.json()["version"])
    r = await orch.client.post(
        f"/v1/journeys/{name}/activate", json={"version": version}, headers=h
    )
    assert r.status_code == 200, r.text
    assert (await orch.client.post("/v1/journeys/default/deactivate", headers=h)).status_code == 200
    return version


def due(instance: dict[str, Any]) -> datetime:
    return datetime.fromisoformat(instance["next_timer"]["due_at"])


class TestCustomerJourney:
    async def test_each_instance_shows_its_own_timer_and_history(
        self, orch: Orchestrator, tenant_id: str
    ) -> None:
        h = await orch.headers(tenant_id)
        await install_only(orch, h, "patient", PATIENT)
        customer = new_customer()
        first_at = orch.clock.now()
        await orch.publish(tenant_id, customer, order_placed("first", first_at))
        await orch.until(tenant_id, customer, h, lambda j: bool(j) and len(j["instances"]) == 1)
        orch.clock.advance(DAY)
        second_at = orch.clock.now()
        await orch.publish(tenant_id, customer, order_placed("second", second_at))

        j = await orch.until(tenant_id, customer, h, lambda j: len(j["instances"]) == 2)

        newest, oldest = j["instances"]
        assert (newest["order_id"], oldest["order_id"]) == ("second", "first")
        for inst, entered_at in ((newest, second_at), (oldest, first_at)):
            assert [(t["kind"], t["to_stage"]) for t in inst["history"]] == [("stage", "hello")]
            assert inst["next_timer"]["kind"] == "stage_due"
            assert due(inst) == entered_at + 3 * DAY
        assert j["current"] == newest
        # Instants are written as they always were (isoformat, "+00:00"), not "Z".
        assert newest["next_timer"]["due_at"] == (second_at + 3 * DAY).isoformat()

    async def test_unknown_customer_is_404(self, orch: Orchestrator, tenant_id: str) -> None:
        h = await orch.headers(tenant_id)
        r = await orch.client.get(f"/v1/customers/{new_customer()}/journey", headers=h)
        assert r.status_code == 404
        assert r.json()["error"]["field"] == "customer_id"


async def test_migrate_moves_every_waiting_instance_at_once(
    orch: Orchestrator, tenant_id: str
) -> None:
    h = await orch.headers(tenant_id)
    await install_only(orch, h, "patient", PATIENT)
    customers = [new_customer() for _ in range(3)]
    entered_at = orch.clock.now()
    for cust in customers:
        await orch.publish(tenant_id, cust, order_placed(f"o-{cust}", entered_at))
    for cust in customers:
        await orch.until(
            tenant_id, cust, h, lambda j: bool(j) and j["instances"][0]["next_timer"] is not None
        )
    slower = {**PATIENT, "stages": [PATIENT["stages"][0], {**PATIENT["stages"][1], "wait": "P5D"}]}
    r = await orch.client.put("/v1/journeys/patient", json=slower, headers=h)
    assert r.status_code == 201 and r.json()["version"] == 2
    await orch.client.post("/v1/journeys/patient/activate", headers=h)

    dry = await orch.client.post("/v1/journeys/patient/migrate", json={"dry_run": True}, headers=h)

    assert dry.status_code == 200, dry.text
    assert sorted(x["customer_id"] for x in dry.json()["instances"]) == sorted(customers)
    assert {x["result"] for x in dry.json()["instances"]} == {"migrated"}
    for cust in customers:  # a dry run moves nothing
        assert (await orch.journey(tenant_id, cust, h))["instances"][0]["version"] == 1

    r = await orch.client.post("/v1/journeys/patient/migrate", json={}, headers=h)

    assert r.status_code == 200, r.text
    assert r.json()["dry_run"] is False and r.json()["to_version"] == 2
    assert {x["customer_id"]: x["to_version"] for x in r.json()["instances"]} == dict.fromkeys(
        customers, 2
    )
    for cust in customers:
        [inst] = (await orch.journey(tenant_id, cust, h))["instances"]
        assert inst["version"] == 2
        assert [t["kind"] for t in inst["history"]] == ["stage", "migrate"]
        # The wait recomputed from the same start: five days now, not three.
        assert due(inst) == entered_at + 5 * DAY
    # Nothing left to move: a second run reports nothing.
    again = await orch.client.post("/v1/journeys/patient/migrate", json={}, headers=h)
    assert again.json()["instances"] == []
