"""Feedback rules: survey scales and bands, signed links, the change window, NPS/CSAT
arithmetic and review moderation. Pure: no I/O; time comes from the caller's clock."""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Literal

SurveyKind = Literal["nps", "csat", "ces"]
ReviewStatus = Literal["pending", "published", "rejected"]


# --- scales and bands -----------------------------------------------------------------


@dataclass(frozen=True)
class Scale:
    low: int
    high: int
    question: str
    low_label: str
    high_label: str


SCALES: dict[str, Scale] = {
    "nps": Scale(
        0,
        10,
        "How likely are you to recommend {tenant} to a friend or colleague?",
        "Not at all likely",
        "Extremely likely",
    ),
    "csat": Scale(
        1,
        5,
        "How satisfied are you with your order from {tenant}?",
        "Very unsatisfied",
        "Very satisfied",
    ),
    "ces": Scale(
        1, 7, "How easy was it to get what you needed from {tenant}?", "Very difficult", "Very easy"
    ),
}


class InvalidScore(ValueError):
    pass


def check_score(kind: str, score: int) -> int:
    scale = SCALES[kind]
    if not scale.low <= score <= scale.high:
        raise InvalidScore(f"a {kind} score is between {scale.low} and {scale.high}")
    return score


def band(kind: str, score: int) -> str:
    """NPS: 9-10 promoter, 7-8 passive, 0-6 detractor (Bain's definition).
    CSAT (1-5): 4-5 satisfied, 3 neutral, 1-2 dissatisfied.
    CES (1-7, 7 = very easy): 5-7 satisfied, 4 neutral, 1-3 dissatisfied."""
    check_score(kind, score)
    if kind == "nps":
        return "promoter" if score >= 9 else "passive" if score >= 7 else "detractor"
    if kind == "csat":
        return "satisfied" if score >= 4 else "neutral" if score == 3 else "dissatisfied"
    return "satisfied" if score >= 5 else "neutral" if score == 4 else "dissatisfied"


# --- metrics arithmetic ---------------------------------------------------------------


def nps(promoters: int, passives: int, detractors: int) -> float | None:
    """Net Promoter Score in [-100, 100], one decimal. ``None`` for an empty window:
    "no answers" is not "neutral", and a 0 would be plotted as a real score."""
    total = promoters + passives + detractors
    if total == 0:
        return None
    return round(100.0 * (promoters - detractors) / total, 1)


def csat(satisfied: int, total: int) -> float | None:
    """CSAT as the percentage of satisfied answers (4-5 of 5); ``None`` when empty."""
    if total == 0:
        return None
    return round(100.0 * satisfied / total, 1)


def rate(part: int, whole: int) -> float | None:
    if whole == 0:
        return None
    return round(part / whole, 4)


# --- signed links ---------------------------------------------------------------------


class BadToken(ValueError):
    """Tampered, malformed or unknown: answered with 404 (reveals nothing)."""


class ExpiredToken(ValueError):
    """Authentic but past its expiry: answered with 410."""


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _unb64(text: str) -> bytes:
    return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))


def sign(secret: str, purpose: str, parts: list[str], expires_at: datetime) -> str:
    """``payload.signature``: payload names the purpose, the ids and the expiry; the
    signature is HMAC-SHA256 over it, so no field can be changed without the secret."""
    fields = [purpose, *parts, str(int(expires_at.timestamp()))]
    if any("|" in f for f in fields):
        raise ValueError("token fields may not contain '|'")
    payload = "|".join(fields).encode()
    mac = hmac.new(secret.encode(), payload, hashlib.sha256).digest()
    return f"{_b64(payload)}.{_b64(mac)}"


def verify(secret: str, purpose: str, token: str, now: datetime) -> tuple[list[str], datetime]:
    """The ids a token carries and its expiry. The signature is checked (constant time)
    before anything in the payload is trusted, and before expiry is looked at, so an
    expired answer is only ever given for a token we issued."""
    try:
        payload_b64, mac_b64 = token.split(".")
        payload, mac = _unb64(payload_b64), _unb64(mac_b64)
    except (ValueError, TypeError) as exc:
        raise BadToken("malformed token") from exc
    expected = hmac.new(secret.encode(), payload, hashlib.sha256).digest()
    if not hmac.compare_digest(expected, mac):
        raise BadToken("bad signature")
    fields = payload.decode(errors="replace").split("|")
    if len(fields) < 3 or fields[0] != purpose:
        raise BadToken("wrong purpose")
    try:
        expires_at = datetime.fromtimestamp(int(fields[-1]), UTC)
    except ValueError as exc:
        raise BadToken("bad expiry") from exc
    if now >= expires_at:
        raise ExpiredToken("link expired")
    return fields[1:-1], expires_at


# --- the change window ----------------------------------------------------------------


class AnswerLocked(Exception):
    """The first answer is older than the change window: the answer is final."""


def can_change(first_answered_at: datetime | None, now: datetime, window: timedelta) -> bool:
    """One answer per survey; it may be replaced for ``window`` after the FIRST answer
    (not the latest, else a customer could keep the survey open forever)."""
    return first_answered_at is None or now - first_answered_at <= window


# --- review moderation ----------------------------------------------------------------

# A deliberately small list; tenants with real needs plug a moderation service in front.
PROFANITY = frozenset(
    {"fuck", "fucking", "shit", "bitch", "cunt", "asshole", "bastard", "dickhead", "wanker"}
)
_LINK = re.compile(r"(https?://|www\.|\b[a-z0-9-]+\.(com|net|ru|xyz|info|biz)\b)", re.I)
_REPEAT = re.compile(r"(.)\1{5,}")
_WORD = re.compile(r"[a-z']+")
MIN_TEXT = 10


@dataclass(frozen=True)
class Moderation:
    status: ReviewStatus
    reasons: tuple[str, ...]


def spam_signals(title: str | None, body: str | None) -> list[str]:
    text = f"{title or ''} {body or ''}".strip()
    signals = []
    if _LINK.search(text):
        signals.append("link")
    if _REPEAT.search(text):
        signals.append("repeated_characters")
    letters = [c for c in text if c.isalpha()]
    if len(letters) >= 10 and sum(c.isupper() for c in letters) / len(letters) > 0.8:
        signals.append("all_caps")
    if text and len(text) < MIN_TEXT:
        signals.append("too_short")
    return signals


def has_profanity(title: str | None, body: str | None) -> bool:
    words = _WORD.findall(f"{title or ''} {body or ''}".lower())
    return any(w in PROFANITY for w in words)


def moderate(title: str | None, body: str | None, *, manual: bool) -> Moderation:
    """Profanity or two spam signals: rejected. One signal: pending (a person looks).
    Clean: published, or pending when the tenant moderates everything by hand.
    A rating-only review (no text) is clean. The rating never enters the decision:
    holding back low ratings would be review suppression (FTC 2024 rule)."""
    if has_profanity(title, body):
        return Moderation("rejected", ("profanity",))
    signals = spam_signals(title, body)
    if len(signals) >= 2:
        return Moderation("rejected", tuple(signals))
    if signals:
        return Moderation("pending", tuple(signals))
    if manual:
        return Moderation("pending", ("manual_moderation",))
    return Moderation("published", ())


def rating_summary(counts: dict[int, int]) -> tuple[float | None, dict[str, int], int]:
    """Average (two decimals, ``None`` when no reviews), distribution 1..5 and total."""
    dist = {str(star): int(counts.get(star, 0)) for star in range(1, 6)}
    total = sum(dist.values())
    if total == 0:
        return None, dist, 0
    avg = sum(int(k) * v for k, v in dist.items()) / total
    return round(avg, 2), dist, total
