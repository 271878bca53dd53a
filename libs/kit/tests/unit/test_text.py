"""afterglow.kit.text and afterglow.kit.jsonbody: what a clean string and a bounded JSON
body are, for every boundary that uses them."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from afterglow.kit.jsonbody import JsonBodyError, loads_bounded
from afterglow.kit.text import clean_text, has_control_chars


class TestCleanText:
    def test_nul_and_controls_removed(self):
        assert clean_text("Jo\x00hn\x1b[31m\x7f") == "John[31m"

    def test_newline_kept_only_in_multiline_text(self):
        assert clean_text("a\nb\tc") == "abc"
        assert clean_text("a\nb\tc\x00", multiline=True) == "a\nb\tc"

    def test_a_nul_between_letter_and_accent_still_composes(self):
        assert clean_text("e\x00\u0301") == "\u00e9"

    def test_cut_to_the_bound(self):
        assert clean_text("abcdef", max_len=4) == "abcd"

    @given(st.text())
    def test_result_is_clean_and_normalised(self, value):
        out = clean_text(value, max_len=50)
        assert not has_control_chars(out)
        assert len(out) <= 50
        assert clean_text(out) == out


class TestLoadsBounded:
    def test_plain_object(self):
        assert loads_bounded(b'{"a": [1, {"b": null}]}') == {"a": [1, {"b": None}]}

    @pytest.mark.parametrize("depth", [65, 10_000])
    def test_too_deep_is_refused(self, depth):
        with pytest.raises(JsonBodyError) as err:
            loads_bounded(b"[" * depth + b"]" * depth)
        assert err.value.code == "too_deep"

    def test_at_the_bound_is_taken(self):
        assert loads_bounded(b"[" * 64 + b"]" * 64) is not None

    def test_wide_but_shallow_is_taken(self):
        # More "{" and "[" than the bound, but side by side: the walk decides.
        body = b'{"items": [' + b",".join([b'{"a": [1]}'] * 100) + b"]}"
        assert len(loads_bounded(body)["items"]) == 100

    def test_too_deep_among_many_siblings_is_refused(self):
        body = b"[" + b"{}," * 100 + b"[" * 64 + b"]" * 64 + b"]"
        with pytest.raises(JsonBodyError) as err:
            loads_bounded(body)
        assert err.value.code == "too_deep"

    def test_brackets_inside_strings_change_nothing(self):
        assert loads_bounded(b'{"note": "' + b"[{" * 100 + b'"}') == {"note": "[{" * 100}

    @pytest.mark.parametrize("body", [b"{", b"\xff\xfe", b'{"n": ' + b"9" * 5000 + b"}"])
    def test_malformed_is_refused(self, body):
        with pytest.raises(JsonBodyError) as err:
            loads_bounded(body)
        assert err.value.code == "malformed_json"
