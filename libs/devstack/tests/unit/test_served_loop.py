"""The benchmarks run on the loop a served service runs on (uvicorn's choice)."""

from __future__ import annotations

import asyncio

from uvicorn.loops.auto import auto_loop_factory

from afterglow.devstack import served_loop


def test_a_coroutine_runs_to_its_result_on_the_loop_uvicorn_serves_on() -> None:
    async def which_loop() -> tuple[type[asyncio.AbstractEventLoop], int]:
        await asyncio.sleep(0)
        return type(asyncio.get_running_loop()), 42

    loop_type, result = served_loop.run(which_loop())

    served = auto_loop_factory()()
    try:
        assert loop_type is type(served)
    finally:
        served.close()
    assert result == 42
    # uvicorn[standard] is every service's dependency, so that loop is uvloop's here,
    # not asyncio's own.
    assert loop_type.__module__.startswith("uvloop")
