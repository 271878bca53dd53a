"""Parse a JSON body within bounds of size and depth.

Python's ``json`` recurses per nesting level: a body of 10,000 nested objects raises
``RecursionError``, which no route expects and which answered 500. The depth bound is
far above any real payload (a Shopify order nests about 6 deep) and far below the
interpreter's recursion limit.
"""

from __future__ import annotations

import json
from typing import Any

MAX_DEPTH = 64


class JsonBodyError(ValueError):
    """The body is not JSON, or not JSON within the bounds; the message says which."""

    def __init__(self, message: str, *, code: str = "malformed_json") -> None:
        super().__init__(message)
        self.code = code


def depth_exceeds(value: Any, max_depth: int) -> bool:
    """True when ``value`` nests deeper than ``max_depth``; iterative, so it cannot
    itself run out of stack."""
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        node, depth = stack.pop()
        if isinstance(node, dict):
            children: Any = node.values()
        elif isinstance(node, list):
            children = node
        else:
            continue
        if depth > max_depth:
            return True
        stack.extend((child, depth + 1) for child in children)
    return False


def _openers(body: bytes | str) -> int:
    """How many "{" and "[" the text holds: a bound on its nesting (each level opens
    with one; one inside a string only makes the count larger). A body within the depth
    bound by this count skips :func:`depth_exceeds`, a walk over every node in Python
    (a Shopify order has about a dozen; the walk was a tenth of the webhook hot path's
    CPU)."""
    if isinstance(body, bytes):
        return body.count(b"{") + body.count(b"[")
    return body.count("{") + body.count("[")


def loads_bounded(body: bytes | str, *, max_depth: int = MAX_DEPTH) -> Any:
    """``json.loads`` that raises :class:`JsonBodyError` for anything it cannot take:
    invalid JSON or UTF-8, nesting deeper than ``max_depth``, numbers Python refuses
    (a 5,000-digit integer)."""
    try:
        value = json.loads(body)
    except RecursionError as exc:
        raise JsonBodyError(
            f"the body nests deeper than {max_depth} levels", code="too_deep"
        ) from exc
    except (ValueError, UnicodeDecodeError) as exc:
        # ValueError also covers int() refusing more than sys.get_int_max_str_digits().
        raise JsonBodyError(f"the body is not valid JSON: {exc}") from exc
    if _openers(body) > max_depth and depth_exceeds(value, max_depth):
        raise JsonBodyError(f"the body nests deeper than {max_depth} levels", code="too_deep")
    return value
