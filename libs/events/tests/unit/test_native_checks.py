"""Every string of every catalog event refuses control characters and every instant
refuses a year outside 1970..2200, now that the checks run inside pydantic-core
(afterglow.events.native_checks): each string and instant of each sample, one at a
time, made hostile."""

from __future__ import annotations

import json
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any, get_args, get_origin

import pytest
from pydantic import BaseModel, ValidationError

from afterglow.events import catalog as c
from afterglow.events.samples import sample_events

Path = tuple[str | int, ...]


def _leaves(node: Any, path: Path = ()) -> Iterator[tuple[Path, Any]]:
    if isinstance(node, dict):
        for k, v in node.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(node, list):
        for i, v in enumerate(node):
            yield from _leaves(v, (*path, i))
    else:
        yield path, node


def _with(doc: Any, path: Path, value: Any) -> Any:
    doc = json.loads(json.dumps(doc))
    node = doc
    for part in path[:-1]:
        node = node[part]
    node[path[-1]] = value
    return doc


def _instant(text: str) -> bool:
    try:
        return datetime.fromisoformat(text).tzinfo is not None
    except ValueError:
        return False


def _in_a_dict(cls: type[BaseModel], path: Path) -> bool:
    """Whether ``path`` passes through a dict-typed field: the check, in Python as
    before, looks at a field's strings and a list's, not into mappings."""
    node: Any = cls
    for part in path:
        if isinstance(part, int):
            continue
        if not (isinstance(node, type) and issubclass(node, BaseModel)):
            return False
        annotation = node.model_fields[part].annotation
        kinds = [annotation, *get_args(annotation)]
        if any(get_origin(k) is dict or k is dict for k in kinds):
            return True
        inner = [a for k in kinds for a in (k, *get_args(k))]
        node = next((k for k in inner if isinstance(k, type) and issubclass(k, BaseModel)), None)
    return False


def _cases() -> Iterator[Any]:
    for event in sample_events():
        doc = event.model_dump(mode="json")
        for path, value in _leaves(doc):
            if path == ("type",) or not isinstance(value, str) or _in_a_dict(type(event), path):
                continue
            kind = "instant" if _instant(value) else "text"
            yield pytest.param(type(event), doc, path, kind, id=f"{event.type}:{path}")


def _errors_at(cls: type[c.EventData], doc: Any, path: Path) -> list[Any]:
    with pytest.raises(ValidationError) as caught:
        cls.model_validate_json(json.dumps(doc))
    return [e for e in caught.value.errors() if e["loc"] == path]


@pytest.mark.parametrize(("cls", "doc", "path", "kind"), list(_cases()))
def test_a_hostile_value_in_any_field_is_refused_where_it_is(
    cls: type[c.EventData], doc: Any, path: Path, kind: str
) -> None:
    cls.model_validate_json(json.dumps(doc))  # the sample itself passes
    if kind == "instant":
        for far in ("2300-01-01T00:00:00Z", "1960-01-01T00:00:00+00:00"):
            errors = _errors_at(cls, _with(doc, path, far), path)
            assert [e["msg"] for e in errors] == [
                "Value error, must lie between 1970 and 2200 (exclusive)"
            ]
        return
    value = dict(_leaves(doc))[path]
    errors = _errors_at(cls, _with(doc, path, value + "\x00"), path)
    assert errors, "a NUL went through"
    # Free text says why; a value held to a literal or a pattern of its own was refused
    # by that first, as before.
    if errors[0]["type"] == "value_error":
        assert errors[0]["msg"] == "Value error, must not contain control characters"
    else:
        assert errors[0]["type"] in ("literal_error", "string_pattern_mismatch", "enum")


def test_newline_tab_and_return_stay_allowed_in_text() -> None:
    placed = next(e for e in sample_events() if isinstance(e, c.OrderPlaced))
    doc = _with(placed.model_dump(mode="json"), ("order_id",), "a\nb\tc\rd")
    assert c.OrderPlaced.model_validate_json(json.dumps(doc)).order_id == "a\nb\tc\rd"


def test_an_instant_within_the_range_by_its_offset_passes() -> None:
    placed = next(e for e in sample_events() if isinstance(e, c.OrderPlaced))
    # 2199-12-31T23:30Z: the bound is compared as an instant, not as wall-clock text.
    doc = _with(placed.model_dump(mode="json"), ("placed_at",), "2200-01-01T00:30:00+01:00")
    got = c.OrderPlaced.model_validate_json(json.dumps(doc)).placed_at
    assert got == datetime(2199, 12, 31, 23, 30, tzinfo=UTC)


def test_models_built_in_python_are_checked_the_same() -> None:
    with pytest.raises(ValidationError, match="must not contain control characters"):
        c.MessageRequested(request_id="r\x00", kind="welcome", category="transactional")


class _Loose(c.CleanText):
    anything: Any = None
    when: datetime | None = None  # may be naive: the check stays in Python for it


def test_what_pydantic_core_cannot_check_keeps_the_python_check() -> None:
    with pytest.raises(ValidationError, match="must not contain control characters"):
        _Loose(anything="a\x01")
    with pytest.raises(ValidationError, match="must lie between"):
        _Loose(when=datetime(2300, 1, 1, tzinfo=UTC))
    with pytest.raises(ValidationError, match="must not contain control characters"):
        _Loose(anything=["fine", "a\x01"])  # a list's strings, as before
    assert _Loose(when=datetime(2300, 1, 1)).when == datetime(2300, 1, 1)  # naive: unchecked
