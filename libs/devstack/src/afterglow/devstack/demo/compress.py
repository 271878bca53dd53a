"""Days become seconds: the tenant's journey definition with every duration scaled, so
the whole story runs in about a minute through no special code path."""

from __future__ import annotations

import copy
import re
from typing import Any

SECONDS_PER_DAY = 2.0
_DURATION = re.compile(
    r"\bP(?:(?P<w>\d+)W)?(?:(?P<d>\d+)D)?"
    r"(?:T(?:(?P<h>\d+)H)?(?:(?P<m>\d+)M)?(?:(?P<s>\d+(?:\.\d+)?)S)?)?\b"
)


def _compress_duration(text: str, seconds_per_day: float) -> str:
    def one(m: re.Match[str]) -> str:
        g = {k: float(v) if v else 0.0 for k, v in m.groupdict().items()}
        if not any(g.values()):
            return m.group(0)
        days = g["w"] * 7 + g["d"] + g["h"] / 24 + g["m"] / 1440 + g["s"] / 86400
        return f"PT{max(days * seconds_per_day, 0.1):g}S"

    return _DURATION.sub(one, text)


def compress_journey(
    definition: dict[str, Any], seconds_per_day: float = SECONDS_PER_DAY
) -> dict[str, Any]:
    """The tenant's journey with every duration scaled from days to seconds (P3D ->
    PT6S at 2 s a day). Times of day (``at``) are dropped: a rounded due time would
    wait for tomorrow morning. Survey reminders are dropped too: the scenario answers
    within seconds and a compressed reminder would race the answer."""
    duration_keys = {
        "wait", "delay", "stop_after", "timeout", "within",
        "surveyed_within", "not_surveyed_within",
    }  # fmt: skip

    def walk(node: Any, key: str | None = None) -> Any:
        if isinstance(node, dict):
            return {k: walk(v, k) for k, v in node.items() if k not in ("at", "reminder_after")}
        if isinstance(node, list):
            return [walk(v) for v in node]
        if isinstance(node, str) and key in duration_keys:
            return _compress_duration(node, seconds_per_day)
        return node

    out: dict[str, Any] = walk(copy.deepcopy(definition))
    out["description"] = f"{out.get('name')}, compressed: a day lasts {seconds_per_day:g} s"
    return out


# --- the merchant's ESP stand-in ----------------------------------------------------------
