from __future__ import annotations

import datetime as dt
from typing import Any

import numpy as np
import pandas as pd
import pytest
from sqlalchemy import Engine, select
from sqlalchemy.exc import IntegrityError

from m365_3cx.staging import repo
from m365_3cx.staging.schema import delta_state, extension_map, stg_users, sync_runs

T0 = dt.datetime(2025, 3, 1, 12, 0, tzinfo=dt.UTC)
T1 = T0 + dt.timedelta(hours=1)


def graph_user(i: int, **extra: Any) -> dict[str, Any]:
    return {
        "id": f"00000000-0000-4000-8000-{i:012d}",
        "userPrincipalName": f"user{i}@contoso.test",
        "displayName": f"User {i}",
        "givenName": "User",
        "surname": str(i),
        "mail": f"user{i}@contoso.test",
        "mobilePhone": None,
        "businessPhones": ["+1 425 555 0100"],
        "accountEnabled": True,
        "userType": "Member",
        "usageLocation": "US",
        "onPremisesExtensionAttributes": {"extensionAttribute1": "201"},
        **extra,
    }


def uid(i: int) -> str:
    return f"00000000-0000-4000-8000-{i:012d}"


def rows(*ids: int, **extra: Any) -> list[dict[str, Any]]:
    return [repo.user_row_from_graph(graph_user(i, **extra)) for i in ids]


# ------------------------------------------------------------------ mapping


def test_user_row_from_graph_tolerates_missing_keys() -> None:
    row = repo.user_row_from_graph({"id": "abc"})
    assert row["user_id"] == "abc"
    assert row["display_name"] is None and row["account_enabled"] is None
    assert row["business_phones"] == []
    assert set(row["extension_attributes"]) == {f"extensionAttribute{i}" for i in range(1, 16)}
    assert len(row["row_hash"]) == 64
    with pytest.raises(ValueError):
        repo.user_row_from_graph({"displayName": "no id"})


def test_row_hash_covers_source_fields_only() -> None:
    a = repo.user_row_from_graph(graph_user(1))
    assert (
        repo.user_row_from_graph({**graph_user(1), "@odata.etag": "x", "officeLocation": "B"})["row_hash"]
        == a["row_hash"]
    )
    assert repo.user_row_from_graph(graph_user(1, department="Sales"))["row_hash"] != a["row_hash"]
    assert "id" in repo.GRAPH_USER_SELECT and "onPremisesExtensionAttributes" in repo.GRAPH_USER_SELECT


# ------------------------------------------------------------------ upsert


def test_upsert_semantics(engine: Engine) -> None:
    with engine.begin() as conn:
        assert repo.upsert(conn, delta_state, [], ["resource"]) == 0
        repo.upsert(
            conn, delta_state, [{"resource": "a", "delta_link": "1", "updated_at": T0, "run_key": "r0"}], ["resource"]
        )
        repo.upsert(
            conn,
            delta_state,
            [
                {"resource": "a", "delta_link": "2", "updated_at": T1, "run_key": "r1"},
                {"resource": "b", "delta_link": "3", "updated_at": T1, "run_key": "r1"},
            ],
            ["resource"],
            ["delta_link"],
        )
        got = {r.resource: (r.delta_link, r.run_key, r.updated_at) for r in conn.execute(select(delta_state))}
        assert got == {"a": ("2", "r0", T0), "b": ("3", "r1", T1)}
        # DO NOTHING
        repo.upsert(conn, delta_state, [{"resource": "a", "delta_link": "9", "updated_at": T1}], ["resource"], [])
        assert conn.execute(select(delta_state.c.delta_link).where(delta_state.c.resource == "a")).scalar() == "2"
        with pytest.raises(ValueError, match="unknown column"):
            repo.upsert(conn, delta_state, [{"resource": "a", "nope": 1}], ["resource"])
        with pytest.raises(ValueError, match="same keys"):
            repo.upsert(conn, delta_state, [{"resource": "a"}, {"delta_link": "x"}], ["resource"])


def test_upsert_batches_many_rows(engine: Engine) -> None:
    data = [{"resource": f"r{i}", "delta_link": "x", "updated_at": T0} for i in range(1_234)]
    with engine.begin() as conn:
        assert repo.upsert(conn, delta_state, data, ["resource"]) == 1_234
        assert len(conn.execute(select(delta_state.c.resource)).all()) == 1_234


def test_naive_datetime_refused(engine: Engine) -> None:
    with engine.begin() as conn, pytest.raises(ValueError, match="naive"):
        repo.merge_users(conn, rows(1), "r", dt.datetime(2025, 1, 1))


# ------------------------------------------------------------------ users


def test_merge_is_idempotent_and_detects_changes(engine: Engine) -> None:
    with engine.begin() as conn:
        assert repo.merge_users(conn, rows(1, 2, 3), "r1", T0) == repo.MergeCounts(3, 0, 0)
    with engine.begin() as conn:
        assert repo.merge_users(conn, rows(1, 2, 3), "r2", T1) == repo.MergeCounts(0, 0, 3)
        assert repo.changed_user_ids(conn, "r2") == set()
        changed = [*rows(1, 2), *rows(3, jobTitle="Boss")]
        counts = repo.merge_users(conn, changed, "r3", T1)
        assert (counts.inserted, counts.updated, counts.unchanged, counts.written) == (0, 1, 2, 1)
        assert repo.changed_user_ids(conn, "r3") == {uid(3)}
        row = conn.execute(select(stg_users).where(stg_users.c.user_id == uid(3))).one()
        assert row.job_title == "Boss"
        assert row.first_seen_at == T0 and row.updated_at == T1
        assert row.in_scope is False and row.deleted is False


def test_merge_duplicates_last_wins(engine: Engine) -> None:
    with engine.begin() as conn:
        counts = repo.merge_users(conn, [*rows(1), *rows(1, department="IT")], "r1", T0)
        assert counts == repo.MergeCounts(1, 0, 0)
        assert conn.execute(select(stg_users.c.department)).scalar() == "IT"


def test_soft_delete_and_return(engine: Engine) -> None:
    with engine.begin() as conn:
        repo.merge_users(conn, rows(1, 2), "r1", T0)
        assert repo.mark_users_deleted(conn, [uid(1), "never-seen"], "r2", T1) == 1
        assert repo.mark_users_deleted(conn, [uid(1)], "r3", T1) == 0
        row = conn.execute(select(stg_users).where(stg_users.c.user_id == uid(1))).one()
        assert (row.deleted, row.deleted_at, row.last_run_key) == (True, T1, "r2")
        # the user comes back unchanged: rewritten because it was deleted
        assert repo.merge_users(conn, rows(1), "r4", T1) == repo.MergeCounts(0, 1, 0)
        row = conn.execute(select(stg_users).where(stg_users.c.user_id == uid(1))).one()
        assert (row.deleted, row.deleted_at, row.last_run_key) == (False, None, "r4")


def test_mark_missing_deleted_with_5000_ids(engine: Engine) -> None:
    with engine.begin() as conn:
        repo.merge_users(conn, rows(*range(5_010)), "r1", T0)
    seen = {uid(i) for i in range(5_000)}
    with engine.begin() as conn:
        assert repo.mark_missing_deleted(conn, seen, "r2", T1) == 10
        assert repo.changed_user_ids(conn, "r2") == {uid(i) for i in range(5_000, 5_010)}
        assert repo.mark_missing_deleted(conn, seen, "r3", T1) == 0
    with engine.begin() as conn:  # temp table is gone: a second call in a new transaction works
        assert repo.mark_missing_deleted(conn, set(), "r4", T1) == 5_000


def test_scope_flips(engine: Engine) -> None:
    with engine.begin() as conn:
        repo.merge_users(conn, rows(1, 2, 3), "r1", T0)
        assert repo.set_scope(conn, None, "r2", T1) == 3
        assert repo.set_scope(conn, None, "r3", T1) == 0
        assert repo.set_scope(conn, {uid(1), uid(2), "not-staged"}, "r4", T1) == 1
        assert repo.changed_user_ids(conn, "r4") == {uid(3)}
        assert repo.set_scope(conn, {uid(3)}, "r5", T1) == 3
        scope = dict(conn.execute(select(stg_users.c.user_id, stg_users.c.in_scope)).all())
        assert scope == {uid(1): False, uid(2): False, uid(3): True}


def test_load_frame_types(engine: Engine) -> None:
    with engine.begin() as conn:
        repo.merge_users(conn, [*rows(1), *rows(2, accountEnabled=None, businessPhones=None)], "r1", T0)
        repo.assign_numbers(conn, [{"user_id": uid(1), "number": "201"}], now=T0)
    with engine.connect() as conn:
        users = repo.load_frame(conn, "stg_users")
        one = repo.load_frame(conn, "stg_users", {"user_id": uid(2)})
        only_deleted = repo.load_frame(conn, "stg_users", stg_users.c.deleted.is_(True))
        emap = repo.load_frame(conn, "extension_map")
        empty = repo.load_frame(conn, "cur_extensions")
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
        repo.load_frame(conn, "nope")


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
        assert repo.replace_targets(conn, desired.to_dict("records"), "r1", T0) == 2
        assert repo.replace_targets(conn, [{**desired.iloc[0].to_dict(), "first_name": "Z"}], "r2", T1) == 1
        tgt = repo.load_frame(conn, "tgt_extensions").set_index("user_id")
        assert tgt.loc["u1", "first_name"] == "Z" and tgt.loc["u1", "run_key"] == "r2"
        assert tgt.loc["u2", "number"] is None and tgt.loc["u2", "enabled"] is False
        pbx = [
            {"threecx_id": 10, "number": "201", "first_name": "A", "enabled": True, "tags": ["m365"]},
            {"threecx_id": np.int64(11), "number": "999", "first_name": "X", "enabled": False, "tags": []},
        ]
        assert repo.replace_snapshot(conn, pbx, "r1", T0) == 2
        assert repo.replace_snapshot(conn, pbx[:1], "r2", T1) == 1
        cur = repo.load_frame(conn, "cur_extensions")
        assert cur["threecx_id"].tolist() == [10] and cur["tags"][0] == ["m365"]
        assert cur["run_key"][0] == "r2"


# ------------------------------------------------------------------ extension_map


def test_extension_map_lifecycle_and_quarantine(engine: Engine) -> None:
    with engine.begin() as conn:
        assert (
            repo.assign_numbers(
                conn, [{"user_id": "u1", "number": "201"}, {"user_id": "u2", "number": "202", "adopted": True}], now=T0
            )
            == 2
        )
        assert repo.set_threecx_id(conn, "u1", 7) is True
        assert repo.set_threecx_id(conn, "ghost", 8) is False
        # re-assigning the same number keeps threecx_id and assigned_at
        repo.assign_numbers(conn, [{"user_id": "u1", "number": "201"}], now=T1)
        row = conn.execute(select(extension_map).where(extension_map.c.user_id == "u1")).one()
        assert (row.threecx_id, row.assigned_at, row.status, row.adopted) == (7, T0, "active", False)
        # a number held by someone else is refused
        with pytest.raises(IntegrityError), conn.begin_nested():
            repo.assign_numbers(conn, [{"user_id": "u3", "number": "201"}], now=T1)

        assert repo.release_number(conn, "u1", T1) is True
        assert repo.release_number(conn, "u1", T1) is False
        row = conn.execute(select(extension_map).where(extension_map.c.user_id == "u1")).one()
        assert (row.status, row.released_at) == ("released", T1)
        # quarantined: still reserved for others
        with pytest.raises(IntegrityError), conn.begin_nested():
            repo.assign_numbers(conn, [{"user_id": "u3", "number": "201"}], now=T1)

        assert repo.purge_expired_quarantine(conn, 30, T1 + dt.timedelta(days=29)) == 0
        assert repo.purge_expired_quarantine(conn, 30, T1 + dt.timedelta(days=30)) == 1
        assert repo.assign_numbers(conn, [{"user_id": "u3", "number": "201"}], now=T1) == 1
        numbers = dict(conn.execute(select(extension_map.c.user_id, extension_map.c.number)).all())
        assert numbers == {"u2": "202", "u3": "201"}
        with pytest.raises(ValueError):
            repo.purge_expired_quarantine(conn, -1, T1)


def test_returning_user_gets_number_back(engine: Engine) -> None:
    with engine.begin() as conn:
        repo.assign_numbers(conn, [{"user_id": "u1", "number": "201", "threecx_id": 5}], now=T0)
        repo.release_number(conn, "u1", T0)
        repo.assign_numbers(conn, [{"user_id": "u1", "number": "201"}], now=T1)
        row = conn.execute(select(extension_map)).one()
        assert (row.status, row.released_at, row.assigned_at, row.threecx_id) == ("active", None, T1, 5)


# ------------------------------------------------------------------ runs, plan, audit, notes


def test_runs_plan_audit_notes_round_trip(engine: Engine) -> None:
    key = "m365_3cx_delta/manual__2025-03-01T12:00:00+00:00"
    with engine.begin() as conn:
        repo.start_run(conn, key, "m365_3cx_delta", "manual__2025-03-01", "delta", False, T0)
        repo.finish_run(conn, key, "failed", {"errors": 1}, T0)
        repo.start_run(conn, key, "m365_3cx_delta", "manual__2025-03-01", "delta", True, T1)  # retry
        run = conn.execute(select(sync_runs)).one()
        assert (run.status, run.started_at, run.finished_at, run.counts, run.dry_run) == (
            "running",
            T1,
            None,
            None,
            True,
        )
        repo.finish_run(conn, key, "success", {"created": 1, "updated": 1}, T1)
        assert conn.execute(select(sync_runs.c.counts)).scalar() == {"created": 1, "updated": 1}
        with pytest.raises(LookupError):
            repo.finish_run(conn, "other", "success", None, T1)
        with pytest.raises(ValueError):
            repo.finish_run(conn, key, "done", None, T1)
        with pytest.raises(ValueError):
            repo.start_run(conn, key, "d", "r", "weekly", False, T1)

        plan = [
            {
                "action": "create",
                "object_type": "extension",
                "object_key": "u1",
                "number": "201",
                "threecx_id": None,
                "changes": {"FirstName": (None, "Ann")},
                "reason": "new user",
                "status": "planned",
            },
            {
                "action": "update",
                "object_key": "u2",
                "number": "202",
                "threecx_id": 9,
                "changes": {"Mobile": ("", "+14255550100")},
                "reason": "fields changed",
            },
        ]
        assert repo.save_plan(conn, key, [plan[0]]) == 1
        assert repo.save_plan(conn, key, plan) == 2  # replaces
        assert repo.set_plan_status(conn, key, 2, "applied") is True
        assert repo.set_plan_status(conn, key, 3, "applied") is False
        with pytest.raises(ValueError):
            repo.set_plan_status(conn, key, 1, "weird")
        frame = repo.load_frame(conn, "sync_plan", {"run_key": key})
        assert frame["seq"].tolist() == [1, 2]
        assert frame["changes"][0] == {"FirstName": [None, "Ann"]}
        assert frame["status"].tolist() == ["planned", "applied"]
        assert frame["object_type"].tolist() == ["extension", "extension"]

        audit = [
            {
                "run_key": key,
                "at": T1,
                "action": "update",
                "object_type": "extension",
                "object_key": "u2",
                "number": "202",
                "threecx_id": 9,
                "field": "Mobile",
                "before": "",
                "after": "+14255550100",
                "result": "ok",
                "error": None,
            },
            {
                "run_key": key,
                "at": T1,
                "action": "disable",
                "object_type": "extension",
                "object_key": "u3",
                "number": "203",
                "threecx_id": 10,
                "field": "Enabled",
                "before": True,
                "after": False,
                "result": "failed",
                "error": "3cx: validation status=400",
            },
        ]
        assert repo.add_audit(conn, audit) == 2
        ok = repo.load_frame(conn, "sync_audit", where={"result": "ok"})
        assert ok["run_key"].tolist() == [key]
        au = repo.load_frame(conn, "sync_audit")
        assert au["before"].tolist() == ["", "true"] and au["after"].tolist() == ["+14255550100", "false"]

        notes = [
            {
                "object_type": "extension",
                "object_key": "u4",
                "record_label": "u4@contoso.test",
                "field": "mobilePhone",
                "severity": "warning",
                "message": "unparseable phone number",
            },
        ]
        assert repo.add_notes(conn, key, notes, step="transform", now=T1) == 1
        assert repo.add_notes(conn, key, notes * 2, step="transform", now=T1) == 2  # replaced, not added
        assert repo.add_notes(conn, key, notes, step="apply", now=T1) == 1
        nf = repo.load_frame(conn, "sync_notes", {"run_key": key})
        assert sorted(nf["step"].tolist()) == ["apply", "transform", "transform"]
        assert nf["at"].iloc[0] == pd.Timestamp(T1)
        with pytest.raises(ValueError):
            repo.add_notes(conn, key, [{**notes[0], "severity": "fatal"}], step="x")


# ------------------------------------------------------------------ additions used by pipeline/users.py


def test_partial_merge_keeps_stored_values(engine: Engine) -> None:
    with engine.begin() as conn:
        repo.merge_users(conn, rows(1), "r1", T0)
        minimal = repo.user_row_from_graph({"id": uid(1), "jobTitle": "CTO", "mobilePhone": None}, partial=True)
        assert "row_hash" not in minimal and "display_name" not in minimal
        assert repo.merge_users(conn, [minimal], "r2", T1, partial=True) == repo.MergeCounts(0, 1, 0)
        row = conn.execute(select(stg_users)).one()
        assert (row.job_title, row.display_name, row.business_phones) == ("CTO", "User 1", ["+1 425 555 0100"])
        # the combined row hashes like the equivalent full row: a full merge is then a no-op
        full = repo.user_row_from_graph(graph_user(1, jobTitle="CTO"))
        assert row.row_hash == full["row_hash"]
        assert repo.merge_users(conn, [full], "r3", T1) == repo.MergeCounts(0, 0, 1)
        assert repo.merge_users(conn, [minimal], "r4", T1, partial=True) == repo.MergeCounts(0, 0, 1)
        # a new user from a partial row
        new = repo.user_row_from_graph({"id": "new", "displayName": "N"}, partial=True)
        assert repo.merge_users(conn, [new], "r5", T1, partial=True) == repo.MergeCounts(1, 0, 0)
        with pytest.raises(ValueError, match="partial=True"):
            repo.merge_users(conn, [minimal], "r6", T1)


def test_pbx_row_from_xapi_and_managed_count(engine: Engine) -> None:
    row = repo.pbx_row_from_xapi(
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
        repo.pbx_row_from_xapi({"Number": "1"})
    with engine.begin() as conn:
        repo.replace_snapshot(conn, [row], "r1", T0)
        assert repo.load_frame(conn, "extension_map", where={"status": "active"}).empty
        repo.assign_numbers(conn, [{"user_id": "u1", "number": "201"}, {"user_id": "u2", "number": "202"}], now=T0)
        repo.release_number(conn, "u2", T0)
        assert repo.load_frame(conn, "extension_map", where={"status": "active"})["user_id"].tolist() == ["u1"]


def test_load_plan(engine: Engine) -> None:
    change = {
        "action": "update",
        "object_key": "u1",
        "number": "201",
        "threecx_id": 3,
        "changes": {"Mobile": [None, "+1"]},
        "reason": "fields changed",
    }
    with engine.begin() as conn:
        repo.save_plan(conn, "k", [change, {**change, "object_key": "u2"}])
        repo.set_plan_status(conn, "k", 1, "applied")
        plan = repo.load_plan(conn, "k")
        assert [p["seq"] for p in plan] == [1, 2]
        assert plan[1]["changes"] == {"Mobile": [None, "+1"]} and plan[1]["object_key"] == "u2"
        assert [p["seq"] for p in repo.load_plan(conn, "k", {"planned"})] == [2]
        assert repo.load_plan(conn, "other") == []


# ------------------------------------------------------------------ scope details and the removal clock


def test_set_scope_details_records_why_and_protected_group_flips(engine: Engine) -> None:
    with engine.begin() as conn:
        repo.merge_users(conn, rows(1, 2, 3, 4), "r1", T0)
        flipped = repo.set_scope_details(conn, {uid(1), uid(2)}, {uid(1), uid(3)}, {uid(4)}, "r2", T1)
        got = {r.user_id: (r.scope_miss, r.protected_group, r.last_run_key) for r in conn.execute(
            select(stg_users.c.user_id, stg_users.c.scope_miss, stg_users.c.protected_group,
                   stg_users.c.last_run_key))}
    assert flipped == 4  # NULL -> true/false for everyone
    assert got == {uid(1): (None, False, "r2"), uid(2): ("filter", False, "r2"), uid(3): ("group", False, "r2"),
                   uid(4): ("group,filter", True, "r2")}
    with engine.begin() as conn:
        # unchanged membership writes nothing; no group or filter set clears the detail
        assert repo.set_scope_details(conn, {uid(1), uid(2)}, {uid(1), uid(3)}, {uid(4)}, "r3", T1) == 0
        assert repo.set_scope_details(conn, None, None, None, "r4", T1) == 4
        got = {r.user_id: (r.scope_miss, r.protected_group) for r in conn.execute(
            select(stg_users.c.user_id, stg_users.c.scope_miss, stg_users.c.protected_group))}
    assert set(got.values()) == {(None, None)}


def _clock_setup(conn: Any) -> None:
    repo.merge_users(conn, rows(1, 2, 3, 4), "r1", T0)
    repo.assign_numbers(conn, [{"user_id": uid(i), "number": str(200 + i), "threecx_id": i} for i in (1, 2, 3, 4)],
                        T0)
    repo.replace_snapshot(conn, [{"threecx_id": i, "number": str(200 + i), "enabled": i != 1} for i in (1, 2, 3, 4)]
                          + [{"threecx_id": 9, "number": "209", "enabled": False}], "r1", T0)
    repo.replace_targets(conn, [
        {"user_id": uid(1), "number": "201", "state": "removed", "removal_reason": "deleted", "protection": None},
        {"user_id": uid(2), "number": "202", "state": "removed", "removal_reason": "deleted", "protection": None},
        {"user_id": uid(3), "number": "203", "state": "active", "removal_reason": None, "protection": None},
        {"user_id": uid(4), "number": "204", "state": "removed", "removal_reason": None, "protection": "opted_out"},
    ], "r1", T0)


def _since(conn: Any) -> dict[str, Any]:
    return dict(conn.execute(select(extension_map.c.user_id, extension_map.c.removal_since)).all())


def test_removal_clock_starts_on_disable_and_stops_on_return(engine: Engine) -> None:
    with engine.begin() as conn:
        _clock_setup(conn)
        # user 1: removed, extension already disabled -> clock starts; user 2 still enabled in 3CX,
        # user 3 active, user 4 protected -> no clock
        assert repo.sync_removal_clock(conn, T1) == (1, 0)
        assert _since(conn) == {uid(1): T1, uid(2): None, uid(3): None, uid(4): None}
        assert repo.start_removal_clock(conn, [uid(1), uid(2)], T1 + dt.timedelta(hours=1)) == 1  # 1 is kept
        assert repo.grace_expired_user_ids(conn, 30, T1 + dt.timedelta(days=30)) == {uid(1)}
        assert repo.grace_expired_user_ids(conn, 30, T1 + dt.timedelta(days=30, hours=1)) == {uid(1), uid(2)}
        assert repo.grace_expired_user_ids(conn, 30, T1 + dt.timedelta(days=29)) == set()
        # since: only periods that ran out after the last applied run started
        later = T1 + dt.timedelta(days=31)
        assert repo.grace_expired_user_ids(conn, 30, later, since=T1 + dt.timedelta(days=30, minutes=30)) \
            == {uid(2)}
        assert repo.stop_removal_clock(conn, [uid(2)]) == 1
        conn.execute(extension_map.update().values(removal_since=T1))
        # user 2's extension is enabled in 3CX, user 3 active, user 4 protected -> cleared; user 1 stays
        assert repo.sync_removal_clock(conn, T1) == (0, 3)
        assert _since(conn)[uid(1)] == T1


def test_reactivate_numbers_brings_a_released_mapping_back(engine: Engine) -> None:
    with engine.begin() as conn:
        _clock_setup(conn)
        repo.release_numbers(conn, [uid(1)], T1)
        assert repo.reactivate_numbers(conn, [uid(1), uid(2)]) == 1
        row = conn.execute(select(extension_map).where(extension_map.c.user_id == uid(1))).mappings().one()
    assert (row["status"], row["released_at"], row["number"]) == ("active", None, "201")
