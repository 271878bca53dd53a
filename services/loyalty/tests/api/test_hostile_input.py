"""Odd values at loyalty's routes: a 422 naming the field, never a 500, never a
changed ledger."""

from __future__ import annotations

from ..loyalty_support import Loyalty, new_id


class TestOddValues:
    async def test_points_adjustment_of_2_pow_63_is_422(self, loyalty: Loyalty, tenant_id):
        h = await loyalty.key(tenant_id)
        c = new_id("c")
        for points in (2**63, -(2**63) - 1, 2**64, 10**15 + 1):
            r = await loyalty.client.post(
                f"/v1/accounts/{c}/adjustments",
                json={"points": points, "reason": "overflow"},
                headers=h,
            )
            assert r.status_code == 422, (points, r.text)
            assert r.json()["error"]["field"] == "points"
        # Nothing was written: the customer still has no account.
        assert (await loyalty.client.get(f"/v1/accounts/{c}", headers=h)).status_code == 404

    async def test_rules_with_amounts_beyond_a_bigint_are_422(self, loyalty: Loyalty, tenant_id):
        h = await loyalty.key(tenant_id)
        rules = (await loyalty.client.get("/v1/rules", headers=h)).json()
        for change, field in (
            ({"unit_minor": 2**63}, "unit_minor"),
            ({"tiers": [{"name": "bronze", "threshold": 2**63}]}, "tiers.0.threshold"),
        ):
            r = await loyalty.client.put("/v1/rules", json={**rules, **change}, headers=h)
            assert r.status_code == 422, (change, r.text)
            assert r.json()["error"]["field"] == field

    async def test_nul_in_path_id_is_422(self, loyalty: Loyalty, tenant_id):
        h = await loyalty.key(tenant_id)
        for path in ("/v1/accounts/a%00b", "/v1/accounts/a%00b/history"):
            r = await loyalty.client.get(path, headers=h)
            assert r.status_code == 422, r.text
            assert r.json()["error"]["field"] == "customer"

    async def test_control_characters_in_a_reason_are_422(self, loyalty: Loyalty, tenant_id):
        h = await loyalty.key(tenant_id)
        r = await loyalty.client.post(
            f"/v1/accounts/{new_id('c')}/adjustments",
            json={"points": 10, "reason": "a\x00b"},
            headers=h,
        )
        assert r.status_code == 422 and r.json()["error"]["field"] == "reason"
