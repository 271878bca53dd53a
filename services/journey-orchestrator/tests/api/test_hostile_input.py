"""Odd and hostile input at the orchestrator's routes: a clear 4xx naming the field,
never a 500, never a changed state."""

from __future__ import annotations

from sqlalchemy import select

from afterglow.journeys.deps import messaging_settings
from afterglow.journeys.messaging import policy
from afterglow.journeys.messaging.models import MessageContact

from ..conftest import Orchestrator, new_customer

ALL = ["journeys:read", "journeys:write", "messages:read", "messages:write", "customers:export"]
NESTED = "[" * 10_000 + "]" * 10_000


class TestOddValues:
    async def test_journey_version_of_16_digits_is_422(self, orch: Orchestrator, tenant_id: str):
        h = await orch.headers(tenant_id, ALL)
        r = await orch.client.get("/v1/journeys/default?version=1234567890123456", headers=h)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["field"] == "version"
        r = await orch.client.post(
            "/v1/journeys/default/activate", json={"version": 1234567890123456}, headers=h
        )
        assert r.status_code == 422 and r.json()["error"]["field"] == "version"

    async def test_simulate_with_an_event_in_year_9999_is_422(
        self, orch: Orchestrator, tenant_id: str
    ):
        h = await orch.headers(tenant_id, ALL)
        event = {
            "type": "order.placed",
            "at": "9999-12-31T23:00:00Z",
            "data": {"order_id": "o-1", "total": {"amount": 100, "currency": "USD"}},
        }
        r = await orch.client.post(
            "/v1/journeys/default/simulate", json={"events": [event]}, headers=h
        )
        assert r.status_code == 422, r.text
        assert r.json()["error"]["field"] == "events.0.at"

    async def test_message_for_a_customer_messaging_never_saw_is_accepted(
        self, orch: Orchestrator, tenant_id: str
    ):
        h = await orch.headers(tenant_id, ALL)
        body = {"customer_id": new_customer(), "request_id": "r-1", "kind": "custom"}
        r = await orch.client.post("/v1/messages", json=body, headers=h)
        assert r.status_code == 202, r.text
        r = await orch.client.post(
            "/v1/messages", json={**body, "variables": {"x": "a\x00b"}}, headers=h
        )
        assert r.status_code == 422 and r.json()["error"]["field"] == "variables"
        r = await orch.client.post(
            "/v1/messages", json={**body, "request_id": "r-2", "kind": "survey_invite"}, headers=h
        )
        assert r.status_code == 422, r.text
        assert "survey_url" in r.json()["error"]["message"]

    async def test_nul_in_path_id_is_422(self, orch: Orchestrator, tenant_id: str):
        h = await orch.headers(tenant_id, ALL)
        for path, field in (
            ("/v1/customers/a%00b/journey", "customer_id"),
            ("/v1/journeys/a%00b", "name"),
            ("/v1/customers/a%00b/messages", "customer_id"),
            ("/v1/customers/a%00b/export", "customer_id"),
        ):
            r = await orch.client.get(path, headers=h)
            assert r.status_code == 422, (path, r.text)
            assert r.json()["error"]["field"] == field

    async def test_funnel_with_a_control_character_in_the_journey_is_422(
        self, orch: Orchestrator, tenant_id: str
    ):
        h = await orch.headers(tenant_id, ALL)
        r = await orch.client.get(
            "/v1/metrics/funnel",
            params={
                "from": "2026-01-01T00:00:00Z",
                "to": "2026-02-01T00:00:00Z",
                "journey": "\x1b",
            },
            headers=h,
        )
        assert r.status_code == 422 and r.json()["error"]["field"] == "journey"


class TestDefinitionBodies:
    async def test_deeply_nested_json_definition_is_400(self, orch: Orchestrator, tenant_id: str):
        h = await orch.headers(tenant_id, ALL)
        r = await orch.client.put(
            "/v1/journeys/deep",
            content=NESTED,
            headers={**h, "content-type": "application/json"},
        )
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "too_deep"

    async def test_deeply_nested_yaml_definition_is_400(self, orch: Orchestrator, tenant_id: str):
        h = await orch.headers(tenant_id, ALL)
        r = await orch.client.put(
            "/v1/journeys/deep", content=NESTED, headers={**h, "content-type": "application/yaml"}
        )
        assert r.status_code == 400, r.text
        assert r.json()["error"]["code"] == "too_deep"

    async def test_yaml_aliases_are_refused(self, orch: Orchestrator, tenant_id: str):
        h = await orch.headers(tenant_id, ALL)
        bomb = 'a: &a ["x","x"]\nb: &b [*a,*a]\nc: &c [*b,*b]\n'
        r = await orch.client.put(
            "/v1/journeys/bomb", content=bomb, headers={**h, "content-type": "application/yaml"}
        )
        assert r.status_code == 400 and "aliases" in r.json()["error"]["message"]

    async def test_definition_over_the_size_limit_is_413(self, orch: Orchestrator, tenant_id: str):
        h = await orch.headers(tenant_id, ALL)
        big = '{"description": "' + "x" * (2 * 1024 * 1024) + '"}'
        r = await orch.client.put(
            "/v1/journeys/big", content=big, headers={**h, "content-type": "application/json"}
        )
        assert r.status_code == 413 and r.json()["error"]["code"] == "payload_too_large"


class TestUnsubscribePage:
    def _link(self, orch: Orchestrator, tenant: str, customer: str) -> str:
        secret = messaging_settings(orch.runtime).unsubscribe_secret
        return f"/u/{policy.sign_unsubscribe(secret, tenant, customer, 'email')}"

    async def _unsubscribed(self, orch: Orchestrator, tenant: str, customer: str) -> bool:
        async with orch.runtime.sessionmaker() as s:
            row = await s.scalar(
                select(MessageContact).where(
                    MessageContact.tenant_id == tenant, MessageContact.customer_id == customer
                )
            )
        return row is not None and row.email_unsubscribed_at is not None

    async def test_cross_origin_form_post_refused(self, orch: Orchestrator, tenant_id: str):
        customer = new_customer()
        link = self._link(orch, tenant_id, customer)
        r = await orch.client.post(link, headers={"Origin": "https://evil.example"})
        assert r.status_code == 403
        assert "another site" in r.text
        assert not await self._unsubscribed(orch, tenant_id, customer)
        # Our own page's button (same origin), and RFC 8058 one-click (no Origin), work.
        page = await orch.client.get(link)
        assert page.headers["referrer-policy"] == "same-origin"
        r = await orch.client.post(link, headers={"Origin": "http://testserver"})
        assert r.status_code == 200
        assert await self._unsubscribed(orch, tenant_id, customer)
        other = new_customer()
        r = await orch.client.post(
            self._link(orch, tenant_id, other), content=b"List-Unsubscribe=One-Click"
        )
        assert r.status_code == 200
        assert await self._unsubscribed(orch, tenant_id, other)


class TestHugeValuesInDefinitionsAndTemplates:
    async def test_a_delay_beyond_ten_years_is_422_naming_it(
        self, orch: Orchestrator, tenant_id: str
    ):
        h = await orch.headers(tenant_id, ALL)
        for wait in ("P99999D after order.delivered", "PT99999999999999999999S after order.placed"):
            body = {
                "trigger": {"events": ["order.placed"]},
                "stages": [
                    {"name": "a", "wait": wait, "actions": [{"type": "message", "kind": "welcome"}]}
                ],
            }
            r = await orch.client.put("/v1/journeys/far", json=body, headers=h)
            assert r.status_code == 422, r.text
            assert r.json()["error"]["field"] == "stages[0].wait.delay"

    async def test_a_template_that_would_build_a_gigabyte_is_422(
        self, orch: Orchestrator, tenant_id: str
    ):
        h = await orch.headers(tenant_id, ALL)
        for text in ("{{ 'x' * 999999999 }}", "{{ 2 ** 999 ** 999 ** 999 }}"):
            r = await orch.client.put(
                "/v1/messaging/templates/welcome/email",
                json={"subject": "Hi", "text": text},
                headers=h,
            )
            assert r.status_code == 422, r.text
            assert r.json()["error"]["code"] == "template_error"
