"""The rules applied before a message leaves, as pure functions (no I/O; time is passed
in from the injected clock). The dispatcher gathers the facts, asks :func:`decide`, and
records the answer with its reason.

Decisions, in order:

1. ``not_before`` in the future: defer to it.
2. No contact, or no address on the channel: wait for the customer's order event a
   while (the request may overtake it on another topic), then suppress (``no_address``).
   An erased customer is suppressed (``erased``).
3. A suppressed address (provider events: a hard bounce stops every message to it, a
   spam complaint or an SMS STOP stops marketing): suppress (``address_suppressed: <why>``).
   Consent, marketing only (transactional messages are exempt): an unsubscribe on the
   channel suppresses (``unsubscribed``); ``accepts_marketing = false`` suppresses
   (``no_marketing_consent``). SMS marketing needs an explicit ``accepts_marketing =
   true`` (TCPA-style express consent); email marketing is allowed unless the customer
   said no (soft opt-in of an existing customer, with an unsubscribe link in every message).
4. Quiet hours in the customer's time zone (tenant default when unknown) defer to the end
   of the quiet period; they never drop. They apply to every category: a thank-you at 3 am
   is as unwelcome as an offer.
5. Frequency cap, marketing only: at most ``cap`` marketing messages per customer per
   window. Over the cap a ``low`` priority message is dropped (``frequency_cap``); a
   ``normal`` or ``high`` one is deferred until the oldest counted message leaves the
   window (priority decides whether it may wait, never whether it may exceed the cap).
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import random
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, time, timedelta
from email.utils import parsedate_to_datetime
from typing import Literal
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

Action = Literal["send", "defer", "suppress"]
CHANNELS = ("email", "sms")
# A hard bounce means the address does not exist: nothing goes there, not even a
# receipt. A complaint or an SMS STOP refuses marketing only.
SUPPRESSES_TRANSACTIONAL = frozenset({"hard_bounce"})


@dataclass(frozen=True)
class Decision:
    action: Action
    reason: str | None = None
    until: datetime | None = None  # for defer
    channel: str | None = None  # for send


@dataclass(frozen=True)
class MessageFacts:
    category: str  # transactional | marketing
    priority: str  # high | normal | low
    channel: str | None
    not_before: datetime | None
    created_at: datetime


@dataclass(frozen=True)
class ContactFacts:
    email: str | None
    phone: str | None
    timezone: str | None
    accepts_marketing: bool | None
    email_unsubscribed: bool
    sms_unsubscribed: bool
    erased: bool
    # Channel -> why its address is suppressed (hard_bounce, complaint, sms_stop).
    suppressed: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class PolicySettings:
    quiet_start: time = time(21, 0)
    quiet_end: time = time(8, 0)
    cap: int = 3
    window: timedelta = timedelta(days=7)
    default_channel: str = "email"
    default_timezone: str = "UTC"
    contact_wait: timedelta = timedelta(minutes=10)
    contact_recheck: timedelta = timedelta(seconds=30)


def parse_hhmm(value: str) -> time:
    """``"21:00"`` -> time(21, 0); raises ValueError on anything else."""
    hours, _, minutes = value.partition(":")
    if (
        len(hours) != 2
        or len(minutes) != 2
        or not (hours + minutes).isascii()
        or not (hours + minutes).isdigit()
    ):
        raise ValueError(f"{value!r} is not HH:MM")
    return time(int(hours), int(minutes))


def zone(name: str | None, default: str = "UTC") -> ZoneInfo:
    for candidate in (name, default, "UTC"):
        if candidate:
            try:
                return ZoneInfo(candidate)
            except (ZoneInfoNotFoundError, ValueError):
                continue
    return ZoneInfo("UTC")


def in_quiet_hours(local: time, start: time, end: time) -> bool:
    """Whether a local wall time falls in [start, end), which may wrap midnight."""
    if start == end:
        return False  # an empty window: quiet hours off
    if start < end:
        return start <= local < end
    return local >= start or local < end


def quiet_hours_end(now: datetime, tz: ZoneInfo, start: time, end: time) -> datetime | None:
    """The next allowed instant if ``now`` is in quiet hours there, else None."""
    local = now.astimezone(tz)
    if not in_quiet_hours(local.time(), start, end):
        return None
    day = local.date()
    if local.time() >= end:  # the window wrapped past midnight: it ends tomorrow
        day += timedelta(days=1)
    # Built from the wall time, so a DST change inside the night lands on local 08:00.
    candidate = datetime.combine(day, end, tzinfo=tz)
    return candidate.astimezone(UTC)


def pick_channel(requested: str | None, default: str, contact: ContactFacts) -> str | None:
    def reachable(channel: str) -> bool:
        return bool(contact.email if channel == "email" else contact.phone)

    if requested is not None:
        return requested if reachable(requested) else None
    for channel in (default, *[c for c in CHANNELS if c != default]):
        if reachable(channel):
            return channel
    return None


def decide(
    now: datetime,
    message: MessageFacts,
    contact: ContactFacts | None,
    settings: PolicySettings,
    counted: list[datetime],
) -> Decision:
    """What to do with one due message now. ``counted``: when the customer's other
    marketing messages inside the cap window started counting."""
    if message.not_before is not None and message.not_before > now:
        return Decision("defer", "not_before", until=message.not_before)
    if contact is not None and contact.erased:
        return Decision("suppress", "erased")
    channel = (
        None
        if contact is None
        else pick_channel(message.channel, settings.default_channel, contact)
    )
    if channel is None:
        if now < message.created_at + settings.contact_wait:
            return Decision("defer", "waiting_for_contact", until=now + settings.contact_recheck)
        return Decision("suppress", "no_address")
    assert contact is not None
    suppression = contact.suppressed.get(channel)
    if suppression is not None and (
        message.category == "marketing" or suppression in SUPPRESSES_TRANSACTIONAL
    ):
        return Decision("suppress", f"address_suppressed: {suppression}")
    if message.category == "marketing":
        unsubscribed = (
            contact.email_unsubscribed if channel == "email" else contact.sms_unsubscribed
        )
        if unsubscribed:
            return Decision("suppress", "unsubscribed")
        if contact.accepts_marketing is False:
            return Decision("suppress", "no_marketing_consent")
        if channel == "sms" and contact.accepts_marketing is not True:
            return Decision("suppress", "no_sms_marketing_consent")
    tz = zone(contact.timezone, settings.default_timezone)
    quiet_until = quiet_hours_end(now, tz, settings.quiet_start, settings.quiet_end)
    if quiet_until is not None:
        return Decision("defer", "quiet_hours", until=quiet_until)
    if message.category == "marketing":
        inside = sorted(t for t in counted if t > now - settings.window)
        if len(inside) >= settings.cap:
            if message.priority == "low":
                return Decision("suppress", "frequency_cap")
            # The slot frees when enough of the oldest ones leave the window.
            frees_at = inside[len(inside) - settings.cap] + settings.window
            return Decision("defer", "frequency_cap", until=max(frees_at, now))
    return Decision("send", channel=channel)


# --- retries ---------------------------------------------------------------------------


def backoff_delay(
    attempt: int, base_s: float, max_s: float, rng: random.Random | None = None
) -> float:
    """Exponential backoff with equal jitter: half the step fixed, half random, so
    retries of many messages that failed together spread out instead of stampeding."""
    step = min(max_s, base_s * (2 ** max(0, attempt - 1)))
    r = (rng or random).random()
    return step / 2 + r * step / 2


def parse_retry_after(value: str | None, now: datetime) -> float | None:
    """Seconds to wait from a Retry-After header (delta-seconds or an HTTP date)."""
    if not value:
        return None
    value = value.strip()
    # ASCII digits only: str.isdigit() also takes "²", which float() refuses, and a
    # receiver's header must not be able to crash the dispatcher.
    if value.isascii() and value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    return max(0.0, (when - now).total_seconds())


RETRYABLE_STATUS = frozenset({408, 425, 429})


def is_retryable_status(status: int) -> bool:
    return status >= 500 or status in RETRYABLE_STATUS


# --- unsubscribe tokens ------------------------------------------------------------------


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64(data: str) -> bytes:
    return base64.urlsafe_b64decode(data + "=" * (-len(data) % 4))


def sign_unsubscribe(secret: str, tenant_id: str, customer_id: str, channel: str) -> str:
    """A token naming tenant, customer and channel, signed so nobody can forge one for
    another customer. It never expires: an unsubscribe link must work for years."""
    payload = _b64(json.dumps([tenant_id, customer_id, channel], separators=(",", ":")).encode())
    mac = hmac.new(secret.encode(), payload.encode(), hashlib.sha256).digest()[:16]
    return f"{payload}.{_b64(mac)}"


def verify_unsubscribe(secret: str, token: str) -> tuple[str, str, str] | None:
    payload, _, mac = token.partition(".")
    if not payload or not mac:
        return None
    expected = hmac.new(secret.encode(), payload.encode(), hashlib.sha256).digest()[:16]
    try:
        if not hmac.compare_digest(expected, _unb64(mac)):
            return None
        tenant_id, customer_id, channel = json.loads(_unb64(payload))
    except (ValueError, TypeError):
        return None
    if channel not in (*CHANNELS, "all"):
        return None
    return str(tenant_id), str(customer_id), str(channel)
