from __future__ import annotations

import pandas as pd
import pytest
from sqlalchemy import Engine, select

from m365_3cx.staging.frames import load_frame
from m365_3cx.staging.runs import add_audit, add_notes, finish_run, load_plan, save_plan, set_plan_status, start_run
from m365_3cx.staging.schema import sync_runs
from tests.unit.m365_3cx.staging.staging_rows import T0, T1

# ------------------------------------------------------------------ runs, plan, audit, notes


def test_runs_plan_audit_notes_round_trip(engine: Engine) -> None:
    key = "m365_3cx_delta/manual__2025-03-01T12:00:00+00:00"
    with engine.begin() as conn:
        start_run(conn, key, "m365_3cx_delta", "manual__2025-03-01", "delta", False, T0)
        finish_run(conn, key, "failed", {"errors": 1}, T0)
        start_run(conn, key, "m365_3cx_delta", "manual__2025-03-01", "delta", True, T1)  # retry
        run = conn.execute(select(sync_runs)).one()
        assert (run.status, run.started_at, run.finished_at, run.counts, run.dry_run) == (
            "running",
            T1,
            None,
            None,
            True,
        )
        finish_run(conn, key, "success", {"created": 1, "updated": 1}, T1)
        assert conn.execute(select(sync_runs.c.counts)).scalar() == {"created": 1, "updated": 1}
        with pytest.raises(LookupError):
            finish_run(conn, "other", "success", None, T1)
        with pytest.raises(ValueError):
            finish_run(conn, key, "done", None, T1)
        with pytest.raises(ValueError):
            start_run(conn, key, "d", "r", "weekly", False, T1)

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
        assert save_plan(conn, key, [plan[0]]) == 1
        assert save_plan(conn, key, plan) == 2  # replaces
        assert set_plan_status(conn, key, 2, "applied") is True
        assert set_plan_status(conn, key, 3, "applied") is False
        with pytest.raises(ValueError):
            set_plan_status(conn, key, 1, "weird")
        frame = load_frame(conn, "sync_plan", {"run_key": key})
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
        assert add_audit(conn, audit) == 2
        ok = load_frame(conn, "sync_audit", where={"result": "ok"})
        assert ok["run_key"].tolist() == [key]
        au = load_frame(conn, "sync_audit")
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
        assert add_notes(conn, key, notes, step="transform", now=T1) == 1
        assert add_notes(conn, key, notes * 2, step="transform", now=T1) == 2  # replaced, not added
        assert add_notes(conn, key, notes, step="apply", now=T1) == 1
        nf = load_frame(conn, "sync_notes", {"run_key": key})
        assert sorted(nf["step"].tolist()) == ["apply", "transform", "transform"]
        assert nf["at"].iloc[0] == pd.Timestamp(T1)
        with pytest.raises(ValueError):
            add_notes(conn, key, [{**notes[0], "severity": "fatal"}], step="x")


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
        save_plan(conn, "k", [change, {**change, "object_key": "u2"}])
        set_plan_status(conn, "k", 1, "applied")
        plan = load_plan(conn, "k")
        assert [p["seq"] for p in plan] == [1, 2]
        assert plan[1]["changes"] == {"Mobile": [None, "+1"]} and plan[1]["object_key"] == "u2"
        assert [p["seq"] for p in load_plan(conn, "k", {"planned"})] == [2]
        assert load_plan(conn, "other") == []
