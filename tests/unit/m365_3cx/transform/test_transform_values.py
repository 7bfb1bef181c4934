from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from m365_3cx.transform.notes import Note, note_rows, user_note
from m365_3cx.transform.scope import user_states
from m365_3cx.transform.values import as_bool, as_dict, as_int, as_list, ensure_columns, is_missing, text


@pytest.mark.parametrize("value", [None, float("nan"), pd.NA, pd.NaT, np.nan])
def test_missing(value: object) -> None:
    assert is_missing(value)
    assert text(value) is None
    assert as_int(value) is None


@pytest.mark.parametrize("value", ["", 0, False, [], {}, "x"])
def test_not_missing(value: object) -> None:
    assert not is_missing(value)


def test_conversions() -> None:
    assert text("  a b ") == "a b"
    assert text("   ") is None
    assert as_list(np.array(["+1", "+2"])) == ["+1", "+2"]
    assert as_list(None) == [] and as_list("x") == ["x"] and as_list(("a",)) == ["a"]
    assert as_dict({"a": 1}) == {"a": 1} and as_dict(None) == {} and as_dict("x") == {}
    assert as_int(7.0) == 7 and as_int("12") == 12 and as_int(1.5) is None and as_int(True) is None
    assert as_int(7) == 7 and as_int(np.int64(7)) == 7 and as_int(-(2**53)) == -(2**53)
    assert as_int(2**53 + 1) == int(float(2**53 + 1))  # past the exact range: as through float, as ever
    assert text(np.str_(" a ")) == "a" and text(3) == "3" and text(float("nan")) is None
    assert as_bool(None, True) is True and as_bool(np.bool_(False), True) is False
    assert as_bool("false", True) is False and as_bool("TRUE", False) is True


def test_ensure_columns_does_not_modify_input() -> None:
    frame = pd.DataFrame({"a": [1]})
    out = ensure_columns(frame, ["a", "b"])
    assert list(frame.columns) == ["a"]
    assert out["b"].tolist() == [None]
    assert ensure_columns(frame, ["a"]) is frame


def test_user_states_with_nullable_dtypes() -> None:
    users = pd.DataFrame(
        {
            "deleted": pd.array([False, None, True], dtype="boolean"),
            "in_scope": pd.array([True, True, None], dtype="boolean"),
            "account_enabled": pd.array([None, False, True], dtype="boolean"),
            "user_type": pd.array(["Member", None, "guest"], dtype="string"),
        }
    )
    states = user_states(users)
    assert states["state"].tolist() == ["active", "removed", "removed"]
    assert states["removal_reason"].tolist() == [None, "disabled", "deleted"]


def test_note_helpers() -> None:
    note = user_note("id1", "", "mail", "something odd")
    assert note == Note("user", "id1", "id1", "mail", "warning", "user id1: something odd")
    (row,) = note_rows([note], "dag/run", pd.Timestamp("2025-01-01", tz="UTC").to_pydatetime())
    assert row["run_key"] == "dag/run" and row["message"] == "user id1: something odd"
