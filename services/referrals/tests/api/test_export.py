"""GET /v1/customers/{id}/export on the real stack: a customer's codes, orders and
referrals of the calling tenant, each referral cut to the customer's side."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime, timedelta

from afterglow.events.catalog import CustomerErasureRequested
from afterglow.events.privacy import pseudonym
from afterglow.events.testing import eventually
from afterglow.kit.export import EXPORT_SCOPE
from afterglow.referrals.domain import contact_hash
from afterglow.referrals.models import Referral

from ..referrals_support import new_id

EXPORT_ONLY = [EXPORT_SCOPE]
REFERRAL_COLUMNS = set(Referral.__table__.c.keys())
FRIEND_SIDE = {
    "referee_customer_id",
    "order_id",
    "order_total",
    "currency",
    "refunded_amount",
    "referee_reward_code",
    "detail",
}
ADVOCATE_SIDE = {"advocate_customer_id", "detail"}


@dataclass
class World:
    """Customer A of the tenant as referee (of C), advocate (of friend F) and
    self-referrer; customer B of the same tenant; customer A of another tenant."""

    tenant: str
    other_tenant: str
    a: str
    b: str
    c: str
    f: str
    t0: datetime
    code_a: str
    code_b: str
    code_c: str
    code_a_other: str
    a_first: str  # A's order with C's code
    a_self: str  # A's order with A's own code
    f_order: str  # F's order with A's code
    f_reward: str  # F's discount code for that order
    b_order: str
    a_other_order: str


async def _order(service, tenant, customer, advocate=None, **kw):
    """Publish an order and wait until it is seen (and attributed, given the advocate)."""
    order = service.placed(**kw)
    await service.publish(order, tenant=tenant, subject=customer)
    if advocate is None:
        await service.wait_order_seen(tenant, order.order_id)
        return order.order_id, None
    return order.order_id, await service.wait_referral(tenant, advocate, order.order_id)


async def build_world(service, tenant) -> World:
    other = tenant + "-other"
    a, b, c, f = (new_id(p) for p in ("cust-a", "cust-b", "adv-c", "friend-f"))
    t0 = service.clock.now()
    at = [t0 + timedelta(minutes=n) for n in range(1, 6)]
    code_a, code_b, code_c = [await service.issue_code(tenant, who) for who in (a, b, c)]
    a_contact = {"email": "a@example.com", "phone_hash": "phone-a", "address_hash": "addr-a"}
    a_first, _ = await _order(
        service,
        tenant,
        a,
        c,
        referral_code=code_c,
        at=at[0],
        amount=4200,
        currency="EUR",
        **a_contact,
    )
    f_order, f_row = await _order(
        service, tenant, f, a, referral_code=code_a, email="f@example.com", at=at[1], amount=9900
    )
    a_self, _ = await _order(
        service,
        tenant,
        a,
        a,
        referral_code=code_a,
        at=at[2],
        amount=1500,
        orders_count=2,
        **a_contact,
    )
    b_order, _ = await _order(
        service, tenant, b, c, referral_code=code_c, email="b@example.com", at=at[3]
    )
    code_a_other = await service.issue_code(other, a)
    a_other_order, _ = await _order(service, other, a, email="a@example.com", at=at[4])
    return World(
        tenant=tenant,
        other_tenant=other,
        a=a,
        b=b,
        c=c,
        f=f,
        t0=t0,
        code_a=code_a,
        code_b=code_b,
        code_c=code_c,
        code_a_other=code_a_other,
        a_first=a_first,
        a_self=a_self,
        f_order=f_order,
        f_reward=f_row["referee_reward_code"],
        b_order=b_order,
        a_other_order=a_other_order,
    )


async def export(service, tenant, customer, scopes=EXPORT_ONLY):
    r = await service.client.get(
        f"/v1/customers/{customer}/export", headers=await service.headers(tenant, scopes)
    )
    assert r.status_code == 200, r.text
    body = r.json()
    assert (body["service"], body["tenant_id"], body["customer_id"]) == (
        "referrals",
        tenant,
        customer,
    )
    return body["records"]


def at(row, column):
    return datetime.fromisoformat(row[column])


class TestExport:
    async def test_holds_the_customers_rows_of_this_tenant_only(self, service, tenant_id):
        w = await build_world(service, tenant_id)
        records = await export(service, w.tenant, w.a)
        assert set(records) == {"codes", "orders", "referrals"}

        [code] = records["codes"]
        assert (code["tenant_id"], code["advocate_customer_id"], code["code"]) == (
            w.tenant,
            w.a,
            w.code_a,
        )
        # Issued by the API, never invited: no invitation counted.
        assert (code["source"], code["invitations"], code["deactivated_at"]) == ("api", 0, None)

        orders = records["orders"]
        assert [o["order_id"] for o in orders] == [w.a_first, w.a_self]  # by placed_at
        assert [(o["total_amount"], o["currency"]) for o in orders] == [
            (4200, "EUR"),
            (1500, "USD"),
        ]
        for o in orders:  # the customer's own contact hashes are their data: kept
            assert (o["tenant_id"], o["customer_id"]) == (w.tenant, w.a)
            assert o["email_hash"] == contact_hash("a@example.com")
            assert (o["phone_hash"], o["shipping_address_hash"]) == ("phone-a", "addr-a")
        assert at(orders[0], "placed_at") == w.t0 + timedelta(minutes=1)

        as_referee, as_advocate, as_both = records["referrals"]  # by placed_at
        assert all(r["tenant_id"] == w.tenant for r in records["referrals"])
        # A ordered with C's code: A's own order and reward, not who C is.
        assert as_referee["referee_customer_id"] == w.a
        assert (as_referee["order_id"], as_referee["code"]) == (w.a_first, w.code_c)
        assert (as_referee["state"], as_referee["order_total"]) == ("pending", 4200)
        assert as_referee["referee_reward_code"].startswith("RF")
        # F ordered with A's code: A's reward decision, not who F is or what F bought.
        assert (as_advocate["advocate_customer_id"], as_advocate["code"]) == (w.a, w.code_a)
        assert (as_advocate["state"], as_advocate["via"]) == ("pending", "referral_code")
        assert at(as_advocate, "placed_at") == w.t0 + timedelta(minutes=2)
        # A used their own code: both sides are A, so the row is whole.
        assert as_both["advocate_customer_id"] == as_both["referee_customer_id"] == w.a
        assert (as_both["order_id"], as_both["state"]) == (w.a_self, "rejected")
        assert (as_both["reason"], as_both["detail"]) == ("self_referral", "same customer")

        dumped = json.dumps(records)
        others = [w.b, w.code_b, w.b_order, w.code_a_other, w.a_other_order, w.other_tenant]
        for value in others:
            assert value not in dumped, value

    async def test_the_other_party_of_a_referral_is_left_out(self, service, tenant_id):
        w = await build_world(service, tenant_id)
        as_referee, as_advocate, as_both = (await export(service, w.tenant, w.a))["referrals"]
        assert set(as_referee) == REFERRAL_COLUMNS - ADVOCATE_SIDE
        assert set(as_advocate) == REFERRAL_COLUMNS - FRIEND_SIDE
        assert set(as_both) == REFERRAL_COLUMNS
        dumped = json.dumps([as_referee, as_advocate, as_both])
        for value in (w.c, w.f, w.f_order, w.f_reward):
            assert value not in dumped, value

        # The friend's own export has the friend's side of the same referral.
        [f_row] = (await export(service, w.tenant, w.f))["referrals"]
        assert (f_row["referee_customer_id"], f_row["order_id"]) == (w.f, w.f_order)
        assert (f_row["referee_reward_code"], f_row["order_total"]) == (w.f_reward, 9900)
        assert "advocate_customer_id" not in f_row
        assert w.a not in json.dumps(f_row)

    async def test_an_unknown_customer_has_every_table_empty(self, service, tenant_id):
        records = await export(service, tenant_id, "nobody")
        assert records == {"codes": [], "orders": [], "referrals": []}

    async def test_an_erased_customer_has_nothing_left(self, service, tenant_id):
        w = await build_world(service, tenant_id)
        await service.publish(
            CustomerErasureRequested(requested_at=service.clock.now(), scope="customer"),
            tenant=w.tenant,
            subject=w.a,
        )
        await eventually(lambda: service.rows_naming(w.tenant, w.a), lambda rows: rows == [])

        empty = {"codes": [], "orders": [], "referrals": []}
        assert await export(service, w.tenant, w.a) == empty
        # The pseudonymized rows are kept for counts, not handed out under the alias.
        alias = pseudonym(w.tenant, w.a)
        assert await service.rows_naming(w.tenant, alias)
        assert await export(service, w.tenant, alias) == empty
        # The friend's side of A's referral is still the friend's; A elsewhere is not erased.
        [f_row] = (await export(service, w.tenant, w.f))["referrals"]
        assert f_row["order_id"] == w.f_order
        other = await export(service, w.other_tenant, w.a)
        assert [o["order_id"] for o in other["orders"]] == [w.a_other_order]


class TestExportAuth:
    async def test_the_read_scope_is_not_enough(self, service, tenant_id):
        headers = await service.headers(tenant_id, ["referrals:read", "referrals:write"])
        r = await service.client.get("/v1/customers/c1/export", headers=headers)
        assert r.status_code == 403
        assert r.json()["error"]["code"] == "forbidden"
        assert EXPORT_SCOPE in r.json()["error"]["message"]

    async def test_requires_a_key(self, service):
        r = await service.client.get("/v1/customers/c1/export")
        assert r.status_code == 401
        assert r.json()["error"]["code"] == "unauthorized"
