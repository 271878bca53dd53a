"""Text as it may cross a boundary: one definition of what a clean string is.

PostgreSQL ``text`` cannot hold NUL, so a string with ``\\x00`` that reaches a consumer
fails its insert and dead-letters the event; other control characters corrupt logs,
headers and rendered messages. Every boundary (webhook normalisation, REST input)
uses these helpers so that "clean" means the same thing everywhere.
"""

from __future__ import annotations

import re
import unicodedata

# C0 and C1 controls and DEL. Tab, newline and carriage return are kept only in
# multi-line text (a review body, a comment).
_CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_CONTROL_MULTILINE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f]")


def has_control_chars(value: str, *, multiline: bool = False) -> bool:
    """True when ``value`` holds a character no clean string may hold."""
    pattern = _CONTROL_MULTILINE if multiline else _CONTROL
    return pattern.search(value) is not None


def clean_text(value: str, *, max_len: int | None = None, multiline: bool = False) -> str:
    """NFC-normalised, control characters removed, cut to ``max_len`` characters.

    Removing rather than refusing is right at a webhook boundary: the platform will
    not send a better name, and losing the order over one stray byte is worse."""
    pattern = _CONTROL_MULTILINE if multiline else _CONTROL
    # Controls out first, then NFC: "e\x00\u0301" must compose to "é", which it cannot
    # while the NUL still stands between the letter and its accent.
    out = unicodedata.normalize("NFC", pattern.sub("", value))
    if max_len is not None and len(out) > max_len:
        out = out[:max_len]
    return out
