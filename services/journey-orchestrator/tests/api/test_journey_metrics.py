"""GET /v1/metrics/journeys against a hand-computed fixture run through the live engine:
two versions of one journey, a goal order whose total is the goal revenue."""

from __future__ import annotations

from datetime import timedelta
from typing import Any

from afterglow.events import catalog as c
from afterglow.events.testing import eventually

from ..conftest import Orchestrator, new_customer, order_placed

# Two stages: "hello" at once, "thanks" when the order is delivered. Any later order
# within 30 days is the goal.
WINBACK: dict[str, Any] = {
    "trigger": {"events": ["order.placed"]},
    "goal": {"event": "order.placed", "within": "P30D"},
    "stages": [
        {"name": "hello", "actions": [{"type": "message", "kind": "winback_hello"}]},
        {
            "name": "thanks",
            "wait": "PT1S after order.delivered",
            "actions": [{"type": "message", "kind": "winback_thanks"}],
        },
    ],
}


async def activate(orch: Orchestrator, h: dict[str, str], body: dict[str, Any]) -> int:
    r = await orch.client.put("/v1/journeys/winback", json=body, headers=h)
    assert r.status_code == 201, r.text
    version = int(r.json()["version"])
    r = await orch.client.post(
        "/v1/journeys/winback/activate", json={"version": version}, headers=h
    )
    assert r.status_code == 200, r.text
    return version


async def stage_of(
    orch: Orchestrator, tenant: str, customer: str, h: dict[str, str], stage: str
) -> dict[str, Any]:
    return await orch.until(
        tenant,
        customer,
        h,
        lambda j: bool(j) and any(i["stage"] == stage for i in j["instances"]),
    )


def period_around(orch: Orchestrator) -> dict[str, str]:
    today = orch.clock.now().date()
    return {"from": (today - timedelta(days=1)).isoformat(), "to": today.isoformat()}


class TestJourneyMetrics:
    async def test_funnel_conversion_and_goal_revenue_by_version(
        self, orch: Orchestrator, tenant_id: str
    ) -> None:
        h = await orch.headers(tenant_id)
        v1 = await activate(orch, h, WINBACK)
        r = await orch.client.post("/v1/journeys/default/deactivate", headers=h)
        assert r.status_code == 200, r.text
        a, b, c_ = new_customer(), new_customer(), new_customer()
        # v1: a reaches "thanks" and orders again (the goal, 7000); b stays at "hello".
        await orch.publish(tenant_id, a, order_placed("a1", orch.clock.now(), amount=10000))
        await orch.publish(tenant_id, b, order_placed("b1", orch.clock.now(), amount=12000))
        await stage_of(orch, tenant_id, a, h, "hello")
        await stage_of(orch, tenant_id, b, h, "hello")
        await orch.publish(
            tenant_id,
            a,
            c.OrderDelivered(order_id="a1", delivered_at=orch.clock.now(), reported_by="api"),
        )
        orch.clock.advance(timedelta(seconds=2))
        await stage_of(orch, tenant_id, a, h, "thanks")
        orch.clock.advance(timedelta(hours=1))
        await orch.publish(tenant_id, a, order_placed("a2", orch.clock.now(), amount=7000))
        # a's first instance completed at "thanks", so the goal order also starts a's
        # second v1 instance; it is in before v2 is activated.
        await orch.until(tenant_id, a, h, lambda j: len(j.get("instances", [])) == 2)
        # v2 (a renamed first stage): c starts on it and converts nothing.
        v2 = await activate(
            orch, h, {**WINBACK, "stages": [{**WINBACK["stages"][0], "name": "hi"}]}
        )
        await orch.publish(tenant_id, c_, order_placed("c1", orch.clock.now(), amount=3000))
        await stage_of(orch, tenant_id, c_, h, "hi")

        async def goals() -> dict[str, Any]:
            r = await orch.client.get("/v1/metrics/journeys", params=period_around(orch), headers=h)
            assert r.status_code == 200, r.text
            return r.json()

        m = await eventually(
            goals, lambda m: any(v["converted"] for v in m["versions"]), timeout=20
        )
        by_version = {(v["journey"], v["version"]): v for v in m["versions"]}
        assert set(by_version) == {("winback", v1), ("winback", v2)}
        first, second = by_version[("winback", v1)], by_version[("winback", v2)]
        # v1: a1, b1 and a2 started; a1's instance converted (by a2, worth 7000).
        assert (first["started"], first["converted"], first["conversion_rate"]) == (3, 1, 0.3333)
        assert first["goal_revenue"] == [{"currency": "USD", "amount": 7000, "orders": 1}]
        assert first["stages"] == [
            {"stage": "hello", "instances": 3, "share_of_started": 1.0},
            {"stage": "thanks", "instances": 1, "share_of_started": 0.3333},
        ]
        assert (second["started"], second["converted"], second["conversion_rate"]) == (1, 0, 0.0)
        assert second["goal_revenue"] == []
        assert [s["stage"] for s in second["stages"]] == ["hi"]
        assert second["stages"][0]["instances"] == 1

        # A period before any of it: nothing started then.
        r = await orch.client.get(
            "/v1/metrics/journeys", params={"from": "2020-01-01", "to": "2020-01-31"}, headers=h
        )
        assert r.status_code == 200 and r.json()["versions"] == []

    async def test_another_tenants_instances_are_not_counted(
        self, orch: Orchestrator, tenant_id: str
    ) -> None:
        h = await orch.headers(f"{tenant_id}-other")
        r = await orch.client.get("/v1/metrics/journeys", params=period_around(orch), headers=h)
        assert r.status_code == 200 and r.json()["versions"] == []

    async def test_bad_periods_are_422_naming_the_field(
        self, orch: Orchestrator, tenant_id: str
    ) -> None:
        h = await orch.headers(tenant_id)
        for params, field in (
            ({"from": "2026-03-01", "to": "2026-02-01"}, "to"),
            ({"from": "2020-01-01", "to": "2026-01-01"}, "to"),
            ({"from": "yesterday", "to": "2026-01-01"}, "from"),
            ({"to": "2026-01-01"}, "from"),
        ):
            r = await orch.client.get("/v1/metrics/journeys", params=params, headers=h)
            assert r.status_code == 422, (params, r.text)
            assert r.json()["error"]["field"] == field, (params, r.text)

    async def test_needs_the_read_scope(self, orch: Orchestrator, tenant_id: str) -> None:
        h = await orch.headers(tenant_id, scopes=["messages:read"])
        r = await orch.client.get("/v1/metrics/journeys", params=period_around(orch), headers=h)
        assert r.status_code == 403
