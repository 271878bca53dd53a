"""SMS through Twilio's Messages API: ``POST /2010-04-01/Accounts/{sid}/Messages.json``,
form-encoded ``To``, ``From`` (or ``MessagingServiceSid``), ``Body``, HTTP basic auth
with the account SID and the auth token (the route's sealed secret).

Settings (``config``): ``account_sid``, ``from_number`` (E.164) or
``messaging_service_sid``, ``api_base`` (default ``https://api.twilio.com``; any server
speaking the same API, e.g. a regional edge).

Answers: 2xx sent (the log records the message SID, segments and encoding); 429 and 5xx
retry (honouring Retry-After); other 4xx fail with Twilio's error code and message as
the reason. Error 21610 (the recipient replied STOP) also marks the number suppressed.
"""

from __future__ import annotations

import asyncio
from typing import Any

import httpx

from afterglow.journeys.messaging import policy
from afterglow.journeys.messaging.channels.base import Job, Outcome, Senders
from afterglow.journeys.messaging.channels.sms_text import e164, segments
from afterglow.kit.outbound import ForbiddenDestination, check_destination

DEFAULT_API = "https://api.twilio.com"
UNSUBSCRIBED_RECIPIENT = 21610


def messages_url(config: Any) -> str:
    base = str(config.get("api_base") or DEFAULT_API).rstrip("/")
    return f"{base}/2010-04-01/Accounts/{config['account_sid']}/Messages.json"


class TwilioChannel:
    def __init__(self, senders: Senders) -> None:
        self.s = senders

    async def send(self, job: Job) -> Outcome:
        cfg = job.route.config
        to = e164(job.to)
        if to is None:
            return Outcome(False, False, f"not a valid E.164 phone number: {job.to!r}")
        body = str(job.payload.get("text") or "")
        count, enc = segments(body)
        form = {"To": to, "Body": body}
        if cfg.get("messaging_service_sid"):
            form["MessagingServiceSid"] = str(cfg["messaging_service_sid"])
        else:
            form["From"] = str(cfg["from_number"])
        url = messages_url(cfg)
        try:
            await check_destination(url, allow_private=self.s.allow_private)
        except ForbiddenDestination as exc:
            return Outcome(False, False, f"sms api not allowed: {exc}")
        timeout = self.s.timeout_s
        try:
            async with asyncio.timeout(timeout):
                response = await self.s.http.post(
                    url,
                    data=form,
                    auth=(str(cfg["account_sid"]), job.route.secret or ""),
                    timeout=httpx.Timeout(timeout),
                    follow_redirects=False,
                )
        except (TimeoutError, httpx.TimeoutException):
            return Outcome(False, True, f"timeout after {timeout:g}s")
        except httpx.HTTPError as exc:
            return Outcome(False, True, f"connection error: {type(exc).__name__}")
        size = f"{count} segment{'s' if count > 1 else ''}, {enc}"
        status = response.status_code
        try:
            answer = response.json()
        except ValueError:
            answer = {}
        if not isinstance(answer, dict):
            answer = {}
        if 200 <= status < 300:
            return Outcome(True, False, f"twilio {answer.get('sid', '?')} ({size})")
        reason = f"twilio HTTP {status}"
        if answer.get("code"):
            reason += f" error {answer['code']}: {answer.get('message', '')}"
        reason = f"{reason} ({size})"[:500]
        retry_after = policy.parse_retry_after(response.headers.get("retry-after"), self.s.now())
        return Outcome(
            False,
            policy.is_retryable_status(status),
            reason,
            retry_after,
            suppress="sms_stop" if answer.get("code") == UNSUBSCRIBED_RECIPIENT else None,
        )
