"""A tenant's self-service of its API keys and webhook secrets (scope keys:admin), the
console's settings page's API: no scope escalation, keys shown once, revocations
announced, webhook secret rotation with the admin route's overlap."""

from __future__ import annotations

from sqlalchemy import func, select

from ..ingest_support import api_key, fixture, post_shopify, register

KEYS = "/v1/api-keys"
EVENTS = "afterglow.tenant.api_key_{}.v1"


def bearer(key: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {key}"}


async def revocations(runtime, key_id: str) -> int:  # type: ignore[no-untyped-def]
    """The key's revocation events written to the outbox (each one is published)."""
    t = runtime.tables.outbox
    async with runtime.sessionmaker() as s:
        n = await s.scalar(
            select(func.count())
            .select_from(t)
            .where(t.c.event_type == EVENTS.format("revoked"), t.c.key.endswith(key_id))
        )
    return int(n or 0)


class TestIssue:
    async def test_a_key_is_issued_with_scopes_the_caller_holds_and_shown_once(
        self, client, tap, tenant_id
    ):
        await register(client, tenant_id)
        admin = await api_key(client, tenant_id, "keys:admin", "orders:read", "orders:write")

        r = await client.post(KEYS, headers=bearer(admin), json={"scopes": ["orders:read"]})

        assert r.status_code == 201, r.text
        new = r.json()
        assert new["key"].startswith(f"agk_{new['key_id']}_") and new["scopes"] == ["orders:read"]
        # It works at once here, and every service is told of it by its hash only.
        ok = await client.get("/v1/deliveries", headers=bearer(new["key"]))
        assert ok.status_code == 200, ok.text
        [issued] = await tap.wait_for(lambda e: e.tenantid == tenant_id and e.id == new["event_id"])
        assert issued.type == EVENTS.format("issued") and issued.subject == new["key_id"]
        assert new["key"] not in issued.model_dump_json()
        # The list names it and its scopes, never the key.
        listed = await client.get(KEYS, headers=bearer(admin))
        assert listed.status_code == 200, listed.text
        by_id = {k["key_id"]: k for k in listed.json()["api_keys"]}
        assert by_id[new["key_id"]]["scopes"] == ["orders:read"]
        assert by_id[new["key_id"]]["revoked_at"] is None
        assert new["key"] not in listed.text and admin not in listed.text
        assert [k["current"] for k in by_id.values()].count(True) == 1
        assert by_id[admin.split("_")[1]]["current"] is True

    async def test_a_scope_the_caller_lacks_is_refused_and_nothing_is_issued(
        self, client, tap, tenant_id
    ):
        await register(client, tenant_id)
        admin = await api_key(client, tenant_id, "keys:admin", "orders:read")
        before = (await client.get(KEYS, headers=bearer(admin))).json()["api_keys"]

        for scopes in (["orders:read", "orders:write"], ["*"]):
            r = await client.post(KEYS, headers=bearer(admin), json={"scopes": scopes})
            assert r.status_code == 403, r.text
            assert r.json()["error"]["field"] == "scopes"
            assert scopes[-1] in r.json()["error"]["message"]

        after = (await client.get(KEYS, headers=bearer(admin))).json()["api_keys"]
        assert after == before

    async def test_a_star_key_may_grant_star(self, client, tenant_id):
        await register(client, tenant_id)
        root = await api_key(client, tenant_id, "*")
        r = await client.post(KEYS, headers=bearer(root), json={"scopes": ["*"]})
        assert r.status_code == 201, r.text
        assert r.json()["scopes"] == ["*"]

    async def test_keys_admin_is_required_and_another_tenants_keys_are_not_listed(
        self, client, tenant_id
    ):
        await register(client, tenant_id)
        other = f"{tenant_id}-b"
        await register(client, other)
        theirs = await api_key(client, other, "orders:read")
        reader = await api_key(client, tenant_id, "orders:read")
        for call in (
            client.get(KEYS, headers=bearer(reader)),
            client.post(KEYS, headers=bearer(reader), json={"scopes": ["orders:read"]}),
            client.post("/v1/webhook-secrets/shopify", headers=bearer(reader)),
        ):
            assert (await call).status_code == 403
        assert (await client.get(KEYS)).status_code == 401

        admin = await api_key(client, tenant_id, "keys:admin")
        listed = (await client.get(KEYS, headers=bearer(admin))).json()["api_keys"]
        assert theirs.split("_")[1] not in {k["key_id"] for k in listed}
        gone = await client.delete(f"{KEYS}/{theirs.split('_')[1]}", headers=bearer(admin))
        assert gone.status_code == 404 and gone.json()["error"]["field"] == "key_id"


class TestRevoke:
    async def test_a_revoked_key_is_refused_and_the_revocation_announced_once(
        self, client, tap, runtime, tenant_id
    ):
        await register(client, tenant_id)
        admin = await api_key(client, tenant_id, "keys:admin", "orders:read")
        victim = await api_key(client, tenant_id, "orders:read")
        victim_id = victim.split("_")[1]
        assert (await client.get("/v1/deliveries", headers=bearer(victim))).status_code == 200

        r = await client.delete(f"{KEYS}/{victim_id}", headers=bearer(admin))

        assert r.status_code == 200, r.text
        assert r.json()["key_id"] == victim_id and r.json()["revoked"] is True
        assert (await client.get("/v1/deliveries", headers=bearer(victim))).status_code == 401
        # The event every other service's "tenants" group applies to its own copy.
        [revoked] = await tap.wait_for(
            lambda e: e.tenantid == tenant_id and e.id == r.json()["event_id"]
        )
        assert revoked.type == EVENTS.format("revoked") and revoked.subject == victim_id
        listed = (await client.get(KEYS, headers=bearer(admin))).json()["api_keys"]
        revoked_at = next(k for k in listed if k["key_id"] == victim_id)["revoked_at"]
        assert revoked_at is not None
        # Revoking it again changes nothing and announces nothing.
        again = await client.delete(f"{KEYS}/{victim_id}", headers=bearer(admin))
        assert again.status_code == 409 and "already revoked" in again.json()["error"]["message"]
        listed = (await client.get(KEYS, headers=bearer(admin))).json()["api_keys"]
        assert next(k for k in listed if k["key_id"] == victim_id)["revoked_at"] == revoked_at
        assert await revocations(runtime, victim_id) == 1

    async def test_the_calling_key_cannot_revoke_itself(self, client, tenant_id):
        await register(client, tenant_id)
        admin = await api_key(client, tenant_id, "keys:admin")
        own = admin.split("_")[1]
        r = await client.delete(f"{KEYS}/{own}", headers=bearer(admin))
        assert r.status_code == 409
        assert r.json()["error"]["field"] == "key_id" and own in r.json()["error"]["message"]
        assert (await client.get(KEYS, headers=bearer(admin))).status_code == 200

    async def test_a_key_holding_more_than_the_caller_is_not_revoked(self, client, tenant_id):
        await register(client, tenant_id)
        admin = await api_key(client, tenant_id, "keys:admin")
        integration = await api_key(client, tenant_id, "orders:write", "orders:read")
        r = await client.delete(f"{KEYS}/{integration.split('_')[1]}", headers=bearer(admin))
        assert r.status_code == 403 and r.json()["error"]["field"] == "key_id"
        assert (await client.get("/v1/deliveries", headers=bearer(integration))).status_code == 200


class TestWebhookSecretRotation:
    async def test_the_new_secret_is_shown_once_and_the_old_one_verifies_until_the_next(
        self, client, tenant_id
    ):
        secrets = await register(client, tenant_id)
        old = secrets["shopify"]
        admin = await api_key(client, tenant_id, "keys:admin")
        order = fixture("shopify_order")

        r = await client.post("/v1/webhook-secrets/shopify", headers=bearer(admin))

        assert r.status_code == 201, r.text
        new = r.json()["secret"]
        assert r.json()["platform"] == "shopify" and new != old
        assert r.json()["previous_valid_for_s"] > 0
        for secret in (old, new):  # the overlap: deliveries signed either way verify
            sent = await post_shopify(client, tenant_id, secret, "orders/create", order)
            assert sent.status_code == 200, sent.text
        # The secret given by the platform (Shopify's app secret) is taken as it is; the
        # one before the previous expires then: never more than two verify.
        given = await client.post(
            "/v1/webhook-secrets/shopify",
            headers=bearer(admin),
            json={"secret": "shopify-app-secret-2"},
        )
        assert given.status_code == 201 and given.json()["secret"] == "shopify-app-secret-2"
        expected = {old: 401, new: 200, "shopify-app-secret-2": 200}
        for secret, status in expected.items():
            sent = await post_shopify(
                client, tenant_id, secret, "orders/create", order, settle=False
            )
            assert sent.status_code == status, (secret, sent.text)

    async def test_an_unknown_platform_is_refused(self, client, tenant_id):
        await register(client, tenant_id)
        admin = await api_key(client, tenant_id, "keys:admin")
        r = await client.post("/v1/webhook-secrets/myspace", headers=bearer(admin))
        assert r.status_code == 422 and r.json()["error"]["field"] == "platform"
