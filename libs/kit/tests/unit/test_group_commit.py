"""The group commit's own rules, with a recording ``apply`` standing in for a
transaction: what waits together is applied together, each request gets its own
outcome, one bad item does not fail the others, waiting is bounded."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from sqlalchemy import exc as sa_exc

from afterglow.kit.errors import Conflict
from afterglow.kit.group_commit import GroupCommit, Overloaded


class Recorder:
    """``apply`` that doubles numbers, refuses negatives with a business error, and
    fails the whole call (a transaction error) for any batch holding ``poison``."""

    def __init__(self, poison: int | None = None, transient: bool = False) -> None:
        self.batches: list[list[int]] = []
        self.poison = poison
        self.transient = transient

    async def __call__(self, items: Sequence[int]) -> list[int | BaseException]:
        self.batches.append(list(items))
        if self.transient:
            raise sa_exc.OperationalError("SELECT 1", {}, ConnectionRefusedError())
        if self.poison is not None and self.poison in items:
            raise sa_exc.IntegrityError("INSERT", {}, Exception("duplicate key"))
        return [Conflict(f"{i} is negative") if i < 0 else i * 2 for i in items]


async def queued(gc: GroupCommit[int, int], items: list[int]) -> list[asyncio.Task[int]]:
    tasks = [asyncio.ensure_future(gc.submit(i)) for i in items]
    await asyncio.sleep(0)  # every one is waiting; no writer runs yet
    return tasks


def group(apply: Recorder, **kw: int) -> GroupCommit[int, int]:
    settings = {"max_waiting": 100, "max_batch": 100, "retry_after_s": 2, **kw}
    return GroupCommit(apply, name="test", **settings)


class TestGroupCommit:
    async def test_what_waits_together_is_applied_in_one_call_in_arrival_order(self):
        apply = Recorder()
        gc = group(apply)
        tasks = await queued(gc, [3, 1, 2])
        [writer] = gc.start(1)
        try:
            assert await asyncio.gather(*tasks) == [6, 2, 4]
        finally:
            writer.cancel()
        assert apply.batches == [[3, 1, 2]]

    async def test_a_business_error_is_raised_in_its_own_request_only(self):
        gc = group(Recorder())
        tasks = await queued(gc, [1, -5, 2])
        [writer] = gc.start(1)
        try:
            done = await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            writer.cancel()
        assert done[0] == 2 and done[2] == 4
        assert isinstance(done[1], Conflict) and done[1].message == "-5 is negative"

    async def test_a_failed_batch_is_applied_again_one_at_a_time(self):
        apply = Recorder(poison=7)
        gc = group(apply)
        tasks = await queued(gc, [1, 7, 2])
        [writer] = gc.start(1)
        try:
            done = await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            writer.cancel()
        assert apply.batches == [[1, 7, 2], [1], [7], [2]]
        assert done[0] == 2 and done[2] == 4
        # Not the database's fault: the item's own error, as it is (a 500).
        assert isinstance(done[1], sa_exc.IntegrityError)

    async def test_a_transient_failure_is_503_with_retry_after_for_each_request(self):
        apply = Recorder(transient=True)
        gc = group(apply)
        tasks = await queued(gc, [1, 2])
        [writer] = gc.start(1)
        try:
            done = await asyncio.gather(*tasks, return_exceptions=True)
        finally:
            writer.cancel()
        assert apply.batches == [[1, 2]]  # not split: no item is at fault
        for d in done:
            assert isinstance(d, Overloaded)
            assert (d.status_code, d.headers) == (503, {"Retry-After": "2"})

    async def test_past_the_bound_a_request_is_refused_at_once(self):
        apply = Recorder()
        gc = group(apply, max_waiting=2)
        tasks = await queued(gc, [1, 2])
        with pytest.raises(Overloaded) as refused:
            await gc.submit(3)
        assert refused.value.headers == {"Retry-After": "2"}
        [writer] = gc.start(1)
        try:
            assert await asyncio.gather(*tasks) == [2, 4]
            assert await gc.submit(3) == 6  # released: room again
        finally:
            writer.cancel()
        assert apply.batches == [[1, 2], [3]]

    async def test_batches_are_at_most_max_batch(self):
        apply = Recorder()
        gc = group(apply, max_batch=2)
        tasks = await queued(gc, [1, 2, 3, 4, 5])
        [writer] = gc.start(1)
        try:
            await asyncio.gather(*tasks)
        finally:
            writer.cancel()
        assert apply.batches == [[1, 2], [3, 4], [5]]

    async def test_stopping_refuses_the_batch_in_flight_and_what_still_waits(self):
        blocked = asyncio.Event()

        async def stuck(items: Sequence[int]) -> list[int | BaseException]:
            blocked.set()
            await asyncio.Event().wait()  # a commit that never returns
            raise AssertionError("unreachable")

        gc: GroupCommit[int, int] = GroupCommit(
            stuck, name="test", max_waiting=10, max_batch=10, retry_after_s=1
        )
        [writer] = gc.start(1)
        first = asyncio.ensure_future(gc.submit(1))
        await blocked.wait()
        second = asyncio.ensure_future(gc.submit(2))
        await asyncio.sleep(0)
        writer.cancel()
        await asyncio.gather(writer, return_exceptions=True)
        for request in (first, second):
            with pytest.raises(Overloaded):
                await request
        assert gc.waiting == 0
