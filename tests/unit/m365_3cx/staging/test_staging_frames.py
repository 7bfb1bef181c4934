from __future__ import annotations

import pandas as pd
import pytest
from sqlalchemy import Engine

from m365_3cx.staging.frames import iter_frames, load_frame
from m365_3cx.staging.numbers import assign_numbers
from m365_3cx.staging.schema import stg_users
from m365_3cx.staging.users import merge_users
from tests.unit.m365_3cx.staging.staging_rows import T0, rows, uid


def test_load_frame_types(engine: Engine) -> None:
    with engine.begin() as conn:
        merge_users(conn, [*rows(1), *rows(2, accountEnabled=None, businessPhones=None)], "r1", T0)
        assign_numbers(conn, [{"user_id": uid(1), "number": "201"}], now=T0)
    with engine.connect() as conn:
        users = load_frame(conn, "stg_users")
        one = load_frame(conn, "stg_users", {"user_id": uid(2)})
        only_deleted = load_frame(conn, "stg_users", stg_users.c.deleted.is_(True))
        emap = load_frame(conn, "extension_map")
        empty = load_frame(conn, "cur_extensions")
    assert list(users.columns) == list(stg_users.columns.keys())
    assert users["business_phones"].tolist() == [["+1 425 555 0100"], []]
    assert users["extension_attributes"][0]["extensionAttribute1"] == "201"
    assert users["account_enabled"].tolist() == [True, None]
    assert users["deleted"].dtype == bool and users["in_scope"].dtype == bool
    assert str(users["first_seen_at"].dtype) == "datetime64[us, UTC]"
    assert users["first_seen_at"][0] == pd.Timestamp(T0)
    assert users["deleted_at"].isna().all()
    assert users["mobile_phone"].tolist() == [None, None]
    assert len(one) == 1 and len(only_deleted) == 0
    assert emap["threecx_id"].tolist() == [None]
    assert emap["adopted"].dtype == bool
    assert empty.empty and "tags" in empty.columns
    with pytest.raises(KeyError):
        load_frame(conn, "nope")


def test_load_frame_reads_only_the_columns_asked_for(engine: Engine) -> None:
    with engine.begin() as conn:
        merge_users(conn, [*rows(1), *rows(2)], "r1", T0)
    with engine.connect() as conn:
        some = load_frame(conn, "stg_users", columns=["user_id", "deleted", "business_phones"])
    assert list(some.columns) == ["user_id", "deleted", "business_phones"]
    assert some["user_id"].tolist() == [uid(1), uid(2)] and some["deleted"].dtype == bool
    assert some["business_phones"].tolist() == [["+1 425 555 0100"], ["+1 425 555 0100"]]


def test_iter_frames_streams_the_same_rows_in_chunks(engine: Engine) -> None:
    with engine.begin() as conn:
        merge_users(conn, [r for i in range(1, 8) for r in rows(i)], "r1", T0)
    with engine.connect() as conn:
        whole = load_frame(conn, "stg_users", {"deleted": False})
        chunks = list(iter_frames(conn, "stg_users", {"deleted": False}, chunk_rows=3))
        picked = list(iter_frames(conn, "stg_users", columns=["user_id", "first_seen_at"], chunk_rows=5))
        none = list(iter_frames(conn, "stg_users", stg_users.c.deleted.is_(True)))
    assert [len(c) for c in chunks] == [3, 3, 1]
    pd.testing.assert_frame_equal(pd.concat(chunks, ignore_index=True), whole)
    assert [len(c) for c in picked] == [5, 2] and list(picked[0].columns) == ["user_id", "first_seen_at"]
    assert str(picked[0]["first_seen_at"].dtype) == "datetime64[us, UTC]"
    assert none == []
