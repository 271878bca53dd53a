"""Constrained types for what crosses a REST boundary: ids, text, integers, instants.

Every service declares its path ids, query values and body fields with these, so that
odd input is refused with a 422 naming the field instead of reaching PostgreSQL or the
arithmetic and failing there with a 500:

- PostgreSQL ``text`` cannot hold NUL (asyncpg: "invalid byte sequence for encoding
  UTF8: 0x00") and UTF-8 cannot hold a lone surrogate, which a percent-encoded path
  such as ``%ED%A0%80`` decodes to;
- a ``bigint`` column overflows at 2**63 ("value out of int8 range"), an ``integer``
  one at 2**31;
- ``datetime`` stops at year 9999, so a timer 14 days after an event in December 9999
  raises ``OverflowError``.

The constraints are pydantic metadata, so they also show in the OpenAPI document
(``maxLength``, ``pattern``, ``minimum``/``maximum``).
"""

from __future__ import annotations

import re
from datetime import UTC, datetime
from typing import Annotated, Any

from pydantic import AfterValidator, AwareDatetime, Field, StringConstraints

from afterglow.kit.text import has_control_chars

# The JSON-schema twin of the checks below (documentation and fuzzers); the validators
# carry the clear messages. Surrogates are never valid in UTF-8.
_NO_CONTROLS_PATTERN = r"^[^\x00-\x1f\x7f-\x9f\ud800-\udfff]*$"
_NO_CONTROLS_MULTILINE_PATTERN = r"^[^\x00-\x08\x0b\x0c\x0e-\x1f\x7f-\x9f\ud800-\udfff]*$"
_SURROGATE = re.compile(r"[\ud800-\udfff]")

ID_MAX = 200
SHORT_TEXT_MAX = 200
LONG_TEXT_MAX = 5000
INT64_MIN = -(2**63)
INT32_MIN = -(2**31)
# Far beyond any real balance or order total in minor units (10^15 cents is ten
# trillion dollars), and far enough below 2**63 that adding a few of them to a stored
# bigint cannot overflow it.
AMOUNT_MAX = 10**15
# Instants a customer's history can hold: a timer or window computed from one stays
# within Python's datetime (year 9999) and PostgreSQL's timestamptz.
EARLIEST = datetime(1970, 1, 1, tzinfo=UTC)
LATEST = datetime(2200, 1, 1, tzinfo=UTC)


def _clean(value: str) -> str:
    if has_control_chars(value):
        raise ValueError("must not contain control characters (NUL, newline, escape ...)")
    if _SURROGATE.search(value):
        raise ValueError("must be valid UTF-8 text")
    return value


def _clean_multiline(value: str) -> str:
    if has_control_chars(value, multiline=True):
        raise ValueError("must not contain control characters other than newline and tab")
    if _SURROGATE.search(value):
        raise ValueError("must be valid UTF-8 text")
    return value


def _jsonb_safe(value: dict[str, Any]) -> dict[str, Any]:
    # Iterative: the value is already within the kit's depth bound, but a walk must not
    # be the thing that recurses.
    stack: list[Any] = [value]
    while stack:
        node = stack.pop()
        if isinstance(node, dict):
            stack.extend(node.keys())
            stack.extend(node.values())
        elif isinstance(node, list):
            stack.extend(node)
        elif isinstance(node, str) and ("\x00" in node or _SURROGATE.search(node)):
            raise ValueError("must not contain NUL characters or invalid UTF-8")
        elif isinstance(node, int) and not isinstance(node, bool) and not INT64_MIN <= node < 2**63:
            raise ValueError("holds an integer beyond 64 bits")
    return value


def _within_range(value: datetime) -> datetime:
    if not EARLIEST <= value < LATEST:
        raise ValueError(
            f"must lie between {EARLIEST.date().isoformat()} and {LATEST.date().isoformat()}"
        )
    return value


_ONE_LINE = Field(json_schema_extra={"pattern": _NO_CONTROLS_PATTERN})
_MULTILINE = Field(json_schema_extra={"pattern": _NO_CONTROLS_MULTILINE_PATTERN})

# An identifier in a path, a query or a body: a customer, an order, a journey name.
# Ids come from the merchants' platforms (Shopify's numbers, WooCommerce's, emails in
# some helpdesks), so any printable text is allowed, bounded.
Id = Annotated[
    str, StringConstraints(min_length=1, max_length=ID_MAX), AfterValidator(_clean), _ONE_LINE
]
# One line of text (a title, a name, a reason, a code) and a body of text (a comment,
# a review: newline and tab are kept).
ShortText = Annotated[
    str, StringConstraints(max_length=SHORT_TEXT_MAX), AfterValidator(_clean), _ONE_LINE
]
LongText = Annotated[
    str,
    StringConstraints(max_length=LONG_TEXT_MAX),
    AfterValidator(_clean_multiline),
    _MULTILINE,
]
# For a string field with its own bound: ``Annotated[str, StringConstraints(max_length=
# 40), NoControls]``.
NoControls = AfterValidator(_clean)
NoControlsMultiline = AfterValidator(_clean_multiline)

# Integers as the columns that store them can hold them.
# (``lt`` rather than ``le``: 2**63 is exact as the JSON-schema float, 2**63 - 1 is not.)
BigInt = Annotated[int, Field(ge=INT64_MIN, lt=2**63)]
Int32 = Annotated[int, Field(ge=INT32_MIN, lt=2**31)]
# A version number, a count, a number of days: positive, an ``integer`` column.
PositiveInt32 = Annotated[int, Field(ge=1, lt=2**31)]
# Money in minor units and loyalty points: see AMOUNT_MAX.
Amount = Annotated[int, Field(ge=0, le=AMOUNT_MAX)]
SignedAmount = Annotated[int, Field(ge=-AMOUNT_MAX, le=AMOUNT_MAX)]

# A free-form JSON object (template variables, a journey definition): PostgreSQL's jsonb
# refuses "\u0000" in a string ("unsupported Unicode escape sequence") and numbers
# beyond what the readers of the event can take.
JsonObject = Annotated[dict[str, Any], AfterValidator(_jsonb_safe)]

# An instant with a time zone, within EARLIEST..LATEST.
Instant = Annotated[AwareDatetime, AfterValidator(_within_range)]
