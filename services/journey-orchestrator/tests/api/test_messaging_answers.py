"""The JSON the messaging routes answer, pinned field by field: typing the answers with
response models must not change what a client receives (a model that drops a key, adds
a null, or renders a timestamp another way breaks clients that read it)."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from pydantic import TypeAdapter

from afterglow.events.testing import eventually

from ..conftest import Orchestrator

SCOPES = ["messages:read", "messages:write"]
SECRET = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
LOGGED_KEYS = {
    "id",
    "request_id",
    "kind",
    "category",
    "priority",
    "channel",
    "status",
    "reason",
    "attempts",
    "created_at",
    "next_attempt_at",
    "last_attempt_at",
    "sent_at",
    "updated_at",
    "decisions",
}
TEMPLATE_KEYS = {"kind", "channel", "subject", "html", "text", "source", "updated_at"}


def as_before(stamp: Any) -> bool:
    """A timestamp rendered as the untyped answers rendered it (pydantic's JSON: "Z" for
    UTC), not another way of writing the same instant ("+00:00")."""
    return (
        isinstance(stamp, str)
        and TypeAdapter(datetime).dump_python(datetime.fromisoformat(stamp), mode="json") == stamp
    )


def default_channel(channel: str) -> dict[str, Any]:
    return {"channel": channel, "provider": "webhook", "config": {}, "secret_set": False}


class TestChannelAnswers:
    async def test_an_unconfigured_channel_answers_only_its_four_keys(
        self, orch: Orchestrator, tenant_id: str
    ):
        h = await orch.headers(tenant_id, SCOPES)
        r = await orch.client.get("/v1/messaging/channels", headers=h)
        assert r.status_code == 200, r.text
        assert r.json() == {"channels": [default_channel("email"), default_channel("sms")]}

    async def test_a_configured_channel_answers_every_field_and_its_reset_the_default(
        self, orch: Orchestrator, tenant_id: str
    ):
        h = await orch.headers(tenant_id, SCOPES)
        r = await orch.client.put(
            "/v1/messaging/channels/sms", json={"provider": "webhook"}, headers=h
        )
        assert r.status_code == 200, r.text
        saved = r.json()
        assert as_before(saved.pop("updated_at"))
        assert saved == {
            **default_channel("sms"),
            "dkim_key_set": False,
            "rate_per_s": None,  # a null kept, not dropped
        }
        listed = (await orch.client.get("/v1/messaging/channels", headers=h)).json()["channels"]
        assert listed[0] == default_channel("email")
        assert set(listed[1]) == {*saved, "updated_at"}
        r = await orch.client.delete("/v1/messaging/channels/sms", headers=h)
        assert r.status_code == 200 and r.json() == default_channel("sms")


class TestSettingsAnswers:
    async def test_unset_settings_answer_the_defaults_with_nulls(
        self, orch: Orchestrator, tenant_id: str
    ):
        h = await orch.headers(tenant_id, SCOPES)
        r = await orch.client.get("/v1/messaging/settings", headers=h)
        assert r.status_code == 200, r.text
        assert r.json() == {
            "endpoint": None,
            "quiet_hours_start": "21:00",
            "quiet_hours_end": "08:00",
            "frequency_cap": 3,
            "frequency_window_days": 7,
            "default_channel": "email",
            "default_timezone": "UTC",
            "shop_name": None,
        }

    async def test_a_saved_endpoint_shows_that_a_secret_is_set_never_the_secret(
        self, orch: Orchestrator, tenant_id: str
    ):
        h = await orch.headers(tenant_id, SCOPES)
        url = "http://127.0.0.1:9/messages"
        r = await orch.client.put(
            "/v1/messaging/endpoint", json={"url": url, "secret": SECRET}, headers=h
        )
        assert r.status_code == 200, r.text
        assert r.json()["endpoint"] == {"url": url, "secret_set": True}
        r = await orch.client.get("/v1/messaging/settings", headers=h)
        assert r.json()["endpoint"] == {"url": url, "secret_set": True}
        assert SECRET.removeprefix("whsec_") not in r.text


class TestTemplateAnswers:
    async def test_defaults_carry_a_null_updated_at_and_saved_ones_a_timestamp(
        self, orch: Orchestrator, tenant_id: str
    ):
        h = await orch.headers(tenant_id, SCOPES)
        r = await orch.client.put(
            "/v1/messaging/templates/winback/sms", json={"text": "Come back"}, headers=h
        )
        assert r.status_code == 200, r.text
        saved = r.json()
        assert as_before(saved["updated_at"])
        assert saved == {
            "kind": "winback",
            "channel": "sms",
            "subject": None,
            "html": None,
            "text": "Come back",
            "source": "tenant",
            "updated_at": saved["updated_at"],
        }
        templates = (await orch.client.get("/v1/messaging/templates", headers=h)).json()
        assert all(set(t) == TEMPLATE_KEYS for t in templates["templates"])
        defaults = [t for t in templates["templates"] if t["source"] == "default"]
        assert defaults and all(t["updated_at"] is None for t in defaults)
        assert saved in templates["templates"]

    async def test_delete_says_whether_the_tenant_had_the_template(
        self, orch: Orchestrator, tenant_id: str
    ):
        h = await orch.headers(tenant_id, SCOPES)
        path = "/v1/messaging/templates/winback/sms"
        r = await orch.client.delete(path, headers=h)
        assert r.json() == {"kind": "winback", "channel": "sms", "deleted": False}
        await orch.client.put(path, json={"text": "Come back"}, headers=h)
        r = await orch.client.delete(path, headers=h)
        assert r.json() == {"kind": "winback", "channel": "sms", "deleted": True}


class TestMessageLogAnswers:
    async def test_a_requested_message_is_accepted_and_logged_with_every_field(
        self, orch: Orchestrator, tenant_id: str
    ):
        h = await orch.headers(tenant_id, SCOPES)
        body = {"customer_id": "c-shape", "request_id": "r-shape", "kind": "custom"}
        r = await orch.client.post("/v1/messages", json=body, headers=h)
        assert r.status_code == 202, r.text
        assert r.json() == {"request_id": "r-shape", "customer_id": "c-shape", "status": "accepted"}

        async def log() -> list[dict[str, Any]]:
            r = await orch.client.get("/v1/customers/c-shape/messages", headers=h)
            assert r.status_code == 200, r.text
            assert r.json()["customer_id"] == "c-shape"
            return list(r.json()["messages"])

        [m] = await eventually(log, lambda ms: len(ms) == 1 and ms[0]["decisions"], timeout=20)
        assert set(m) == LOGGED_KEYS
        assert (m["request_id"], m["kind"], m["category"]) == ("r-shape", "custom", "marketing")
        assert all(as_before(m[k]) for k in ("created_at", "updated_at"))
        for d in m["decisions"]:
            assert set(d) == {"at", "decision", "reason"} and as_before(d["at"])
        r = await orch.client.get("/v1/customers/c-nobody/messages", headers=h)
        assert r.json() == {"customer_id": "c-nobody", "messages": []}
