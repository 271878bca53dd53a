"""The tenant's own endpoint, signed per Standard Webhooks: the first channel, and the
default when a tenant configured none for a channel kind."""

from __future__ import annotations

import asyncio
import json
import time

import httpx

from afterglow.journeys.messaging import policy
from afterglow.journeys.messaging.channels.base import Job, Outcome, Senders
from afterglow.kit import standard_webhooks
from afterglow.kit.outbound import ForbiddenDestination, check_destination


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
            # A total deadline: httpx's timeouts are per read, and a receiver trickling
            # bytes could otherwise hold the slot forever.
            async with asyncio.timeout(timeout):
                response = await self.s.http.post(
                    url,
                    content=body,
                    headers=headers,
                    timeout=httpx.Timeout(timeout),
                    follow_redirects=False,
                )
        except (TimeoutError, httpx.TimeoutException):
            return Outcome(False, True, f"timeout after {timeout:g}s")
        except httpx.HTTPError as exc:
            return Outcome(False, True, f"connection error: {type(exc).__name__}")
        status = response.status_code
        if 200 <= status < 300:
            return Outcome(True, False, f"HTTP {status}")
        retry_after = policy.parse_retry_after(response.headers.get("retry-after"), self.s.now())
        return Outcome(False, policy.is_retryable_status(status), f"HTTP {status}", retry_after)
