"""A batch of orders counts the advocate's and the code's live conversions in memory
(service._Live): the counts must be those the one-by-one path asks the database for
(store.count_live_referrals_of_advocate and _of_code): placed in (after, until], the
order's own conversion excepted, an erased advocate's pseudonym counted as them."""

from __future__ import annotations

import random
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

from afterglow.events.privacy import pseudonym
from afterglow.referrals.service import _Live

T0 = datetime(2026, 1, 5, tzinfo=UTC)


def counted(rows, key, order, after):
    """The database's rule, row by row: rows are (tenant, order, advocate, code, at)."""
    return sum(
        1
        for row in rows
        if key(row) and after < row[4] <= order.placed_at and row[1] != order.order_id
    )


class TestLiveCounts:
    def test_counts_are_the_databases_whatever_the_order_rows_come_in(self):
        rnd = random.Random(7)
        tenant, advocates, codes = "t1", ["a1", "a2", pseudonym("t1", "a1")], ["k1", "k2"]
        rows = [
            (
                tenant,
                f"o{n}",
                rnd.choice(advocates),
                rnd.choice(codes),
                # Whole hours, so that many fall exactly on a window's bounds.
                T0 + timedelta(hours=rnd.randrange(48)),
            )
            for n in range(200)
        ]
        read, added = rows[:120], rows[120:]
        live = _Live(read)
        for t, order_id, advocate, code, at in added:  # decided by the batch, in any order
            live.add(
                {
                    "tenant_id": t,
                    "order_id": order_id,
                    "advocate_customer_id": advocate,
                    "code_id": code,
                    "placed_at": at,
                }
            )
        for n in range(300):
            # An order of the batch (its own conversion among the rows) or a new one.
            order_id = f"o{rnd.randrange(200)}" if n % 2 else f"new{n}"
            order = SimpleNamespace(
                order_id=order_id, placed_at=T0 + timedelta(hours=rnd.randrange(48))
            )
            after = order.placed_at - timedelta(hours=rnd.choice([1, 5, 24, 100]))
            assert live.of_advocate(tenant, "a1", order, after) == counted(
                rows, lambda r: r[2] in ("a1", pseudonym("t1", "a1")), order, after
            )
            assert live.of_advocate(tenant, "a2", order, after) == counted(
                rows, lambda r: r[2] == "a2", order, after
            )
            assert live.of_code(tenant, "k1", order, after) == counted(
                rows, lambda r: r[3] == "k1", order, after
            )

    def test_nothing_is_counted_for_an_advocate_or_a_code_without_conversions(self):
        live = _Live([("t1", "o1", "a1", "k1", T0)])
        order = SimpleNamespace(order_id="o2", placed_at=T0 + timedelta(hours=1))
        after = T0 - timedelta(days=1)
        assert live.of_advocate("t2", "a1", order, after) == 0
        assert live.of_code("t1", "k2", order, after) == 0
        assert live.of_code("t1", "k1", order, after) == 1
