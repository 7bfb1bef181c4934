from __future__ import annotations

import datetime as dt
import hashlib
import json

import pytest
from sqlalchemy import Engine, select

from m365_3cx.staging.schema import stg_users
from m365_3cx.staging.users import (
    GRAPH_USER_SELECT,
    USER_SOURCE_COLUMNS,
    MergeCounts,
    changed_user_ids,
    mark_missing_deleted,
    mark_users_deleted,
    merge_users,
    set_scope,
    set_scope_details,
    user_row_from_graph,
)
from tests.unit.m365_3cx.staging.staging_rows import T0, T1, graph_user, rows, uid

# ------------------------------------------------------------------ mapping


def test_user_row_from_graph_tolerates_missing_keys() -> None:
    row = user_row_from_graph({"id": "abc"})
    assert row["user_id"] == "abc"
    assert row["display_name"] is None and row["account_enabled"] is None
    assert row["business_phones"] == []
    assert set(row["extension_attributes"]) == {f"extensionAttribute{i}" for i in range(1, 16)}
    assert len(row["row_hash"]) == 64
    with pytest.raises(ValueError):
        user_row_from_graph({"displayName": "no id"})


def test_row_hash_covers_source_fields_only() -> None:
    a = user_row_from_graph(graph_user(1))
    assert (
        user_row_from_graph({**graph_user(1), "@odata.etag": "x", "officeLocation": "B"})["row_hash"]
        == a["row_hash"]
    )
    assert user_row_from_graph(graph_user(1, department="Sales"))["row_hash"] != a["row_hash"]
    assert "id" in GRAPH_USER_SELECT and "onPremisesExtensionAttributes" in GRAPH_USER_SELECT


def test_naive_datetime_refused(engine: Engine) -> None:
    with engine.begin() as conn, pytest.raises(ValueError, match="naive"):
        merge_users(conn, rows(1), "r", dt.datetime(2025, 1, 1))


# ------------------------------------------------------------------ users


def test_merge_is_idempotent_and_detects_changes(engine: Engine) -> None:
    with engine.begin() as conn:
        assert merge_users(conn, rows(1, 2, 3), "r1", T0) == MergeCounts(3, 0, 0)
    with engine.begin() as conn:
        assert merge_users(conn, rows(1, 2, 3), "r2", T1) == MergeCounts(0, 0, 3)
        assert changed_user_ids(conn, "r2") == set()
        changed = [*rows(1, 2), *rows(3, jobTitle="Boss")]
        counts = merge_users(conn, changed, "r3", T1)
        assert (counts.inserted, counts.updated, counts.unchanged, counts.written) == (0, 1, 2, 1)
        assert changed_user_ids(conn, "r3") == {uid(3)}
        row = conn.execute(select(stg_users).where(stg_users.c.user_id == uid(3))).one()
        assert row.job_title == "Boss"
        assert row.first_seen_at == T0 and row.updated_at == T1
        assert row.in_scope is False and row.deleted is False


def test_merge_duplicates_last_wins(engine: Engine) -> None:
    with engine.begin() as conn:
        counts = merge_users(conn, [*rows(1), *rows(1, department="IT")], "r1", T0)
        assert counts == MergeCounts(1, 0, 0)
        assert conn.execute(select(stg_users.c.department)).scalar() == "IT"


def test_soft_delete_and_return(engine: Engine) -> None:
    with engine.begin() as conn:
        merge_users(conn, rows(1, 2), "r1", T0)
        assert mark_users_deleted(conn, [uid(1), "never-seen"], "r2", T1) == 1
        assert mark_users_deleted(conn, [uid(1)], "r3", T1) == 0
        row = conn.execute(select(stg_users).where(stg_users.c.user_id == uid(1))).one()
        assert (row.deleted, row.deleted_at, row.last_run_key) == (True, T1, "r2")
        # the user comes back unchanged: rewritten because it was deleted
        assert merge_users(conn, rows(1), "r4", T1) == MergeCounts(0, 1, 0)
        row = conn.execute(select(stg_users).where(stg_users.c.user_id == uid(1))).one()
        assert (row.deleted, row.deleted_at, row.last_run_key) == (False, None, "r4")


def test_mark_missing_deleted_with_5000_ids(engine: Engine) -> None:
    with engine.begin() as conn:
        merge_users(conn, rows(*range(5_010)), "r1", T0)
    seen = {uid(i) for i in range(5_000)}
    with engine.begin() as conn:
        assert mark_missing_deleted(conn, seen, "r2", T1) == 10
        assert changed_user_ids(conn, "r2") == {uid(i) for i in range(5_000, 5_010)}
        assert mark_missing_deleted(conn, seen, "r3", T1) == 0
    with engine.begin() as conn:  # temp table is gone: a second call in a new transaction works
        assert mark_missing_deleted(conn, set(), "r4", T1) == 5_000


def test_scope_flips(engine: Engine) -> None:
    with engine.begin() as conn:
        merge_users(conn, rows(1, 2, 3), "r1", T0)
        assert set_scope(conn, None, "r2", T1) == 3
        assert set_scope(conn, None, "r3", T1) == 0
        assert set_scope(conn, {uid(1), uid(2), "not-staged"}, "r4", T1) == 1
        assert changed_user_ids(conn, "r4") == {uid(3)}
        assert set_scope(conn, {uid(3)}, "r5", T1) == 3
        scope = dict(conn.execute(select(stg_users.c.user_id, stg_users.c.in_scope)).all())
        assert scope == {uid(1): False, uid(2): False, uid(3): True}


# ------------------------------------------------------------------ partial merge (delta)


def test_partial_merge_keeps_stored_values(engine: Engine) -> None:
    with engine.begin() as conn:
        merge_users(conn, rows(1), "r1", T0)
        minimal = user_row_from_graph({"id": uid(1), "jobTitle": "CTO", "mobilePhone": None}, partial=True)
        assert "row_hash" not in minimal and "display_name" not in minimal
        assert merge_users(conn, [minimal], "r2", T1, partial=True) == MergeCounts(0, 1, 0)
        row = conn.execute(select(stg_users)).one()
        assert (row.job_title, row.display_name, row.business_phones) == ("CTO", "User 1", ["+1 425 555 0100"])
        # the combined row hashes like the equivalent full row: a full merge is then a no-op
        full = user_row_from_graph(graph_user(1, jobTitle="CTO"))
        assert row.row_hash == full["row_hash"]
        assert merge_users(conn, [full], "r3", T1) == MergeCounts(0, 0, 1)
        assert merge_users(conn, [minimal], "r4", T1, partial=True) == MergeCounts(0, 0, 1)
        # a new user from a partial row
        new = user_row_from_graph({"id": "new", "displayName": "N"}, partial=True)
        assert merge_users(conn, [new], "r5", T1, partial=True) == MergeCounts(1, 0, 0)
        with pytest.raises(ValueError, match="partial=True"):
            merge_users(conn, [minimal], "r6", T1)


# ------------------------------------------------------------------ scope details


def test_set_scope_details_records_why_and_protected_group_flips(engine: Engine) -> None:
    with engine.begin() as conn:
        merge_users(conn, rows(1, 2, 3, 4), "r1", T0)
        flipped = set_scope_details(conn, {uid(1), uid(2)}, {uid(1), uid(3)}, {uid(4)}, "r2", T1)
        got = {r.user_id: (r.scope_miss, r.protected_group, r.last_run_key) for r in conn.execute(
            select(stg_users.c.user_id, stg_users.c.scope_miss, stg_users.c.protected_group,
                   stg_users.c.last_run_key))}
    assert flipped == 4  # NULL -> true/false for everyone
    assert got == {uid(1): (None, False, "r2"), uid(2): ("filter", False, "r2"), uid(3): ("group", False, "r2"),
                   uid(4): ("group,filter", True, "r2")}
    with engine.begin() as conn:
        # unchanged membership writes nothing; no group or filter set clears the detail
        assert set_scope_details(conn, {uid(1), uid(2)}, {uid(1), uid(3)}, {uid(4)}, "r3", T1) == 0
        assert set_scope_details(conn, None, None, None, "r4", T1) == 4
        got = {r.user_id: (r.scope_miss, r.protected_group) for r in conn.execute(
            select(stg_users.c.user_id, stg_users.c.scope_miss, stg_users.c.protected_group))}
    assert set(got.values()) == {(None, None)}


def test_row_hash_is_the_sha256_of_the_sorted_compact_json_of_the_source_columns() -> None:
    """Unchanged for rows staged before: the hash users are compared by."""
    for item in (graph_user(1), graph_user(2, displayName="Zoë \"Q\" 李", businessPhones=[], mobilePhone=None)):
        row = user_row_from_graph(item)
        source = {col: row.get(col) for col in USER_SOURCE_COLUMNS}
        payload = json.dumps(source, sort_keys=True, separators=(",", ":"), ensure_ascii=False, default=str)
        assert row["row_hash"] == hashlib.sha256(payload.encode("utf-8")).hexdigest()
