from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from m365_3cx.transform.phones import PhoneResult, to_e164


@pytest.mark.parametrize(
    ("raw", "region", "expected"),
    [
        ("+1 650-253-0000", None, "+16502530000"),
        ("(650) 253-0000", "US", "+16502530000"),
        ("650.253.0000", None, "+16502530000"),  # default region US
        ("020 7946 0018", "GB", "+442079460018"),
        ("+44 20 7946 0018", "US", "+442079460018"),  # international prefix beats region
        ("030 123456", "DE", "+4930123456"),
        ("+49 (0)30 123456", "DE", "+4930123456"),
        ("01 23 45 67 89", "FR", "+33123456789"),
        ("06 12 34 56 78", "fr", "+33612345678"),  # region case-insensitive
        ("1-800-FLOWERS", "US", "+18003569377"),  # vanity letters
    ],
)
def test_valid_numbers(raw: str, region: str | None, expected: str) -> None:
    assert to_e164(raw, region, "US") == PhoneResult(expected, None)


def test_national_format_needs_the_right_region() -> None:
    # a UK national number read as US is impossible
    result = to_e164("020 7946 0018", "US", "US")
    assert result.e164 is None
    assert result.warning is not None
    assert "'020 7946 0018'" in result.warning


def test_unknown_region_falls_back_to_default() -> None:
    assert to_e164("020 7946 0018", "XX", "GB").e164 == "+442079460018"
    assert to_e164("020 7946 0018", None, "GB").e164 == "+442079460018"


@pytest.mark.parametrize("raw", ["(650) 253-0000 x23", "+1 650 253 0000 ext. 23", "650-253-0000 ext 23"])
def test_extension_is_dropped_with_warning(raw: str) -> None:
    result = to_e164(raw, "US", "US")
    assert result.e164 == "+16502530000"
    assert result.warning is not None
    assert "extension 23" in result.warning
    assert "dropped" in result.warning


@pytest.mark.parametrize(
    ("raw", "why"),
    [
        ("+1 555", "too short"),
        ("555-0100", "without area code"),
        ("+1 999 999 9999", "not a valid number"),
        ("call me", "not a phone number"),
        ("abc", "not a phone number"),
        ("+999 123", "unknown country code"),
        ("1" * 30, "too long"),
    ],
)
def test_rejected_numbers_say_why(raw: str, why: str) -> None:
    result = to_e164(raw, "US", "US")
    assert result.e164 is None
    assert result.warning is not None
    assert why in result.warning


def test_invalid_message_names_region() -> None:
    assert to_e164("+1 555", "US", "US").warning == ("'+1 555' is not a valid number for region US (too short)")


def test_long_input_is_shortened_in_the_warning() -> None:
    result = to_e164("x" * 500, "US", "US")
    assert result.e164 is None
    assert result.warning is not None
    assert len(result.warning) < 120


@pytest.mark.parametrize("raw", [None, "", "   ", float("nan")])
def test_empty(raw: object) -> None:
    assert to_e164(raw, "US", "US") == PhoneResult(None, None)  # type: ignore[arg-type]


@given(raw=st.one_of(st.none(), st.text(max_size=60)), region=st.one_of(st.none(), st.text(max_size=3)))
def test_never_raises(raw: str | None, region: str | None) -> None:
    result = to_e164(raw, region, "US")
    assert result.e164 is None or result.e164.startswith("+")
    if result.e164 is None and raw is not None and raw.strip():
        assert result.warning
