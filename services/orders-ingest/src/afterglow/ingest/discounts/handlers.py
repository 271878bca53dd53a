"""Consumers of reward-code events, each taking a batch in one transaction (the
consumer runtime's): requests become rows, spent codes and revokes one UPDATE each."""

from __future__ import annotations

from typing import Any

from afterglow.events import CloudEvent, derived_event_id
from afterglow.events.catalog import (
    DiscountRequested,
    DiscountRevokeRequested,
    DiscountUsed,
    OrderPlaced,
)
from afterglow.events.subscriptions import ConsumerGroup, on_batch
from afterglow.ingest.discounts import domain, store
from afterglow.ingest.intake import SOURCE
from afterglow.kit.app import Runtime


class DiscountHandlers:
    def __init__(self, runtime: Runtime) -> None:
        self.rt = runtime

    async def requested(self, session: Any, events: list[CloudEvent[DiscountRequested]]) -> None:
        now = self.rt.clock.now()
        rows: dict[tuple[str, str], dict[str, Any]] = {}
        for e in events:
            d = e.data
            code = domain.normalize_code(d.code)
            # The first request for a code wins, here as in the table.
            rows.setdefault(
                (e.tenantid, code),
                {
                    "tenant_id": e.tenantid,
                    "code": code,
                    "customer_id": e.subject,
                    "issuer": e.source,
                    "reference": d.reference,
                    "title": d.title,
                    "value_kind": d.value_kind,
                    "amount_minor": d.amount.amount if d.amount else None,
                    "currency": d.amount.currency if d.amount else None,
                    "percent": d.percent,
                    "starts_at": d.starts_at,
                    "ends_at": d.ends_at,
                    "announce": d.announce.model_dump(mode="json") if d.announce else None,
                    "state": domain.CREATING,
                    "attempts": 0,
                    "next_attempt_at": now,
                    "created_at": now,
                    "updated_at": now,
                },
            )
        await store.insert_requests(session, list(rows.values()))

    async def revoke_requested(
        self, session: Any, events: list[CloudEvent[DiscountRevokeRequested]]
    ) -> None:
        revokes = {(e.tenantid, domain.normalize_code(e.data.code)): e.data.reason for e in events}
        await store.request_revokes(
            session, [(t, c, r) for (t, c), r in revokes.items()], self.rt.clock.now()
        )

    async def order_placed(self, session: Any, events: list[CloudEvent[OrderPlaced]]) -> None:
        """A reward code in an order's ``discount_codes`` is spent (the first order that
        names it wins). Orders without codes, most of them, cost nothing."""
        spent: dict[tuple[str, str], tuple[str, str, str, Any]] = {}
        for e in events:
            for raw in e.data.discount_codes:
                key = (e.tenantid, domain.normalize_code(raw))
                spent.setdefault(key, (*key, e.data.order_id, e.data.placed_at))
        if not spent:
            return
        used = await store.mark_used(session, list(spent.values()), self.rt.clock.now())
        order_of = {(t, c): o for t, c, o, _ in spent.values()}
        await self.rt.outbox.add(
            session,
            *(
                CloudEvent.new(
                    DiscountUsed(
                        code=code,
                        reference=reference,
                        order_id=order_of[(tenant, code)],
                        used_at=used_at,
                    ),
                    tenant_id=tenant,
                    subject=customer,
                    source=SOURCE,
                    id=derived_event_id(SOURCE, "discount.used", tenant, code),
                )
                for tenant, code, customer, _issuer, reference, used_at in used
            ),
        )


CONSUMERS = (
    ConsumerGroup(
        "discounts",
        on_batch(DiscountRequested, DiscountHandlers.requested),
        on_batch(DiscountRevokeRequested, DiscountHandlers.revoke_requested),
        on_batch(OrderPlaced, DiscountHandlers.order_placed),
        context=DiscountHandlers,
    ),
)
