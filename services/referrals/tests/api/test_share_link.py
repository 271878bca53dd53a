"""The default share link (PUBLIC_BASE_URL/r/{tenant}?ref=CODE) is served: it sends the
friend on to the shop with the code, and odd input gets a 4xx, never a 500."""

from __future__ import annotations

from urllib.parse import urlsplit

from afterglow.devstack.pytest_plugin import serve_app
from afterglow.referrals.app import create_app

from ..referrals_support import Service, fast_settings


def path_of(url: str) -> str:
    parts = urlsplit(url)
    return f"{parts.path}?{parts.query}"


async def share_url(service: Service, tenant: str, advocate: str) -> str:
    code = await service.issue_code(tenant, advocate)
    r = await service.client.get(f"/v1/codes/{code}", headers=await service.headers(tenant))
    url: str = r.json()["share_url"]
    return url


class TestShareLink:
    async def test_share_link_redirects_to_shop(self, service, tenant_id):
        url = await share_url(service, tenant_id, "adv-1")
        code = url.rsplit("ref=", 1)[1]
        assert url == f"{service.runtime.settings.public_base_url}/r/{tenant_id}?ref={code}"
        # The operator names the shop (one shop per deployment) ...
        app = create_app(
            fast_settings(service_role="api", referrals_shop_url="https://shop.example/?utm=x"),
            clock=service.clock,
        )
        async with serve_app(app) as client:
            r = await client.get(path_of(url))
        assert r.status_code == 302, r.text
        assert r.headers["location"] == f"https://shop.example/?utm=x&ref={code}"
        # ... or the tenant, after the link went out: links already shared follow it.
        put = await service.client.put(
            "/v1/settings",
            json={"share_base_url": "https://acme.example/friends"},
            headers=await service.headers(tenant_id),
        )
        assert put.status_code == 200
        r = await service.client.get(path_of(url))
        assert r.status_code == 302
        assert r.headers["location"] == f"https://acme.example/friends?ref={code}"

    async def test_share_link_without_a_known_shop_shows_the_code(self, service, tenant_id):
        url = await share_url(service, tenant_id, "adv-2")
        code = url.rsplit("ref=", 1)[1]
        r = await service.client.get(path_of(url))
        assert r.status_code == 200
        assert f"<strong>{code}</strong>" in r.text
        assert r.headers["x-content-type-options"] == "nosniff"

    async def test_unknown_code_and_odd_values(self, service, tenant_id):
        assert (await service.client.get(f"/r/{tenant_id}?ref=ZZZZZZZ")).status_code == 404
        r = await service.client.get(f"/r/{tenant_id}")
        assert r.status_code == 422 and r.json()["error"]["field"] == "ref"
        r = await service.client.get("/r/a%00b?ref=ABC2345")
        assert r.status_code == 422 and r.json()["error"]["field"] == "tenant_id"
        r = await service.client.get(f"/r/{tenant_id}?ref=AB%00C")
        assert r.status_code == 422 and r.json()["error"]["field"] == "ref"


class TestOddValues:
    async def test_nul_in_path_id_is_422(self, service, tenant_id):
        h = await service.headers(tenant_id)
        for method, path, field in (
            ("POST", "/v1/advocates/a%00b/code", "customer"),
            ("GET", "/v1/advocates/a%00b/referrals", "customer"),
            ("GET", "/v1/codes/A%00B", "code"),
        ):
            r = await service.client.request(method, path, headers=h)
            assert r.status_code == 422, (path, r.text)
            assert r.json()["error"]["field"] == field
