"""SMS text rules, pure: E.164 numbers and segment counting.

A message longer than one SMS is split into segments, each billed separately. GSM-7
text fits 160 characters in one SMS, 153 per segment once split (the rest is the
concatenation header); characters of the GSM extension table (``€ [ ] { } ^ ~ | \\``)
take two. One character outside GSM-7 (an emoji, "ł", a curly quote) turns the whole
message into UCS-2: 70 in one SMS, 67 per segment, counted in UTF-16 code units (an
emoji takes two).
"""

from __future__ import annotations

import math

import phonenumbers

GSM7_BASIC = frozenset(
    "@£$¥èéùìòÇ\nØø\rÅåΔ_ΦΓΛΩΠΨΣΘΞÆæßÉ !\"#¤%&'()*+,-./0123456789:;<=>?"
    "¡ABCDEFGHIJKLMNOPQRSTUVWXYZÄÖÑÜ§¿abcdefghijklmnopqrstuvwxyzäöñüà"
)
GSM7_EXTENSION = frozenset("^{}\\[~]|€\f")


def encoding(text: str) -> str:
    return "GSM-7" if all(c in GSM7_BASIC or c in GSM7_EXTENSION for c in text) else "UCS-2"


def segments(text: str) -> tuple[int, str]:
    """(how many SMS ``text`` takes, its encoding)."""
    enc = encoding(text)
    if enc == "GSM-7":
        units = sum(2 if c in GSM7_EXTENSION else 1 for c in text)
        single, part = 160, 153
    else:
        units = len(text.encode("utf-16-le")) // 2
        single, part = 70, 67
    if units <= single:
        return 1, enc
    return math.ceil(units / part), enc


def e164(number: str | None, default_region: str | None = None) -> str | None:
    """``number`` as E.164 (``+4915112345678``), or None when it is no valid number.
    Without a leading ``+`` a number is read in ``default_region`` (ISO 3166 code)."""
    if not number:
        return None
    try:
        parsed = phonenumbers.parse(number, default_region)
    except phonenumbers.NumberParseException:
        return None
    if not phonenumbers.is_valid_number(parsed):
        return None
    return phonenumbers.format_number(parsed, phonenumbers.PhoneNumberFormat.E164)
