"""The constrained types every service declares its REST input with."""

from __future__ import annotations

from typing import Any

import pytest
from pydantic import TypeAdapter, ValidationError

from afterglow.kit.types import (
    Amount,
    BigInt,
    Id,
    Instant,
    Int32,
    JsonObject,
    LongText,
    PositiveInt32,
    ShortText,
)


def accepts(tp: Any, value: Any) -> bool:
    try:
        TypeAdapter(tp).validate_python(value)
    except ValidationError:
        return False
    return True


class TestStrings:
    @pytest.mark.parametrize("value", ["cus_42", "ada@example.com", "Ünïcødé 顧客", "x" * 200])
    def test_ids_take_printable_text(self, value):
        assert accepts(Id, value)

    @pytest.mark.parametrize(
        "value", ["", "a\x00b", "a\nb", "\x1b[31m", "a\x7f", "a\x85", "\ud800", "x" * 201]
    )
    def test_ids_refuse_control_characters_surrogates_and_length(self, value):
        assert not accepts(Id, value)

    def test_long_text_keeps_newlines_and_tabs_only(self):
        assert accepts(LongText, "line one\nline two\twith a tab\r\n")
        assert not accepts(LongText, "a\x00b")
        assert not accepts(LongText, "x" * 5001)
        assert not accepts(ShortText, "a\nb")

    def test_the_message_names_the_problem(self):
        with pytest.raises(ValidationError, match="must not contain control characters"):
            TypeAdapter(Id).validate_python("a\x00")


class TestNumbers:
    def test_bigint_is_the_range_of_a_bigint_column(self):
        assert accepts(BigInt, 2**63 - 1) and accepts(BigInt, -(2**63))
        assert not accepts(BigInt, 2**63) and not accepts(BigInt, -(2**63) - 1)

    def test_int32_and_positive_int32(self):
        assert accepts(Int32, 2**31 - 1) and not accepts(Int32, 2**31)
        assert not accepts(PositiveInt32, 0) and not accepts(PositiveInt32, 1234567890123456)

    def test_amounts_stay_far_below_overflow(self):
        assert accepts(Amount, 10**15) and not accepts(Amount, 10**15 + 1)
        assert not accepts(Amount, -1)


class TestInstants:
    @pytest.mark.parametrize("value", ["2026-03-02T12:00:00Z", "1970-01-01T00:00:00+00:00"])
    def test_ordinary_instants(self, value):
        assert accepts(Instant, value)

    @pytest.mark.parametrize(
        "value", ["9999-12-31T23:00:00Z", "0001-01-01T00:00:00Z", "2026-03-02T12:00:00"]
    )
    def test_out_of_range_or_naive_instants_are_refused(self, value):
        assert not accepts(Instant, value)


class TestJsonObject:
    def test_refuses_what_jsonb_cannot_store(self):
        assert accepts(JsonObject, {"a": ["b", {"c": 1}], "d": "line\nbreak"})
        assert not accepts(JsonObject, {"a": ["b", {"c": "x\x00"}]})
        assert not accepts(JsonObject, {"k\x00": 1})
        assert not accepts(JsonObject, {"n": 2**64})


def test_constraints_show_in_the_json_schema():
    schema = TypeAdapter(Id).json_schema()
    assert schema["maxLength"] == 200 and schema["minLength"] == 1
    assert "pattern" in schema
    big = TypeAdapter(BigInt).json_schema()
    assert big["exclusiveMaximum"] == 2**63 and big["minimum"] == -(2**63)
