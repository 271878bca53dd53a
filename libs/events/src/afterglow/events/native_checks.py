"""The catalog's text and instant checks (catalog.CleanText) moved into pydantic-core.

CleanText declares one Python validator for every field of every event model: after
a field is validated, strings (and the strings of a list) must hold no control
character and aware instants must lie within EARLIEST..LATEST. Called from Rust once
per field, it was ~40% of parsing an order.placed (37 calls, 9.8 us of the record's
15.7) in every consumer. :func:`natively` rewrites a model's core schema so that the
same checks run inside pydantic-core where the field's type allows it:

* a ``str`` is followed by the same string with a ``pattern`` that allows no control
  character; an aware ``datetime`` by the same instant with ``ge``/``lt`` bounds. The
  error replaces the bound's or the pattern's by the one the Python check raised
  (``value_error``, the same message), so callers and their tests read no difference;
* a field whose values the check never refuses (numbers, booleans, literals, nested
  models, dicts) loses the call;
* ``None`` (nullable), defaults, unions and lists (their items, one level, as the
  Python check walks them) are followed inside;
* anything else (a plain ``datetime`` that may be naive, ``Any``, a field validator of
  the model's own) keeps the Python check, unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from datetime import datetime
from typing import Any

from pydantic_core import CoreSchema
from pydantic_core import core_schema as cs

# The schema types whose validated values the Python check lets through untouched.
_NOTHING_TO_CHECK = frozenset(
    {"bool", "int", "float", "decimal", "model", "definition-ref", "dict", "none", "literal"}
)


class _Keep(Exception):
    """This part needs the Python check."""


def natively(
    schema: CoreSchema,
    owner: type,
    check: Callable[..., Any],
    *,
    allowed_text: str,
    text_error: str,
    earliest: datetime,
    latest: datetime,
    instant_error: str,
) -> CoreSchema:
    """``owner``'s ``schema`` with every call of ``check`` (an after validator on its
    fields) replaced by the same checks in pydantic-core where the value's schema can
    express them."""

    def checked(inner: dict[str, Any], rule: CoreSchema, error: str) -> CoreSchema:
        return cs.chain_schema(
            [
                inner,
                cs.custom_error_schema(
                    rule, custom_error_type="value_error", custom_error_context={"error": error}
                ),
            ],
            # A JSON schema of a chain describes its last step when serializing; the
            # field's is the one it had (its own pattern, lengths), in both modes.
            metadata={"pydantic_js_functions": [lambda _s, handler: handler(inner)]},
        )

    def text(inner: dict[str, Any]) -> CoreSchema:
        return checked(inner, cs.str_schema(pattern=allowed_text), text_error)

    def instant(inner: dict[str, Any]) -> CoreSchema:
        return checked(inner, cs.datetime_schema(ge=earliest, lt=latest), instant_error)

    def value(s: dict[str, Any], *, item: bool = False) -> dict[str, Any]:
        """The value's schema with the check applied natively, or _Keep."""
        kind = s["type"]
        if kind in _NOTHING_TO_CHECK:
            return s
        if kind == "str":
            return text(s)  # type: ignore[return-value]
        if kind == "datetime" and s.get("tz_constraint") == "aware":
            return instant(s)  # type: ignore[return-value]
        if kind in ("nullable", "default"):
            return {**s, "schema": value(s["schema"], item=item)}
        if kind == "union":
            return {
                **s,
                "choices": [
                    (value(c[0], item=item), c[1]) if isinstance(c, tuple) else value(c, item=item)
                    for c in s["choices"]
                ],
            }
        if kind == "list":
            if item:  # a list inside a list: the Python check does not look into it
                return s
            if "items_schema" not in s:
                raise _Keep
            return {**s, "items_schema": value(s["items_schema"], item=True)}
        raise _Keep

    def walk(node: Any) -> Any:
        if isinstance(node, list):
            return [walk(n) for n in node]
        if isinstance(node, tuple):
            return tuple(walk(n) for n in node)
        if not isinstance(node, dict):
            return node
        if node.get("type") == "model" and node.get("cls") is not owner:
            # Another model (a field's type, or a definition): built through its own
            # class, which rewrote its schema already if it is a CleanText.
            return node
        if node.get("type") == "function-after" and _calls(node, check):
            inner = walk(node["schema"])
            try:
                return value(inner)
            except _Keep:
                return {**node, "schema": inner}
        return {k: walk(v) for k, v in node.items()}

    return walk(schema)


def _calls(node: dict[str, Any], check: Callable[..., Any]) -> bool:
    fn = node.get("function", {}).get("function")
    return getattr(fn, "__func__", fn) is getattr(check, "__func__", check)
