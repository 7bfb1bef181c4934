"""The status summary reads runs, managed objects and notes from staging."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from m365_3cx.staging import repo
from m365_3cx.staging.db import make_engine
from m365_3cx.staging.schema import create_schema
from m365_3cx.status import sync_status


def test_sync_status_summarises_runs_and_managed_objects(tmp_path) -> None:
    engine = make_engine(f"sqlite:///{tmp_path / 'staging.db'}")
    create_schema(engine)
    t0 = datetime(2026, 11, 28, 2, 30, tzinfo=UTC)
    with engine.begin() as conn:
        for i, (status, error) in enumerate((("success", None), ("failed", "apply_extensions: guard stopped"))):
            key = f"m365_3cx_delta/run-{i}"
            repo.start_run(conn, key, "m365_3cx_delta", f"run-{i}", "delta", False, t0 + timedelta(minutes=5 * i))
            if status == "success":
                repo.finish_run(conn, key, "success", {"apply": {"updated": 2}}, t0 + timedelta(minutes=1))
            else:
                repo.record_run_error(conn, key, error, t0 + timedelta(minutes=6))
        repo.assign_numbers(conn, [{"user_id": "u1", "number": "201", "threecx_id": 7},
                                   {"user_id": "u2", "number": "202"}], t0)
        repo.add_notes(conn, "m365_3cx_delta/run-1", [{"object_key": "u2", "message": "bad number"}],
                       step="transform", now=t0)
    status = sync_status(engine)
    runs = status["dags"]["m365_3cx_delta"]
    assert [r["run_id"] for r in runs] == ["run-1", "run-0"]
    assert runs[0]["status"] == "failed" and runs[0]["last_error"] == "apply_extensions: guard stopped"
    assert runs[1]["counts"] == {"apply": {"updated": 2}}
    assert status["managed"]["extensions"] == 1
    assert status["latest_run_notes"] == {"warning": 1}
