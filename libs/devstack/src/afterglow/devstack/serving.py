"""A local HTTP server for a test's fake of a third party's API (Shopify, Zendesk, a
shop's coupon API): an ASGI app under uvicorn on a free port, in a thread of its own so
that the code under test, in the test's event loop, calls it over real HTTP."""

from __future__ import annotations

import contextlib
import threading
import time
from collections.abc import Iterator
from typing import Any

import uvicorn

from afterglow.devstack.processes import free_port


@contextlib.contextmanager
def serving(app: Any, start_timeout_s: float = 10) -> Iterator[str]:
    """Serve ``app`` until the block ends; yields its base URL (no trailing slash)."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + start_timeout_s
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=5)
