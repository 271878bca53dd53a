"""The tenant's own endpoint, signed per Standard Webhooks: the first channel, and the
default when a tenant configured none for a channel kind.

Sent with aiohttp, not the service's httpx client: every welcome is one of these
POSTs, and httpx cost ~1 ms of CPU per POST at a few in flight and ~2 ms at the 32
the dispatcher lets one tenant have (httpcore's pool scans every pooled connection,
a readability syscall each, for every request queued, at the start and end of every
request), against ~0.15 ms for aiohttp, server side included (a local server, same
process, bursts of 4 and of 32). The send was ~22% of the journeys process at 200
orders/s. A session with no cookie jar, no DNS cache (the destination is checked
just before, and must be what the connection reaches) and no redirects.
"""

from __future__ import annotations

import asyncio
import json
import time

import aiohttp
import httpx

from afterglow.journeys.messaging import policy
from afterglow.journeys.messaging.channels.base import Job, Outcome, Senders
from afterglow.kit import standard_webhooks
from afterglow.kit.outbound import ForbiddenDestination, check_destination
from afterglow.kit.tracing import http_client_span


def webhook_session(connections: int) -> aiohttp.ClientSession:
    """The webhook sends' client: up to ``connections`` kept open (the dispatcher's
    sends in flight), no cookies, no DNS cache, the deadline set per send, and the
    certificates trusted as httpx trusts them (its context: certifi's bundle, or
    SSL_CERT_FILE / SSL_CERT_DIR), as they were when httpx sent these."""
    return aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(
            limit=connections, use_dns_cache=False, ssl=httpx.create_ssl_context()
        ),
        cookie_jar=aiohttp.DummyCookieJar(),
        timeout=aiohttp.ClientTimeout(total=None),
        trust_env=False,
    )


def webhook_body(job: Job) -> bytes:
    return json.dumps(dict(job.payload), separators=(",", ":"), default=str).encode()


class WebhookChannel:
    def __init__(self, senders: Senders) -> None:
        self.s = senders

    async def send(self, job: Job) -> Outcome:
        url = str(job.route.config["url"])
        secret = job.route.secret or ""
        body = webhook_body(job)
        # Wall time: the receiver checks it against its own clock.
        ts = int(time.time())
        headers = {
            "content-type": "application/json",
            "user-agent": "Afterglow-Messaging/1.0",
            **standard_webhooks.signed_headers(secret, job.message_id, ts, body),
        }
        timeout = self.s.timeout_s
        try:
            # Again at send time: the name may resolve elsewhere than when it was saved.
            await check_destination(url, allow_private=self.s.allow_private)
        except ForbiddenDestination as exc:
            return Outcome(False, False, f"endpoint not allowed: {exc}")
        try:
            # A total deadline: a receiver trickling bytes could otherwise hold the
            # slot forever.
            with http_client_span("POST", url) as call:
                async with (
                    asyncio.timeout(timeout),
                    self.s.webhooks.post(
                        url, data=body, headers={**headers, **call.headers}, allow_redirects=False
                    ) as response,
                ):
                    call.status = status = response.status
                    retry_after_header = response.headers.get("retry-after")
                    # Read to the end, so the connection goes back to the pool.
                    await response.read()
        except TimeoutError:
            return Outcome(False, True, f"timeout after {timeout:g}s")
        except aiohttp.ClientError as exc:
            return Outcome(False, True, f"connection error: {type(exc).__name__}")
        if 200 <= status < 300:
            return Outcome(True, False, f"HTTP {status}")
        retry_after = policy.parse_retry_after(retry_after_header, self.s.now())
        return Outcome(False, policy.is_retryable_status(status), f"HTTP {status}", retry_after)
