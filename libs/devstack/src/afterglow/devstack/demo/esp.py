"""The merchant's ESP stand-in: an in-process HTTP receiver that verifies the Standard
Webhooks signature of every message the dispatcher delivers (afterglow.kit's check, the
one ingest uses) and keeps what a customer would get."""

from __future__ import annotations

import base64
import contextlib
import json
import secrets
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from afterglow.kit import standard_webhooks


@dataclass
class Received:
    webhook_id: str
    at: float
    body: dict[str, Any]

    @property
    def customer(self) -> str:
        return str(self.body.get("customer_id"))

    @property
    def kind(self) -> str:
        return str(self.body.get("kind"))

    @property
    def text(self) -> str:
        return str(self.body.get("text") or "")


@dataclass
class Receiver:
    """An in-process HTTP receiver on 127.0.0.1 (uvicorn in a thread)."""

    secret: str = field(
        default_factory=lambda: "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    )
    on_message: Callable[[Received], None] | None = None
    messages: list[Received] = field(default_factory=list)
    rejected: int = 0
    url: str = ""
    _lock: threading.Lock = field(default_factory=threading.Lock)

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope["type"] != "http":
            return
        body = b""
        while True:
            msg = await receive()
            body += msg.get("body", b"")
            if not msg.get("more_body"):
                break
        headers = {k.decode().lower(): v.decode() for k, v in scope["headers"]}
        ok = standard_webhooks.verify_headers(self.secret, headers, body, time.time())
        if ok:
            item = Received(headers["webhook-id"], time.monotonic(), json.loads(body))
            with self._lock:
                self.messages.append(item)
            if self.on_message is not None:
                self.on_message(item)
        else:
            with self._lock:
                self.rejected += 1
        await send({"type": "http.response.start", "status": 204 if ok else 401, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    def of(self, customer: str, kind: str | None = None) -> list[Received]:
        with self._lock:
            return [
                m
                for m in self.messages
                if m.customer == customer and (kind is None or m.kind == kind)
            ]

    @contextlib.contextmanager
    def running(self) -> Iterator[Receiver]:
        import uvicorn

        from afterglow.devstack.processes import free_port

        port = free_port()
        server = uvicorn.Server(
            uvicorn.Config(self, host="127.0.0.1", port=port, log_level="warning", lifespan="off")
        )
        thread = threading.Thread(target=server.run, name="esp-receiver", daemon=True)
        thread.start()
        deadline = time.monotonic() + 10
        while not server.started and time.monotonic() < deadline:
            time.sleep(0.05)
        self.url = f"http://127.0.0.1:{port}/"
        try:
            yield self
        finally:
            server.should_exit = True
            thread.join(10)


# --- the scenario ---------------------------------------------------------------------------
