"""Durations and the customer's clock: the ISO-8601 delays a definition writes, and the
rounding of a due time to a time of day in the customer's zone."""

from __future__ import annotations

import re
from datetime import UTC, datetime, time, timedelta
from typing import Annotated, Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BeforeValidator, PlainSerializer

_DURATION = re.compile(
    r"^P(?:(?P<w>\d+)W)?(?:(?P<d>\d+)D)?(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?$"
)


# A delay, window or timeout beyond ten years is a typo; unbounded, a few more digits
# overflowed timedelta (or the datetime a timer adds it to) with a 500.
MAX_DURATION = timedelta(days=3650)


def parse_duration(value: Any) -> timedelta:
    """ISO-8601 duration limited to weeks, days, hours, minutes and seconds: months and
    years have no fixed length, and a delay must mean the same thing in every month."""
    if isinstance(value, timedelta):
        return value
    if not isinstance(value, str):
        raise ValueError("a duration is an ISO-8601 string such as P3D or PT1S")
    m = _DURATION.match(value.strip().upper())
    if not m or value.strip().upper() in ("P", "PT"):
        raise ValueError(f"{value!r} is not an ISO-8601 duration (W, D, H, M, S units only)")
    g = {k: float(v) if v else 0.0 for k, v in m.groupdict().items()}
    try:
        td = timedelta(weeks=g["w"], days=g["d"], hours=g["h"], minutes=g["m"], seconds=g["s"])
    except OverflowError:
        td = MAX_DURATION * 2  # beyond what timedelta holds: refused just below
    if td > MAX_DURATION:
        raise ValueError(f"{value!r} is longer than {MAX_DURATION.days} days")
    return td


def format_duration(td: timedelta) -> str:
    total = td.total_seconds()
    days, rest = divmod(int(total), 86400)
    hours, rest = divmod(rest, 3600)
    minutes, seconds = divmod(rest, 60)
    frac = total - int(total)
    out = "P" + (f"{days}D" if days else "")
    t = (f"{hours}H" if hours else "") + (f"{minutes}M" if minutes else "")
    if seconds or frac:
        s = seconds + frac
        t += f"{s:g}S"
    if t:
        out += "T" + t
    return out if out != "P" else "PT0S"


Duration = Annotated[
    timedelta,
    BeforeValidator(parse_duration),
    PlainSerializer(format_duration, return_type=str),
]


def zone_of(name: str | None, strict: bool = False) -> ZoneInfo:
    """The zone named, or UTC for none or an unknown one (``strict``: an unknown one is
    a ValueError, for a definition being validated)."""
    try:
        return ZoneInfo(name or "UTC")
    except (ZoneInfoNotFoundError, ValueError) as exc:
        if strict:
            raise ValueError(f"unknown time zone {name!r}") from exc
        return ZoneInfo("UTC")


def at_local(due: datetime, at: time | None, tz: str | None) -> datetime:
    """Round ``due`` up to the next ``at`` o'clock in the customer's zone."""
    if at is None:
        return due
    zone = zone_of(tz)
    local = due.astimezone(zone)
    candidate = datetime.combine(local.date(), at, tzinfo=zone)
    if candidate < local:
        candidate = datetime.combine(local.date() + timedelta(days=1), at, tzinfo=zone)
    return candidate.astimezone(UTC)
