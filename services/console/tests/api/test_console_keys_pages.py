"""Settings · API keys and webhook secrets (/settings/keys), over HTTP against every
service running on the real stack: a key issued and shown once, a revocation that
every service comes to refuse, a webhook secret rotated, and read-only sessions that
see the list and change nothing."""

from __future__ import annotations

import base64
import hashlib
import hmac
import html as htmllib
import json
import re
import uuid

import httpx
import pytest

from afterglow.devstack.services import RunningServices
from afterglow.events.testing import eventually

from ..console_support import (
    ADMIN,
    READ_SCOPES,
    WRITE_SCOPES,
    Tenant,
    csrf_of,
    new_tenant,
    signed_in,
)

pytestmark = [pytest.mark.timeout(600), pytest.mark.slow]

SHOWN = re.compile(r'id="shown-value" value="([^"]+)"')


async def admin_key(http: httpx.AsyncClient, t: Tenant, name: str, scopes: list[str]) -> str:
    r = await http.post(
        f"{t.urls['ingest']}/admin/tenants/{t.id}/api-keys", headers=ADMIN, json={"scopes": scopes}
    )
    assert r.status_code == 201, r.text
    t.keys[name] = r.json()["key"]
    return t.keys[name]


@pytest.fixture(scope="module")
async def shop(http: httpx.AsyncClient, services: RunningServices) -> Tenant:
    t = await new_tenant(http, services)
    # The console's keys with keys:admin: one that may act, one read-only.
    await admin_key(http, t, "keys_writer", [*WRITE_SCOPES, "keys:admin"])
    await admin_key(http, t, "keys_reader", [*READ_SCOPES, "keys:admin"])
    return t


def key_id(key: str) -> str:
    return key.split("_")[1]


def shown(page: str) -> str:
    m = SHOWN.search(page)
    assert m, "no new key or secret on the page"
    return htmllib.unescape(m.group(1))


class TestKeysPage:
    async def test_the_settings_page_links_to_it(self, shop: Tenant):
        async with signed_in(shop.urls["console"], shop.keys["reader"]) as c:
            page = await c.get("/settings")
        assert 'href="/settings/keys"' in page.text

    async def test_a_key_issued_is_shown_once_and_its_revocation_reaches_every_service(
        self, shop: Tenant, http: httpx.AsyncClient
    ):
        async with signed_in(shop.urls["console"], shop.keys["keys_writer"]) as c:
            page = await c.get("/settings/keys")
            assert page.status_code == 200, page.text
            assert key_id(shop.keys["keys_writer"]) in page.text
            assert shop.keys["keys_writer"] not in page.text  # ids, never the keys
            r = await c.post(
                "/settings/keys/issue",
                data={"csrf": csrf_of(page.text), "scope:feedback:read": "1"},
            )
            assert r.status_code == 200, r.text
            assert "shown this once" in r.text
            new = shown(r.text)
            assert new.startswith("agk_") and r.headers["cache-control"] == "no-store"
            again = await c.get("/settings/keys")
            assert key_id(new) in again.text and new not in again.text

            # The new key works where its scope does, once its announcement arrived.
            feedback = shop.urls["feedback"] + "/v1/metrics/nps"
            auth = {"Authorization": f"Bearer {new}"}

            async def nps() -> int:
                return (await http.get(feedback, headers=auth)).status_code

            assert await eventually(nps, lambda s: s != 401, timeout=120) == 200

            r = await c.post(
                f"/settings/keys/{key_id(new)}/revoke", data={"csrf": csrf_of(again.text)}
            )
            assert (r.status_code, r.headers["location"]) == (
                303,
                f"/settings/keys?done=revoked-{key_id(new)}",
            )
        # Another service refuses it once the revocation event reached it.
        assert await eventually(nps, lambda s: s == 401, timeout=120) == 401

    async def test_a_scope_the_session_lacks_is_refused_by_ingest(self, shop: Tenant):
        async with signed_in(shop.urls["console"], shop.keys["keys_writer"]) as c:
            page = await c.get("/settings/keys")
            assert 'name="scope:orders:write"' not in page.text  # not the session's
            r = await c.post(
                "/settings/keys/issue",
                data={"csrf": csrf_of(page.text), "scope:orders:write": "1"},
            )
        assert r.status_code == 403
        assert "cannot grant" in r.text and "orders:write" in r.text
        assert SHOWN.search(r.text) is None

    async def test_the_sessions_own_key_has_no_revoke_button_and_is_refused(self, shop: Tenant):
        own = key_id(shop.keys["keys_writer"])
        async with signed_in(shop.urls["console"], shop.keys["keys_writer"]) as c:
            page = await c.get("/settings/keys")
            assert f'action="/settings/keys/{own}/revoke"' not in page.text
            r = await c.post(f"/settings/keys/{own}/revoke", data={"csrf": csrf_of(page.text)})
            assert r.status_code == 409
            assert own in r.text
            assert (await c.get("/settings/keys")).status_code == 200  # still signed in

    async def test_a_webhook_secret_rotated_is_shown_once_and_both_verify(
        self, shop: Tenant, http: httpx.AsyncClient
    ):
        async with signed_in(shop.urls["console"], shop.keys["keys_writer"]) as c:
            page = await c.get("/settings/keys")
            first = await c.post(
                "/settings/keys/webhook-secret",
                data={"csrf": csrf_of(page.text), "platform": "woocommerce"},
            )
            assert first.status_code == 200, first.text
            second = await c.post(
                "/settings/keys/webhook-secret",
                data={"csrf": csrf_of(page.text), "platform": "woocommerce"},
            )
        old, new = shown(first.text), shown(second.text)
        assert old != new and "keeps verifying deliveries for" in second.text
        # Both verify at ingest during the overlap; the one before them no longer does.
        for secret in (old, new):
            assert await woo_ping(http, shop, secret) == 200
        assert await woo_ping(http, shop, "not-the-secret") == 401

    async def test_an_unknown_platform_is_refused_here(self, shop: Tenant):
        async with signed_in(shop.urls["console"], shop.keys["keys_writer"]) as c:
            page = await c.get("/settings/keys")
            r = await c.post(
                "/settings/keys/webhook-secret",
                data={"csrf": csrf_of(page.text), "platform": "myspace"},
            )
        assert r.status_code == 422 and "choose a platform" in r.text


class TestReadOnly:
    async def test_a_read_only_session_sees_the_list_and_no_form(
        self, shop: Tenant, http: httpx.AsyncClient
    ):
        victim = key_id(shop.keys["reader"])
        async with signed_in(shop.urls["console"], shop.keys["keys_reader"]) as c:
            page = await c.get("/settings/keys")
            assert page.status_code == 200
            assert victim in page.text
            assert 'action="/settings/keys/' not in page.text
            csrf = csrf_of(page.text)  # the layout's sign-out form: a valid token
            for path, form in (
                ("/settings/keys/issue", {"scope:orders:read": "1"}),
                (f"/settings/keys/{victim}/revoke", {}),
                ("/settings/keys/webhook-secret", {"platform": "shopify"}),
            ):
                r = await c.post(path, data={"csrf": csrf, **form})
                assert r.status_code == 403, (path, r.text)
                assert "read-only" in r.text
        # Nothing was revoked: the reader key still works at ingest.
        still = await http.get(shop.urls["ingest"] + "/v1/deliveries", headers=shop.auth("reader"))
        assert still.status_code == 200

    async def test_a_key_without_keys_admin_is_told_why(self, shop: Tenant):
        async with signed_in(shop.urls["console"], shop.keys["writer"]) as c:
            page = await c.get("/settings/keys")
        assert page.status_code == 200
        assert "keys:admin" in page.text
        assert 'action="/settings/keys/issue"' not in page.text

    async def test_a_form_without_the_sessions_token_is_refused(self, shop: Tenant):
        async with signed_in(shop.urls["console"], shop.keys["keys_writer"]) as c:
            r = await c.post("/settings/keys/issue", data={"scope:feedback:read": "1"})
        assert r.status_code == 403 and SHOWN.search(r.text) is None


async def woo_ping(http: httpx.AsyncClient, t: Tenant, secret: str) -> int:
    """A WooCommerce delivery (a product update: archived, no event) signed with
    ``secret``: 200 when ingest verifies it, 401 when not."""
    body = json.dumps({"id": 1}).encode()
    sig = base64.b64encode(hmac.new(secret.encode(), body, hashlib.sha256).digest()).decode()
    r = await http.post(
        f"{t.urls['ingest']}/webhooks/woocommerce/{t.id}",
        content=body,
        headers={
            "Content-Type": "application/json",
            "X-WC-Webhook-Topic": "product.updated",
            "X-WC-Webhook-Delivery-ID": str(uuid.uuid4().int % 10**6),
            "X-WC-Webhook-Signature": sig,
        },
    )
    return r.status_code
