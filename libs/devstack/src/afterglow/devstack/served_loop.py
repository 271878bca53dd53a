"""Run a coroutine on the event loop a served service runs on (the benchmarks do).

``afterglow serve`` runs a service under uvicorn, whose default loop (``auto``) is
uvloop wherever it is installed, and every service depends on ``uvicorn[standard]``,
which installs it. A benchmark that runs an instance in its own process (the app's
lifespan: consumers, relay, timer loop) under ``asyncio.run`` measures it on asyncio's
own loop, as it is never deployed. :func:`run` lets uvicorn's own factory choose, so a
benchmark follows whatever uvicorn would serve on; its floors, load generators and peers
use it too, so that a ratio compares two things on the same loop.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any, TypeVar

from uvicorn.loops.auto import auto_loop_factory

T = TypeVar("T")


def run(main: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run(main)`` on the loop uvicorn would serve the service on."""
    with asyncio.Runner(loop_factory=auto_loop_factory()) as runner:
        return runner.run(main)
