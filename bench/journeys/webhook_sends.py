"""CPU per signed webhook send: the dispatcher's webhook channel against a local server.

Each welcome message is one POST from the dispatcher to the tenant's endpoint, so the
HTTP client's cost per request is a cost per order. Measured in one process (client
and a minimal keep-alive HTTP/1.1 server on 127.0.0.1, the server's share the same for
every line), in bursts of ``--in-flight`` sends at once as the dispatcher starts them
(up to its per-tenant slots, 32 by default), process CPU per send (getrusage):

1. floor: a bare asyncio client writing the same request bytes on kept-alive
   connections and reading the answer (no HTTP library);
2. the webhook channel as the dispatcher runs it (``WebhookChannel`` on its aiohttp
   session: signing, the destination check, the POST);
3. a bare POST of a body of the same size through an httpx.AsyncClient with the
   service's settings (what the channel sent with before), without the channel's
   signing and JSON encoding: the difference to 2 understates what httpx cost.

    uv run python bench/journeys/webhook_sends.py [--in-flight 32] [--bursts 100] [--rounds 3]
"""

from __future__ import annotations

import argparse
import asyncio
import resource
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime

import httpx

from afterglow.devstack import served_loop
from afterglow.journeys.messaging.channels.base import Job, Route, Senders
from afterglow.journeys.messaging.channels.webhook import WebhookChannel, webhook_session

ANSWER = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok"
SECRET = "whsec_" + "MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"  # a throwaway signing key


async def serve(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            writer.write(ANSWER)
    except (asyncio.IncompleteReadError, ConnectionError):
        writer.close()


def cpu_s() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def per_send_us(send: Callable[[int], Awaitable[None]], in_flight: int, bursts: int) -> float:
    await asyncio.gather(*(send(i) for i in range(in_flight)))  # connections opened
    before = cpu_s()
    for _ in range(bursts):
        await asyncio.gather(*(send(i) for i in range(in_flight)))
    return (cpu_s() - before) / (in_flight * bursts) * 1e6


def job(url: str, n: int) -> Job:
    return Job(
        message_id=f"msg_{n}",
        tenant_id="t_bench",
        attempt=1,
        channel="email",
        route=Route("webhook", {"url": url}, SECRET),
        payload={
            "type": "message.send",
            "id": f"msg_{n}",
            "kind": "welcome",
            "to": {"email": "someone@example.com"},
            "subject": "Welcome to the shop",
            "html": "<p>" + "Thank you for your order. " * 20 + "</p>",
            "text": "Thank you for your order. " * 20,
        },
    )


async def main(in_flight: int, bursts: int, rounds: int) -> None:
    server = await asyncio.start_server(serve, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    url = f"http://127.0.0.1:{port}/messages"
    body = b'{"x":"' + b"y" * 900 + b'"}'
    request = (
        f"POST /messages HTTP/1.1\r\nhost: 127.0.0.1:{port}\r\n"
        f"content-type: application/json\r\ncontent-length: {len(body)}\r\n\r\n"
    ).encode() + body
    streams = [await asyncio.open_connection("127.0.0.1", port) for _ in range(in_flight)]

    async def bare(n: int) -> None:
        reader, writer = streams[n]
        writer.write(request)
        await reader.readuntil(b"\r\n\r\n")
        await reader.readexactly(2)

    webhooks = webhook_session(in_flight)
    httpx_client = httpx.AsyncClient(timeout=httpx.Timeout(10.0, connect=3.0))

    def senders(http: httpx.AsyncClient) -> Senders:
        return Senders(
            http=http,
            webhooks=webhooks,
            allow_private=True,
            timeout_s=15.0,
            now=lambda: datetime.now(UTC),
        )

    channel = WebhookChannel(senders(httpx_client))

    async def through_channel(n: int) -> None:
        outcome = await channel.send(job(url, n))
        assert outcome.ok, outcome

    async def through_httpx(n: int) -> None:
        response = await httpx_client.post(
            url, content=body, headers={"content-type": "application/json"}
        )
        assert response.status_code == 200

    print(f"webhook sends, {in_flight} in flight, {bursts} bursts; process CPU per send (us)")
    try:
        for r in range(rounds):
            floor = await per_send_us(bare, in_flight, bursts)
            ours = await per_send_us(through_channel, in_flight, bursts)
            old = await per_send_us(through_httpx, in_flight, bursts)
            print(
                f"  round {r}: floor (bare asyncio) {floor:7.1f}   webhook channel (aiohttp)"
                f" {ours:7.1f} ({ours / floor:4.1f}x floor)   httpx POST {old:7.1f}"
                f" ({old / floor:4.1f}x floor)"
            )
    finally:
        await webhooks.close()
        await httpx_client.aclose()
        for _, writer in streams:
            writer.close()
        await asyncio.sleep(0.2)  # the server's handlers read the clients' EOF and end
        server.close()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--in-flight", type=int, default=32)
    parser.add_argument("--bursts", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    served_loop.run(main(args.in_flight, args.bursts, args.rounds))
