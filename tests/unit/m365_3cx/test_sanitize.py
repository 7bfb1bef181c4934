"""The sanitising boundary's text rules (issue 9 #1-#3): table-driven, plus properties."""

from __future__ import annotations

import unicodedata

import pytest
from hypothesis import given
from hypothesis import strategies as st

from m365_3cx.sanitize import REPLACEMENT, clean_json, clean_name, clean_text, clip, utf16_length

ANY_TEXT = st.text(st.characters(codec=None, exclude_categories=()), max_size=400)


@pytest.mark.parametrize(("raw", "clean", "removed", "spaced", "replaced"), [
    ("Anna", "Anna", 0, 0, 0),
    ("An\x00na", "Anna", 1, 0, 0),
    ("\u202eevil\u202c", "evil", 2, 0, 0),  # RTL override and pop
    ("\u2066iso\u2069", "iso", 2, 0, 0),  # bidi isolates
    ("Zero\u200bWidth\u200c\u200d", "ZeroWidth", 3, 0, 0),
    ("\ufeffBOM", "BOM", 1, 0, 0),
    ("soft\u00adhyphen", "softhyphen", 1, 0, 0),
    ("bell\x07\x7f\x9b", "bell", 3, 0, 0),  # C0, DEL, C1
    ("two\nlines\ttab", "two lines tab", 0, 2, 0),
    ("para\u2029graph\u2028line\x85next", "para graph line next", 0, 3, 0),
    ("lone\ud800high", f"lone{REPLACEMENT}high", 0, 0, 1),
    ("lone\udfffl\ud83d", f"lone{REPLACEMENT}l{REPLACEMENT}", 0, 0, 2),
    ("Zoë Øster 李 \u00a0nbsp", "Zoë Øster 李 \u00a0nbsp", 0, 0, 0),  # letters and NBSP stay
    ("\u200b\u200b", None, 2, 0, 0),  # nothing printable left
    ("", "", 0, 0, 0),
])
def test_clean_text_table(raw: str, clean: str | None, removed: int, spaced: int, replaced: int) -> None:
    result = clean_text(raw)
    assert (result.value, result.removed, result.spaced, result.replaced) == (clean, removed, spaced, replaced)
    assert result.changed == bool(removed or spaced or replaced)


def test_describe_names_what_was_done_and_the_code_points() -> None:
    result = clean_text("A\x00\u202e" + "b" * 300, limit=256)
    text = result.describe()
    assert "removed 2 control/format character(s) (U+0000, U+202E)" in text
    assert "is 301 characters; truncated to 256" in text
    assert clean_text("fine").describe() == ""


def test_clip_counts_utf16_units_for_3cx_and_never_splits_a_grapheme() -> None:
    assert clip("😀" * 30, 50, utf16=True) == ("😀" * 25, True)
    assert clip("😀" * 30, 50) == ("😀" * 30, False)
    assert clip("cafe\u0301s", 4) == ("caf", True)
    assert clip("ab \u0301", 3) == ("ab", True)
    assert clip("short", 10) == ("short", False)


def test_clean_name_collapses_whitespace_and_normalises() -> None:
    assert clean_name("  Jo\u200b  \n Smith ").value == "Jo Smith"
    assert clean_name("e\u0301").value == "é"
    assert clean_name("\u200b").value is None
    assert clean_name("x" * 60, limit=50, utf16=True).clipped_from == 60


def test_clean_json_cleans_nested_strings_and_keys() -> None:
    value, findings = clean_json({"extensionAttribute1": "2\x000\u200b1", "k\x00": ["a\ud800", 3, None]}, "attrs")
    assert value == {"extensionAttribute1": "201", "k": [f"a{REPLACEMENT}", 3, None]}
    assert sorted(f.field for f in findings) == ["attrs.<key>", "attrs.extensionAttribute1", "attrs.k[0]"]


@given(ANY_TEXT, st.integers(min_value=0, max_value=300), st.booleans())
def test_clean_text_output_is_always_storable_and_within_limit(raw: str, limit: int, utf16: bool) -> None:
    result = clean_text(raw, limit=limit, utf16=utf16)
    out = result.value or ""
    out.encode("utf-8")  # no lone surrogate left
    assert all(unicodedata.category(ch) not in ("Cc", "Cf", "Cs") for ch in out)
    assert (utf16_length(out) if utf16 else len(out)) <= limit
    assert clean_text(out, limit=limit, utf16=utf16).changed is False or not out  # idempotent


@given(ANY_TEXT)
def test_clean_text_keeps_clean_text_unchanged(raw: str) -> None:
    once = clean_text(raw).value
    if once is not None:
        assert clean_text(once).value == once and not clean_text(once).changed


_JSON = st.recursive(st.none() | st.booleans() | st.integers() | ANY_TEXT,
                     lambda inner: st.lists(inner, max_size=4) | st.dictionaries(ANY_TEXT | st.integers(), inner,
                                                                                   max_size=3), max_leaves=10)


def _strings(value: object) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [*_strings(k), *_strings(v)]]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    return []


@given(_JSON)
def test_clean_json_leaves_only_clean_text_and_notes_each_change(value: object) -> None:
    cleaned, findings = clean_json(value, "p")
    assert all(not clean_text(s).changed for s in _strings(cleaned))
    changed = [s for s in _strings(value) if clean_text(s).changed]
    assert len(findings) == len(changed)
    if not changed:
        assert cleaned == _text_keys(value)


def _text_keys(value: object) -> object:
    if isinstance(value, dict):
        return {str(k): _text_keys(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_text_keys(v) for v in value]
    return value
