"""Retention: old history goes in bulk, maps and recent history stay (SQLite and PostgreSQL)."""

from __future__ import annotations

import datetime as dt

import sqlalchemy as sa
from sqlalchemy import Engine

from m365_3cx.staging.retention import purge_history
from m365_3cx.staging.runs import add_audit, add_notes, finish_run, save_plan, start_run
from m365_3cx.staging.schema import (
    extension_map,
    phonebook_map,
    presence_state,
    sync_audit,
    sync_notes,
    sync_plan,
    sync_runs,
    sync_trace,
)
from m365_3cx.staging.trace import replace_trace, trace_rows

NOW = dt.datetime(2026, 12, 1, 12, 0, tzinfo=dt.UTC)
OLD = NOW - dt.timedelta(days=200)
RECENT = NOW - dt.timedelta(days=10)


def _run(conn: sa.Connection, key: str, at: dt.datetime, status: str = "success") -> None:
    dag_id, run_id = key.split("/", 1)
    start_run(conn, key, dag_id, run_id, "full", False, at)
    if status != "running":
        finish_run(conn, key, status, {}, at)
    plan = [{"run_key": key, "seq": 1, "action": "update", "object_type": "extension", "object_key": "u1",
             "number": "100", "changes": {"Mobile": ["a", "b"]}, "reason": "fields changed"}]
    save_plan(conn, key, plan)
    save_plan(conn, f"{key}#contacts", [{**plan[0], "run_key": f"{key}#contacts", "object_type": "contact"}])
    add_audit(conn, [{"run_key": key, "at": at, "action": "update", "object_type": "extension",
                      "object_key": "u1", "number": "100", "field": "Mobile", "before": "a", "after": "b",
                      "result": "ok"}])
    add_notes(conn, key, [{"object_type": "extension", "object_key": "u1", "severity": "warning",
                           "message": "m", "at": at}], step="transform", now=at)
    replace_trace(conn, key, "read", trace_rows(key, "read", [{"user_id": "u1", "upn": "a@x", "outcome": "found"}],
                                                at))


def _count(conn: sa.Connection, table: sa.Table) -> int:
    return conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one()


def test_purges_old_history_only_and_never_the_maps(engine: Engine) -> None:
    with engine.begin() as conn:
        _run(conn, "m365_3cx_delta/old", OLD)
        _run(conn, "m365_3cx_delta/old_failed", OLD, "failed")
        _run(conn, "m365_3cx_delta/recent", RECENT)
        _run(conn, "m365_3cx_delta/stuck", OLD, "running")
        conn.execute(sa.insert(extension_map), [{"user_id": "u1", "number": "100", "threecx_id": 1,
                                                 "status": "active", "assigned_at": OLD, "adopted": False}])
        conn.execute(sa.insert(phonebook_map), [{"contact_key": "k", "tag": "m365-sync:k", "threecx_id": 5,
                                                 "status": "active", "created_at": OLD, "updated_at": OLD}])
        conn.execute(sa.insert(presence_state), [{"user_id": "u1", "threecx_id": 1, "profile": "Away",
                                                  "via": "set", "set_at": OLD}])
    with engine.begin() as conn:
        counts = purge_history(conn, NOW - dt.timedelta(days=180))
    assert counts == {"sync_plan": 4, "sync_audit": 3, "sync_notes": 3, "sync_trace": 3, "sync_runs": 2}
    with engine.connect() as conn:
        runs = {r[0] for r in conn.execute(sa.select(sync_runs.c.run_key))}
        plans = {r[0] for r in conn.execute(sa.select(sync_plan.c.run_key))}
        assert runs == {"m365_3cx_delta/recent", "m365_3cx_delta/stuck"}
        assert plans == {"m365_3cx_delta/recent", "m365_3cx_delta/recent#contacts",
                         "m365_3cx_delta/stuck", "m365_3cx_delta/stuck#contacts"}
        assert _count(conn, sync_audit) == _count(conn, sync_notes) == _count(conn, sync_trace) == 1
        assert (_count(conn, extension_map), _count(conn, phonebook_map), _count(conn, presence_state)) == (1, 1, 1)
    with engine.begin() as conn:  # idempotent
        assert purge_history(conn, NOW - dt.timedelta(days=180)) == dict.fromkeys(
            ("sync_plan", "sync_audit", "sync_notes", "sync_trace", "sync_runs"), 0)


def test_purge_uses_bulk_statements(engine: Engine) -> None:
    with engine.begin() as conn:
        for i in range(60):
            _run(conn, f"m365_3cx_delta/old{i}", OLD)
    statements: list[str] = []

    def count(conn: object, cursor: object, statement: str, *args: object) -> None:
        statements.append(statement)

    sa.event.listen(engine, "before_cursor_execute", count)
    try:
        with engine.begin() as conn:
            counts = purge_history(conn, NOW - dt.timedelta(days=180))
    finally:
        sa.event.remove(engine, "before_cursor_execute", count)
    assert counts["sync_runs"] == 60 and counts["sync_plan"] == 120
    assert len([s for s in statements if s.lstrip().upper().startswith("DELETE")]) == 5


def test_naive_cutoff_is_refused(engine: Engine) -> None:
    import pytest

    with engine.begin() as conn, pytest.raises(ValueError, match="aware"):
        purge_history(conn, dt.datetime(2026, 1, 1))
