from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import Engine

from m365_3cx.staging.extensions import pbx_row_from_xapi, replace_snapshot, replace_targets
from m365_3cx.staging.frames import load_frame
from m365_3cx.staging.numbers import assign_numbers, release_number
from tests.unit.m365_3cx.staging.staging_rows import T0, T1

# ------------------------------------------------------------------ targets / snapshot


def test_replace_targets_and_snapshot(engine: Engine) -> None:
    desired = pd.DataFrame(
        [
            {
                "user_id": "u1",
                "number": "201",
                "first_name": "A",
                "last_name": "B",
                "email": "a@x",
                "mobile": None,
                "outbound_caller_id": None,
                "enabled": True,
                "state": "active",
                "removal_reason": None,
            },
            {
                "user_id": "u2",
                "number": np.nan,
                "first_name": "C",
                "last_name": "D",
                "email": None,
                "mobile": None,
                "outbound_caller_id": None,
                "enabled": np.bool_(False),
                "state": "removed",
                "removal_reason": "disabled",
            },
        ]
    )
    with engine.begin() as conn:
        assert replace_targets(conn, desired.to_dict("records"), "r1", T0) == 2
        assert replace_targets(conn, [{**desired.iloc[0].to_dict(), "first_name": "Z"}], "r2", T1) == 1
        tgt = load_frame(conn, "tgt_extensions").set_index("user_id")
        assert tgt.loc["u1", "first_name"] == "Z" and tgt.loc["u1", "run_key"] == "r2"
        assert tgt.loc["u2", "number"] is None and tgt.loc["u2", "enabled"] is False
        pbx = [
            {"threecx_id": 10, "number": "201", "first_name": "A", "enabled": True, "tags": ["m365"]},
            {"threecx_id": np.int64(11), "number": "999", "first_name": "X", "enabled": False, "tags": []},
        ]
        assert replace_snapshot(conn, pbx, "r1", T0) == 2
        assert replace_snapshot(conn, pbx[:1], "r2", T1) == 1
        cur = load_frame(conn, "cur_extensions")
        assert cur["threecx_id"].tolist() == [10] and cur["tags"][0] == ["m365"]
        assert cur["run_key"][0] == "r2"


def test_pbx_row_from_xapi_and_managed_count(engine: Engine) -> None:
    row = pbx_row_from_xapi(
        {
            "Id": 12,
            "Number": "201",
            "FirstName": "A",
            "EmailAddress": "a@x",
            "Enabled": True,
            "CurrentProfileName": "Available",
            "Tags": ["MS"],
            "Groups": [],
        }
    )
    assert row["threecx_id"] == 12 and row["email"] == "a@x" and row["tags"] == ["MS"]
    assert row["mobile"] is None
    with pytest.raises(ValueError):
        pbx_row_from_xapi({"Number": "1"})
    with engine.begin() as conn:
        replace_snapshot(conn, [row], "r1", T0)
        assert load_frame(conn, "extension_map", where={"status": "active"}).empty
        assign_numbers(conn, [{"user_id": "u1", "number": "201"}, {"user_id": "u2", "number": "202"}], now=T0)
        release_number(conn, "u2", T0)
        assert load_frame(conn, "extension_map", where={"status": "active"})["user_id"].tolist() == ["u1"]
