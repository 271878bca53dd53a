"""A token bucket for sending rate limits (providers cap a sender: SES starts at 14
emails a second, Twilio long codes at one SMS a second). Pure: the bucket lives in the
tenant's channel row and is taken in the claim transaction, so every replica draws on
the same budget."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime


@dataclass(frozen=True)
class Take:
    ok: bool
    tokens: float
    wait_s: float  # when not ok: until one token is there


def take(rate_per_s: float, tokens: float, tokens_at: datetime | None, now: datetime) -> Take:
    """One token from a bucket refilled at ``rate_per_s`` holding at most one second's
    worth (at least one token), so a burst never exceeds the provider's per-second cap."""
    burst = max(1.0, rate_per_s)
    if tokens_at is None:
        level = burst
    else:
        elapsed = max(0.0, (now - tokens_at).total_seconds())
        level = min(burst, tokens + elapsed * rate_per_s)
    if level >= 1.0:
        return Take(True, level - 1.0, 0.0)
    return Take(False, level, (1.0 - level) / rate_per_s)
