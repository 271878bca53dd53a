"""Redemptions through their group commit (afterglow.loyalty.redemptions): concurrent
requests share one transaction, and each still gets the answer it would get alone.
Never overdrawn, an Idempotency-Key redeems once however many times it is sent at
once, one request's business error never fails the others of its batch."""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import event, func, select, text

from afterglow.loyalty.deps import deps_of
from afterglow.loyalty.models import EntryRow, LotRow, Redemption
from afterglow.loyalty.redemptions import RedeemRequest, redeem_batch
from afterglow.loyalty.service import InsufficientPointsError

from ..loyalty_support import Loyalty, new_id, running_loyalty

REDEEMED = "afterglow.points.redeemed.v1"


async def credit(loyalty: Loyalty, tenant: str, customer: str, points: int) -> None:
    r = await loyalty.client.post(
        f"/v1/accounts/{customer}/adjustments",
        json={"points": points, "reason": "goodwill"},
        headers=await loyalty.key(tenant),
    )
    assert r.status_code == 201, r.text


async def redeem(
    loyalty: Loyalty, tenant: str, customer: str, reward: str, key: str
) -> tuple[int, dict[str, Any], bool]:
    r = await loyalty.client.post(
        f"/v1/accounts/{customer}/redemptions",
        json={"reward_id": reward},
        headers={**await loyalty.key(tenant), "Idempotency-Key": key},
    )
    return r.status_code, r.json(), r.headers.get("Idempotent-Replayed") == "true"


async def stored(loyalty: Loyalty, tenant: str, customer: str) -> tuple[int, int, int]:
    """(redemption rows, redeem entries, points.redeemed events in the outbox)."""
    outbox = loyalty.runtime.tables.outbox
    async with loyalty.runtime.sessionmaker() as s:
        rows = await s.scalar(
            select(func.count()).where(
                Redemption.tenant_id == tenant, Redemption.customer_id == customer
            )
        )
        entries = await s.scalar(
            select(func.count()).where(
                EntryRow.tenant_id == tenant,
                EntryRow.customer_id == customer,
                EntryRow.kind == "redeem",
            )
        )
        events = await s.scalar(
            select(func.count()).where(
                outbox.c.key == f"{tenant}:{customer}",
                outbox.c.event_type == REDEEMED,
            )
        )
    return int(rows or 0), int(entries or 0), int(events or 0)


class TestNeverOverdrawn:
    async def test_hundred_parallel_redemptions_on_five_accounts_each_covering_two(
        self, loyalty: Loyalty, tenant_id
    ):
        customers = [new_id("c") for _ in range(5)]
        for c in customers:
            await credit(loyalty, tenant_id, c, 1_000)  # two five-off rewards at 500
        answers = await asyncio.gather(
            *(
                redeem(loyalty, tenant_id, customers[i % 5], "five-off", f"par-{i}")
                for i in range(100)
            )
        )
        statuses = [s for s, _, _ in answers]
        assert statuses.count(201) == 10 and statuses.count(409) == 90
        refused = [body for s, body, _ in answers if s == 409]
        assert {b["error"]["code"] for b in refused} == {"insufficient_points"}
        made = [body for s, body, _ in answers if s == 201]
        assert len({b["code"] for b in made}) == 10
        # Each account's two answers saw the balance the other left: 500 then 0.
        for n, c in enumerate(customers):
            mine = [b for i, (s, b, _) in enumerate(answers) if s == 201 and i % 5 == n]
            assert sorted(b["balance"]["available"] for b in mine) == [0, 500]
            assert await loyalty.consistent(tenant_id, c) == (0, 0)
            assert await stored(loyalty, tenant_id, c) == (2, 2, 2)

    async def test_hundred_parallel_redemptions_against_a_balance_covering_ten(
        self, loyalty: Loyalty, tenant_id
    ):
        c = new_id("c")
        await credit(loyalty, tenant_id, c, 5_000)
        answers = await asyncio.gather(
            *(redeem(loyalty, tenant_id, c, "five-off", f"hot-{i}") for i in range(100))
        )
        statuses = [s for s, _, _ in answers]
        assert statuses.count(201) == 10 and statuses.count(409) == 90
        left = sorted(b["balance"]["available"] for s, b, _ in answers if s == 201)
        assert left == list(range(0, 5_000, 500))  # one after the other, none twice
        assert await loyalty.consistent(tenant_id, c) == (0, 0)
        assert await stored(loyalty, tenant_id, c) == (10, 10, 10)


class TestIdempotencyUnderConcurrency:
    async def test_the_same_key_sent_twenty_times_at_once_redeems_once(
        self, loyalty: Loyalty, tenant_id
    ):
        c = new_id("c")
        await credit(loyalty, tenant_id, c, 1_200)
        answers = await asyncio.gather(
            *(redeem(loyalty, tenant_id, c, "five-off", "same-key") for _ in range(20))
        )
        assert {s for s, _, _ in answers} == {201}
        bodies = [b for _, b, _ in answers]
        assert all(b == bodies[0] for b in bodies)
        assert [replayed for _, _, replayed in answers].count(False) == 1
        assert bodies[0]["balance"]["available"] == 700
        assert await loyalty.consistent(tenant_id, c) == (700, 0)
        assert await stored(loyalty, tenant_id, c) == (1, 1, 1)


class TestMixedBatch:
    def mixed(self, tenant: str, rich: str, poor: str, reused: str) -> list[RedeemRequest]:
        return [
            RedeemRequest(tenant, rich, "five-off", "ok-1"),
            RedeemRequest(tenant, rich, "no-such-reward", "bad-reward"),
            RedeemRequest(tenant, new_id("nobody"), "five-off", "no-account"),
            RedeemRequest(tenant, poor, "ten-percent", "too-dear"),
            RedeemRequest(tenant, reused, "ten-percent", "used-before"),  # was five-off
            RedeemRequest(tenant, rich, "five-off", "ok-1"),  # the first, again
            RedeemRequest(tenant, rich, "free-shipping", "ok-2"),
        ]

    async def prepare(self, loyalty: Loyalty, tenant: str) -> tuple[str, str, str]:
        rich, poor, reused = new_id("rich"), new_id("poor"), new_id("reused")
        await credit(loyalty, tenant, rich, 2_000)
        await credit(loyalty, tenant, poor, 300)
        await credit(loyalty, tenant, reused, 2_000)
        status, _, _ = await redeem(loyalty, tenant, reused, "five-off", "used-before")
        assert status == 201
        return rich, poor, reused

    def check(self, outcomes: list[Any]) -> None:
        first, bad_reward, no_account, too_dear, reused, again, second = outcomes
        assert first[1] is False and first[0]["points"] == 500
        assert first[0]["balance"] == {"available": 1_500, "pending": 0}
        assert (bad_reward.status_code, bad_reward.field) == (422, "reward_id")
        assert (no_account.status_code, no_account.field) == (404, "customer")
        assert isinstance(too_dear, InsufficientPointsError) and too_dear.status_code == 409
        assert (reused.status_code, reused.code) == (422, "idempotency_key_reused")
        assert again == (first[0], True)  # the replay of the first, in the same batch
        assert second[1] is False and second[0]["balance"]["available"] == 1_100

    async def test_one_batch_answers_each_request_and_commits_only_the_valid_ones(
        self, loyalty: Loyalty, tenant_id
    ):
        rich, poor, reused = await self.prepare(loyalty, tenant_id)
        runtime = loyalty.runtime
        async with runtime.sessionmaker.begin() as session:
            outcomes = await redeem_batch(
                session,
                runtime.outbox,
                self.mixed(tenant_id, rich, poor, reused),
                loyalty.clock.now(),
            )
        self.check(outcomes)
        assert await loyalty.consistent(tenant_id, rich) == (1_100, 0)
        assert await loyalty.consistent(tenant_id, poor) == (300, 0)
        assert await loyalty.consistent(tenant_id, reused) == (1_500, 0)
        assert await stored(loyalty, tenant_id, rich) == (2, 2, 2)
        assert await stored(loyalty, tenant_id, poor) == (0, 0, 0)
        assert await stored(loyalty, tenant_id, reused) == (1, 1, 1)
        # Stored as answered: the replay through the API is the batch's answer.
        status, body, replayed = await redeem(loyalty, tenant_id, rich, "five-off", "ok-1")
        assert (status, body, replayed) == (201, outcomes[0][0], True)

    async def test_sent_at_once_through_the_api_each_gets_its_own_answer(
        self, loyalty: Loyalty, tenant_id
    ):
        rich, poor, reused = await self.prepare(loyalty, tenant_id)
        requests = self.mixed(tenant_id, rich, poor, reused)
        answers = await asyncio.gather(
            *(
                redeem(loyalty, tenant_id, r.customer, r.reward_id, r.idempotency_key)
                for r in requests
            )
        )
        statuses = [s for s, _, _ in answers]
        assert statuses == [201, 422, 404, 409, 422, 201, 201]
        assert answers[1][1]["error"]["field"] == "reward_id"
        assert answers[4][1]["error"]["code"] == "idempotency_key_reused"
        assert answers[0][1] == answers[5][1]  # one redemption, its answer twice
        assert [answers[0][2], answers[5][2]].count(True) == 1
        assert await loyalty.consistent(tenant_id, rich) == (1_100, 0)
        assert await stored(loyalty, tenant_id, rich) == (2, 2, 2)
        assert await stored(loyalty, tenant_id, poor) == (0, 0, 0)


class TestOverload:
    async def test_past_the_bound_a_redemption_is_503_with_retry_after_and_deducts_nothing(
        self, loyalty: Loyalty, tenant_id
    ):
        c = new_id("c")
        await credit(loyalty, tenant_id, c, 1_000)
        group = deps_of(loyalty.runtime).redemptions.group
        bound = group.max_waiting
        group.max_waiting = 0  # the bound reached: every request is turned away
        try:
            status, body, _ = await redeem(loyalty, tenant_id, c, "five-off", "k")
        finally:
            group.max_waiting = bound
        assert status == 503 and body["error"]["code"] == "overloaded"
        assert await loyalty.consistent(tenant_id, c) == (1_000, 0)
        assert await stored(loyalty, tenant_id, c) == (0, 0, 0)


class TestOneTransactionPerRequest:
    async def test_with_the_group_commit_off_the_answers_are_the_same(self, stack, tenant_id):
        # The api role: no consumers. A second app in the module app's consumer group
        # left a member behind, and the next module's app waited out its join.
        async with running_loyalty(
            stack, loyalty_redeem_group_commit=False, service_role="api"
        ) as loyalty:
            assert not deps_of(loyalty.runtime).redemptions.grouped
            c = new_id("c")
            await credit(loyalty, tenant_id, c, 1_000)
            first = await redeem(loyalty, tenant_id, c, "five-off", "k1")
            again = await redeem(loyalty, tenant_id, c, "five-off", "k1")
            other = await redeem(loyalty, tenant_id, c, "free-shipping", "k1")
            dear = await redeem(loyalty, tenant_id, c, "ten-percent", "k2")
            assert (first[0], first[2]) == (201, False)
            assert again == (201, first[1], True)
            assert other[1]["error"]["code"] == "idempotency_key_reused"
            assert (dear[0], dear[1]["error"]["code"]) == (409, "insufficient_points")
            assert await loyalty.consistent(tenant_id, c) == (500, 0)


async def writer_backends(loyalty: Loyalty) -> list[int]:
    """The server processes of the writers' pool (kit.db.writer_engine). Read in a
    transaction of its own: pg_stat_activity is a snapshot per transaction."""
    async with loyalty.runtime.engine.connect() as conn:
        return list(
            await conn.scalars(
                text(
                    "SELECT pid FROM pg_stat_activity WHERE application_name ="
                    " 'loyalty-writers' AND datname = current_database()"
                )
            )
        )


class TestWritersReconnect:
    async def test_a_writer_connection_lost_while_idle_costs_no_request(
        self, loyalty: Loyalty, tenant_id
    ):
        """The writers' pool has no ping on checkout (kit.db.writer_engine): a
        connection the database dropped while it idled (a restart) fails its batch,
        which is applied once more on a new connection; the client sees nothing."""
        customer = new_id("c")
        await credit(loyalty, tenant_id, customer, 1_000)
        assert (await redeem(loyalty, tenant_id, customer, "five-off", "k-before"))[0] == 201
        pids = await writer_backends(loyalty)
        assert pids  # the key lookups' and the batches' connections, back in their pool
        async with loyalty.runtime.engine.begin() as conn:
            await conn.execute(
                text("SELECT pg_terminate_backend(pid) FROM unnest(CAST(:p AS int[])) pid"),
                {"p": pids},
            )
        for _ in range(100):  # gone within a second or so; bounded, not a sleep
            if not set(pids) & set(await writer_backends(loyalty)):
                break
            await asyncio.sleep(0.05)
        else:
            raise AssertionError(f"backends {pids} still there")

        status, body, replayed = await redeem(loyalty, tenant_id, customer, "five-off", "k-after")

        assert (status, replayed) == (201, False), body
        assert body["balance"]["available"] == 0
        assert await stored(loyalty, tenant_id, customer) == (2, 2, 2)


async def batch_statements(
    loyalty: Loyalty, requests: list[RedeemRequest]
) -> tuple[list[Any], list[str]]:
    """Apply ``requests`` in one transaction: their outcomes, and the SQL statements it
    sent (BEGIN and COMMIT are not statements here: the driver sends them itself)."""
    runtime = loyalty.runtime
    sent: list[str] = []

    def record(conn: Any, cursor: Any, statement: str, *args: Any) -> None:
        sent.append(statement)

    async with runtime.sessionmaker.begin() as session:
        # This transaction's connection only (the relay shares the engine).
        conn = (await session.connection()).sync_connection
        event.listen(conn, "before_cursor_execute", record)
        try:
            outcomes = await redeem_batch(session, runtime.outbox, requests, loyalty.clock.now())
        finally:
            event.remove(conn, "before_cursor_execute", record)
    return outcomes, sent


class TestRoundTrips:
    """A batch is three statements whatever its size (redemptions_store): the lock,
    the reads it guards, the writes. A statement per table was eleven round trips in
    sequence per batch, which capped the redemptions below 1,000 a second."""

    async def apply(self, loyalty: Loyalty, requests: list[RedeemRequest]) -> list[str]:
        outcomes, sent = await batch_statements(loyalty, requests)
        assert all(isinstance(o, tuple) and o[1] is False for o in outcomes), outcomes
        return sent

    async def test_three_statements_for_a_batch_of_two_or_of_forty(
        self, loyalty: Loyalty, tenant_id
    ):
        customers = [new_id("c") for _ in range(20)]
        for c in customers:
            await credit(loyalty, tenant_id, c, 5_000)
        small = await self.apply(loyalty, [RedeemRequest(tenant_id, customers[0], "five-off", "a")])
        large = await self.apply(
            loyalty,
            [
                RedeemRequest(tenant_id, c, reward, f"b-{reward}")
                for c in customers
                for reward in ("five-off", "free-shipping")
            ],
        )
        assert len(small) == len(large) == 3, large
        assert large[0].lstrip().startswith("WITH locked AS")
        assert large[2].lstrip().startswith("WITH lots AS")
        # What the one write statement wrote: every row of the batch, once.
        for c in customers[1:]:  # five-off at 500, free-shipping at 400
            assert await loyalty.consistent(tenant_id, c) == (5_000 - 500 - 400, 0)
            assert await stored(loyalty, tenant_id, c) == (2, 2, 2)
        assert await loyalty.consistent(tenant_id, customers[0]) == (5_000 - 1_400, 0)
        assert await stored(loyalty, tenant_id, customers[0]) == (3, 3, 3)

    async def test_a_batch_that_makes_nothing_writes_nothing(self, loyalty: Loyalty, tenant_id):
        c = new_id("c")
        await credit(loyalty, tenant_id, c, 300)
        outcomes, sent = await batch_statements(
            loyalty, [RedeemRequest(tenant_id, c, "five-off", "k")]
        )
        assert isinstance(outcomes[0], InsufficientPointsError)
        assert len(sent) == 2  # the lock, the guarded reads; no write
        assert await stored(loyalty, tenant_id, c) == (0, 0, 0)


async def spendable_in_lots(loyalty: Loyalty, tenant: str, customer: str) -> int:
    """What the account's available lots still hold (the balance, when the lots were
    spent from what the last batch left, not from an older snapshot)."""
    async with loyalty.runtime.sessionmaker() as s:
        total = await s.scalar(
            select(func.coalesce(func.sum(LotRow.remaining), 0)).where(
                LotRow.tenant_id == tenant,
                LotRow.customer_id == customer,
                LotRow.state == "available",
            )
        )
    return int(total or 0)


async def waits_on_a_lock(loyalty: Loyalty, pid: int) -> bool:
    async with loyalty.runtime.engine.connect() as conn:
        waiting = await conn.scalar(
            text("SELECT wait_event_type = 'Lock' FROM pg_stat_activity WHERE pid = :pid"),
            {"pid": pid},
        )
    return bool(waiting)


class TestTwoBatchesInFlight:
    """The group commit's writers (loyalty_redeem_writers, 2 by default) apply two
    batches at once: the second gathers and starts while the first commits. On the
    accounts they share, the second waits for the first's commit and then sees all it
    did: its balances, its lots, its Idempotency-Keys."""

    async def test_the_second_waits_for_the_first_and_spends_what_it_left(
        self, loyalty: Loyalty, tenant_id
    ):
        x, y = new_id("x"), new_id("y")
        await credit(loyalty, tenant_id, x, 1_500)
        await credit(loyalty, tenant_id, y, 500)
        runtime, now = loyalty.runtime, loyalty.clock.now()
        first = [
            RedeemRequest(tenant_id, x, "five-off", "a1"),
            RedeemRequest(tenant_id, y, "five-off", "a2"),
            RedeemRequest(tenant_id, x, "five-off", "shared"),
        ]
        # The same accounts in the other order of arrival, the same key once.
        second = [
            RedeemRequest(tenant_id, y, "five-off", "b1"),
            RedeemRequest(tenant_id, x, "five-off", "shared"),
            RedeemRequest(tenant_id, x, "five-off", "b2"),
        ]
        pid: asyncio.Future[int] = asyncio.get_running_loop().create_future()

        async def apply_second() -> list[Any]:
            async with runtime.sessionmaker.begin() as session:
                pid.set_result(int(await session.scalar(text("SELECT pg_backend_pid()")) or 0))
                return await redeem_batch(session, runtime.outbox, second, now)

        async with runtime.sessionmaker.begin() as session:
            answers_first = await redeem_batch(session, runtime.outbox, first, now)
            later = asyncio.create_task(apply_second())
            second_pid = await pid
            for _ in range(200):  # bounded: until it waits on the first's locks
                if await waits_on_a_lock(loyalty, second_pid):
                    break
                await asyncio.sleep(0.02)
            else:
                raise AssertionError("the second batch never waited on the first's locks")
        answers_second = await later

        assert [a[0]["balance"]["available"] for a in answers_first] == [1_000, 0, 500]
        no_points, replay, last = answers_second
        assert isinstance(no_points, InsufficientPointsError)
        assert replay == (answers_first[2][0], True)
        assert last[1] is False and last[0]["balance"]["available"] == 0
        for c, redemptions in ((x, 3), (y, 1)):
            assert await loyalty.consistent(tenant_id, c) == (0, 0)
            assert await spendable_in_lots(loyalty, tenant_id, c) == 0
            assert await stored(loyalty, tenant_id, c) == (redemptions,) * 3

    async def test_batches_crossing_the_same_accounts_in_any_order_never_deadlock(
        self, loyalty: Loyalty, tenant_id
    ):
        customers = [new_id("c") for _ in range(6)]
        for c in customers:
            await credit(loyalty, tenant_id, c, 2_000)  # four five-offs each
        runtime, now = loyalty.runtime, loyalty.clock.now()

        async def batch(n: int) -> list[Any]:
            # Each batch in its own order of arrival, over every account.
            order = customers[n % 6 :] + customers[: n % 6]
            order = order if n % 2 else order[::-1]
            requests = [RedeemRequest(tenant_id, c, "five-off", f"k{n}-{c}") for c in order]
            async with runtime.sessionmaker.begin() as session:
                return await redeem_batch(session, runtime.outbox, requests, now)

        # Six batches of six at once: 36 asked, 24 covered. A deadlock would fail one
        # of them (PostgreSQL aborts one of the cycle).
        outcomes = [o for answers in await asyncio.gather(*map(batch, range(6))) for o in answers]
        assert sum(isinstance(o, tuple) for o in outcomes) == 24
        assert sum(isinstance(o, InsufficientPointsError) for o in outcomes) == 12
        for c in customers:
            assert await loyalty.consistent(tenant_id, c) == (0, 0)
            assert await spendable_in_lots(loyalty, tenant_id, c) == 0
            assert await stored(loyalty, tenant_id, c) == (4, 4, 4)
