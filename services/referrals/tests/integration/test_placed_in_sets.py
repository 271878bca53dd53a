"""A run of order.placed events in one partition batch is attributed in sets
(ReferralService.orders_placed) with exactly the outcome of applying the events one by
one, in order (handlers.placed, the per-event path).

The batches here go through the consumer runtime's own transaction
(:func:`afterglow.events.batch.apply_in_one_transaction`, the inbox claim and the
group's registered batch handler), so "in one batch" is certain rather than left to how
the broker groups records. The same scenario is applied, in a second tenant, event by
event through the per-event handlers, and both tenants must end in the same state; the
outcomes are also checked against values worked out by hand, so the two paths cannot
agree on a wrong answer unnoticed."""

from __future__ import annotations

import json
import uuid
from datetime import timedelta
from typing import Any

from sqlalchemy import select

from afterglow.events import CloudEvent
from afterglow.events.batch import apply_in_one_transaction, each_in_order, inbox_claim
from afterglow.events.catalog import CustomerErasureRequested
from afterglow.referrals import handlers
from afterglow.referrals.deps import deps_of
from afterglow.referrals.models import Order, Referral

from ..referrals_support import Service

# The consumer's own inbox: a batch applied here is one the live consumer would skip.
CONSUMER = "referrals.events"

# order id -> (state, reason, via) worked out by hand for scenario() (the advocate cap
# is 4 in the test settings, the velocity limit 3 an hour, the attribution window 90 days).
EXPECTED = {
    "o1": ("pending", None, "referral_code"),
    # The same customer's second order: o1 was seen earlier in the batch.
    "o2": ("rejected", "existing_customer", "referral_code"),
    "o3": ("rejected", "self_referral", "referral_code"),
    # A discount code typed in lower case with a dash is still the code.
    "o4": ("pending", None, "discount_code"),
    "o5": ("pending", None, "referral_code"),  # an anonymous order
    # adv3's own order earlier in the batch carries the referee's email.
    "o7": ("rejected", "self_referral", "referral_code"),
    # ref4's later order arrives first: one by one it saw no earlier order, and o8
    # (placed before it) saw none either: o9 is placed after it.
    "o9": ("pending", None, "referral_code"),
    "o8": ("pending", None, "referral_code"),
    # adv2 has four live conversions in the cap period (o4, o5, o9, o8).
    "o10": ("rejected", "advocate_cap", "referral_code"),
    "o11": ("pending", None, "referral_code"),
    "o12": ("pending", None, "referral_code"),
    # The fourth live conversion from C1 within the hour (o1, o11, o12).
    "o13": ("held", "velocity_review", "referral_code"),
}


def scenario(service: Service, tenant: str, codes: dict[str, str]) -> list[CloudEvent[Any]]:
    """One partition batch: several orders of one customer, one order twice under two
    event ids, orders of other customers, an anonymous order, a historical one, a
    fulfilment in the middle, and orders out of placing order."""
    t0 = service.clock.now()

    def at(minutes: int) -> Any:
        return t0 + timedelta(minutes=minutes)

    def ev(subject: str, data: Any) -> CloudEvent[Any]:
        return CloudEvent.new(
            data, tenant_id=tenant, subject=subject, source="tests", time=service.clock.now()
        )

    def placed(
        subject: str, order_id: str, email: str, minutes: int, historical: bool = False, **kw: Any
    ) -> CloudEvent[Any]:
        data = service.placed(
            order_id=order_id, email=email, at=at(minutes), address_hash=f"addr-{subject}", **kw
        )
        return ev(subject, data.model_copy(update={"historical": historical}))

    c1, c2, c3 = codes["adv1"], codes["adv2"], codes["adv3"]
    first_o1 = placed("ref1", "o1", "ref1@example.com", 1, referral_code=c1)
    repeat_o1 = ev("ref1", first_o1.data)  # the same order under another event id
    return [
        placed("adv3", "o-adv3", "adv3@example.com", 0),
        first_o1,
        ev("ref1", service.fulfilled("o1", at(2))),
        placed("ref1", "o2", "ref1@example.com", 3, referral_code=c1),
        repeat_o1,
        placed("adv1", "o3", "adv1@example.com", 3, referral_code=c1),
        placed(
            "ref2",
            "o4",
            "ref2@example.com",
            4,
            discount_codes=["WELCOME10", f"{c2[:3].lower()}-{c2[3:].lower()}"],
        ),
        placed("order:o5", "o5", "anon@example.com", 5, referral_code=c2),
        placed("ref5", "o6", "ref5@example.com", 6, historical=True, referral_code=c3),
        placed("ref3", "o7", "adv3@example.com", 7, referral_code=c3),
        placed("ref4", "o9", "ref4@example.com", 30, referral_code=c2),
        placed("ref4", "o8", "ref4@example.com", 20, referral_code=c2),
        placed("ref6", "o10", "ref6@example.com", 31, referral_code=c2),
        placed("ref7", "o11", "ref7@example.com", 8, referral_code=c1),
        placed("ref8", "o12", "ref8@example.com", 9, referral_code=c1),
        placed("ref9", "o13", "ref9@example.com", 10, referral_code=c1),
    ]


async def issue_codes(service: Service, tenant: str) -> dict[str, str]:
    return {a: await service.issue_code(tenant, a) for a in ("adv1", "adv2", "adv3")}


async def apply_batch(service: Service, events: list[CloudEvent[Any]]) -> list[str]:
    """One partition batch through the consumer's transaction; the ids applied."""
    table = handlers.CONSUMERS[0].handlers(service.runtime)
    claim = inbox_claim(service.runtime.tables.inbox)
    async with service.runtime.sessionmaker.begin() as s:
        done = await apply_in_one_transaction(
            s, claim, CONSUMER, [(e, table[e.type]) for e in events]
        )
    return [e.id for e in done.applied]


async def apply_one_by_one(service: Service, events: list[CloudEvent[Any]]) -> None:
    """The same events through the per-event handlers, in order, each seeing the
    earlier ones' writes (what the consumer did before order.placed went in sets)."""
    svc = deps_of(service.runtime).referrals
    async with service.runtime.sessionmaker.begin() as s:
        await each_in_order(s, events, lambda s, e: handlers.ONE_BY_ONE[type(e.data)](svc, s, e))


async def referral_state(service: Service, tenant: str) -> dict[str, tuple[Any, ...]]:
    """Each referral of the tenant by order id, without what is random or per tenant
    (ids, codes, the reward code's value) or read from the clock at write time."""
    async with service.runtime.sessionmaker() as s:
        rows = await s.scalars(select(Referral).where(Referral.tenant_id == tenant))
        return {
            r.order_id: (
                r.state,
                r.reason,
                r.detail,
                r.via,
                r.advocate_customer_id,
                r.referee_customer_id,
                r.order_total,
                r.placed_at,
                r.fulfilled_at,
                r.confirm_due_at,
                r.refunded_amount,
                r.referee_reward_code is not None,
            )
            for r in rows
        }


async def order_rows(service: Service, tenant: str) -> set[tuple[Any, ...]]:
    async with service.runtime.sessionmaker() as s:
        rows = await s.scalars(select(Order).where(Order.tenant_id == tenant))
        return {
            (
                o.order_id,
                o.customer_id,
                o.placed_at,
                o.total_amount,
                o.email_hash,
                o.shipping_address_hash,
                o.fulfilled_at,
            )
            for o in rows
        }


async def outbox_events(service: Service, tenant: str) -> list[tuple[str, str, Any]]:
    """(type, subject, rejection reason) of the tenant's outbox events, in order."""
    out = service.runtime.tables.outbox
    async with service.runtime.sessionmaker() as s:
        rows = (
            await s.execute(select(out.c.event_type, out.c.headers, out.c.value).order_by(out.c.id))
        ).all()
    found = []
    for event_type, headers, value in rows:
        ce = dict(headers)
        if ce["ce_tenantid"] == tenant:
            found.append((event_type, ce["ce_subject"], json.loads(value).get("reason")))
    return found


class TestOrdersPlacedInSets:
    async def test_a_batch_of_orders_ends_as_applying_them_one_by_one(self, service):
        in_sets, one_by_one = f"t-{uuid.uuid4().hex[:10]}", f"t-{uuid.uuid4().hex[:10]}"
        codes_a = await issue_codes(service, in_sets)
        codes_b = await issue_codes(service, one_by_one)

        batch = scenario(service, in_sets, codes_a)
        applied = await apply_batch(service, batch)
        await apply_one_by_one(service, scenario(service, one_by_one, codes_b))

        assert applied == [e.id for e in batch]  # nothing left out, the repeat included
        got = await referral_state(service, in_sets)
        assert {o: (r[0], r[1], r[3]) for o, r in got.items()} == EXPECTED
        assert got == await referral_state(service, one_by_one)
        # The fulfilment between the placements reached o1's referral.
        assert got["o1"][8] is not None
        assert got["o1"][11] and got["o4"][11] and not got["o13"][11]
        assert await order_rows(service, in_sets) == await order_rows(service, one_by_one)
        assert len(await order_rows(service, in_sets)) == 14  # o-adv3, o1..o13
        emitted = await outbox_events(service, in_sets)
        assert emitted == await outbox_events(service, one_by_one)
        # One reward per pending referral, one rejection per rejected one.
        rejected = [reason for _, _, reason in emitted if reason is not None]
        assert sorted(rejected) == sorted(r for s, r, _ in EXPECTED.values() if s == "rejected")

    async def test_a_repeated_batch_changes_nothing(self, service):
        tenant = f"t-{uuid.uuid4().hex[:10]}"
        codes = await issue_codes(service, tenant)
        batch = scenario(service, tenant, codes)
        await apply_batch(service, batch)
        before = (await referral_state(service, tenant), await outbox_events(service, tenant))
        # The same events redelivered are skipped by the inbox; the same orders under new
        # event ids are seen as orders already attributed.
        assert await apply_batch(service, batch) == []
        again = [
            CloudEvent.new(e.data, tenant_id=tenant, subject=e.subject, source="tests", time=e.time)
            for e in batch
        ]
        await apply_batch(service, again)
        after = (await referral_state(service, tenant), await outbox_events(service, tenant))
        assert after == before


class TestCodesChangedInTheBatch:
    async def test_an_order_after_its_advocates_erasure_in_the_batch_is_not_attributed(
        self, service
    ):
        """The codes a batch locked are read once; an erasure applied alone in the
        batch deactivates one, and the orders after it must see that, as one by one."""
        in_sets, one_by_one = f"t-{uuid.uuid4().hex[:10]}", f"t-{uuid.uuid4().hex[:10]}"

        def batch(tenant: str, codes: dict[str, str]) -> list[CloudEvent[Any]]:
            def ev(subject: str, data: Any) -> CloudEvent[Any]:
                return CloudEvent.new(data, tenant_id=tenant, subject=subject, source="tests")

            now = service.clock.now()
            return [
                ev("ref1", service.placed(order_id="o1", referral_code=codes["adv1"], at=now)),
                ev("adv1", CustomerErasureRequested(requested_at=now)),
                ev("ref2", service.placed(order_id="o2", referral_code=codes["adv1"], at=now)),
                ev("ref3", service.placed(order_id="o3", referral_code=codes["adv2"], at=now)),
            ]

        codes_a = await issue_codes(service, in_sets)
        codes_b = await issue_codes(service, one_by_one)
        await apply_batch(service, batch(in_sets, codes_a))
        await apply_one_by_one(service, batch(one_by_one, codes_b))

        got = await referral_state(service, in_sets)
        assert sorted(got) == ["o1", "o3"]  # o2's code was deactivated before it
        # The erased advocate's pseudonym differs by tenant: compare the outcomes.
        expected = await referral_state(service, one_by_one)
        assert {o: r[:4] for o, r in got.items()} == {o: r[:4] for o, r in expected.items()}
