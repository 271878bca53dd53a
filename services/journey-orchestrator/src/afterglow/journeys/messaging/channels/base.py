"""The channel interface and what flows through it."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

import aiohttp
import httpx

from afterglow.journeys.messaging.channels.smtp_pool import SmtpPool


@dataclass(frozen=True)
class Route:
    """Where one tenant's messages of one channel kind go, as read (and opened) in the
    claim transaction of this very send: a rotated credential applies to the next send."""

    provider: str  # webhook | smtp | twilio
    config: Mapping[str, Any]
    secret: str | None = None  # whsec_..., SMTP password or Twilio auth token
    dkim_key: str | None = None  # PEM, email over SMTP only


@dataclass(frozen=True)
class Job:
    """One attempt at one message: the rendered payload and the route it takes."""

    message_id: str
    tenant_id: str
    attempt: int
    channel: str  # email | sms
    route: Route
    # The message as the webhook carries it: to, subject, html, text, headers, shop_name...
    payload: Mapping[str, Any]
    # The trace of the request that asked for the message (its ce_traceparent): the
    # send is a span of that trace.
    traceparent: str | None = None

    @property
    def to(self) -> str:
        to = self.payload.get("to") or {}
        return str(to.get("email") or to.get("phone") or "")


@dataclass(frozen=True)
class Outcome:
    """What a send came to. ``retryable`` failures come back with backoff (or after
    ``retry_after_s`` when the provider says so); the others fail the message at once
    with ``reason`` recorded. ``suppress`` names why the address must not be tried again
    (``hard_bounce``: the server said the mailbox does not exist)."""

    ok: bool
    retryable: bool
    reason: str
    retry_after_s: float | None = None
    suppress: str | None = None


@dataclass(frozen=True)
class Senders:
    """What channels may use, handed over by the dispatcher: the shared HTTP client,
    the webhook sends' own client, the outbound rule, the total deadline of one send."""

    http: httpx.AsyncClient
    # The signed webhooks' client, owned by the dispatcher (see WebhookChannel).
    webhooks: aiohttp.ClientSession
    allow_private: bool
    timeout_s: float
    now: Callable[[], datetime]  # the injected clock (Retry-After dates)
    smtp_pool: SmtpPool | None = None  # idle SMTP connections, owned by the dispatcher


class Channel(Protocol):
    async def send(self, job: Job) -> Outcome: ...
