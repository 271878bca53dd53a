"""A tiny messaging endpoint for development: verifies the Standard Webhooks signature
of each message the dispatcher POSTs, prints it, and answers 204 (401 when the
signature is wrong). Stands in for a tenant's ESP or SMS provider under ``make dev``::

    python -m afterglow.journeys.messaging.receiver --port 9000 --secret whsec_...
"""

from __future__ import annotations

import argparse
import base64
import json
import secrets
import sys
import time
from collections.abc import Awaitable, Callable
from typing import Any

from afterglow.kit.standard_webhooks import verify_headers

Scope = dict[str, Any]
Receive = Callable[[], Awaitable[dict[str, Any]]]
Send = Callable[[dict[str, Any]], Awaitable[None]]


async def read_body(receive: Receive, limit: int = 1_000_000) -> bytes:
    body = b""
    while True:
        msg = await receive()
        body += msg.get("body", b"")
        if len(body) > limit:
            raise ValueError("body too large")
        if not msg.get("more_body"):
            return body


def headers_of(scope: Scope) -> dict[str, str]:
    return {k.decode().lower(): v.decode() for k, v in scope["headers"]}


async def respond(
    send: Send, status: int, headers: dict[str, str] | None = None, body: bytes = b""
) -> None:
    raw = [(k.encode(), v.encode()) for k, v in (headers or {}).items()]
    await send({"type": "http.response.start", "status": status, "headers": raw})
    await send({"type": "http.response.body", "body": body})


def build_app(
    secret: str, out: Any = sys.stdout
) -> Callable[[Scope, Receive, Send], Awaitable[None]]:
    async def app(scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            return
        body = await read_body(receive)
        headers = headers_of(scope)
        if not verify_headers(secret, headers, body, time.time()):
            print(f"REJECTED {headers.get('webhook-id')}: bad signature", file=out, flush=True)
            await respond(send, 401)
            return
        msg = json.loads(body)
        to = msg.get("to", {})
        print(
            f"[{msg.get('channel')}] {msg.get('kind')} to {to.get('email') or to.get('phone')}"
            f" (id {headers['webhook-id']}, attempt {msg.get('attempt')})",
            file=out,
        )
        if msg.get("subject"):
            print(f"  subject: {msg['subject']}", file=out)
        print("  " + (msg.get("text") or "").replace("\n", "\n  "), file=out, flush=True)
        await respond(send, 204)

    return app


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9000)
    parser.add_argument("--secret", help="whsec_... (one is generated and printed when omitted)")
    args = parser.parse_args(argv)
    secret = args.secret or "whsec_" + base64.b64encode(secrets.token_bytes(32)).decode()
    print(f"receiving on http://{args.host}:{args.port}/ with secret {secret}", flush=True)
    import uvicorn

    uvicorn.run(build_app(secret), host=args.host, port=args.port, log_level="warning")


if __name__ == "__main__":
    main()
