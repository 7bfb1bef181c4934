"""The housekeeping DAGs with real Airflow (``dag.test()``), staging on PostgreSQL, a local SMTP server.

Staleness: one e-mail per episode (also when the sync never ran), one on recovery, nothing in
between. Failure alerts carry the whole error. Retention: old history goes, maps stay.
"""

from __future__ import annotations

import datetime as dt
import json
from email.header import decode_header, make_header
from typing import Any

import pytest
import sqlalchemy as sa
from dag_helpers import assert_success, run_dag

from m365_3cx.staging.runs import add_audit, finish_run, start_run
from m365_3cx.staging.schema import create_schema, extension_map, sync_alert_state, sync_audit, sync_runs

pytestmark = [pytest.mark.dag, pytest.mark.postgres, pytest.mark.integration]

ALERTS = {"channel": "smtp", "smtp_conn_id": "smtp_alerts", "to": ["ops@example.com"]}
SETTINGS = {"alerts": {**ALERTS, "stale_users_minutes": 60, "stale_phonebook_minutes": 0}}


def _subjects(inbox: Any) -> list[str]:
    return [str(make_header(decode_header(m["Subject"]))) for m in inbox.messages]


def _age_watchdog_state(engine: sa.Engine, minutes: int) -> None:
    with engine.begin() as conn:
        first = conn.execute(sa.select(sync_alert_state.c.first_checked_at)).scalar_one()
        conn.execute(sa.update(sync_alert_state).values(first_checked_at=first - dt.timedelta(minutes=minutes)))


def test_watchdog_alerts_once_per_episode_and_on_recovery(dag_env: dict[str, Any], smtp_inbox: Any) -> None:
    engine = dag_env["engine"]
    assert_success(run_dag("m365_3cx_watchdog"))  # first look: nothing ran yet, age 0
    assert smtp_inbox.messages == []
    _age_watchdog_state(engine, 61)  # the sync DAGs never ran for over an hour
    assert_success(run_dag("m365_3cx_watchdog"))
    assert _subjects(smtp_inbox) == ["[m365-3cx-sync] no successful users -> extensions sync for 61 min"]
    assert "No successful run is recorded at all" in smtp_inbox.html(smtp_inbox.messages[0])
    assert_success(run_dag("m365_3cx_watchdog"))  # same episode: no second e-mail
    assert len(smtp_inbox.messages) == 1

    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        start_run(conn, "m365_3cx_delta/ok", "m365_3cx_delta", "ok", "delta", False, now)
        finish_run(conn, "m365_3cx_delta/ok", "success", {}, now)
    assert_success(run_dag("m365_3cx_watchdog"))
    assert _subjects(smtp_inbox)[1] == "[m365-3cx-sync] users -> extensions sync is running again"

    old = now - dt.timedelta(minutes=75)  # a new episode: the last success is too old
    with engine.begin() as conn:
        conn.execute(sa.update(sync_runs).values(started_at=old, finished_at=old))
    assert_success(run_dag("m365_3cx_watchdog"))
    assert _subjects(smtp_inbox)[2] == "[m365-3cx-sync] no successful users -> extensions sync for 75 min"
    assert len(smtp_inbox.messages) == 3  # phonebook off (0), status off (presence disabled)
    with engine.connect() as conn:
        features = {r[0] for r in conn.execute(sa.select(sync_alert_state.c.feature))}
    assert features == {"users"}


def test_failure_alert_lists_every_settings_problem(dag_env: dict[str, Any], smtp_inbox: Any,
                                                    monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_VAR_M365_3CX_SETTINGS", json.dumps({
        "alerts": ALERTS, "timezone": "Mars/Olympus", "numbering": {"pool_first": "2a0"},
        "guards": {"mass_removal_fraction": 3}, "scope": {"include_guests": "yes"},
    }))
    dag_run = run_dag("m365_3cx_full_sync")
    assert "failed" in str(dag_run.state).lower()
    assert len(smtp_inbox.messages) == 1
    body = smtp_inbox.html(smtp_inbox.messages[0])
    assert "invalid settings (4 problems):" in body
    for key in ("timezone", "numbering.pool_first", "guards.mass_removal_fraction", "scope.include_guests"):
        assert f"- {key}:" in body, key
    with dag_env["engine"].connect() as conn:
        last_error = conn.execute(sa.select(sync_runs.c.last_error)).scalar_one()
    assert last_error.startswith("extract_users: invalid settings (4 problems):") and last_error.count("\n  - ") == 4


def test_maintenance_purges_old_history_and_keeps_the_maps(dag_env: dict[str, Any],
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AIRFLOW_VAR_M365_3CX_SETTINGS", json.dumps({"retention": {"days": 30}}))
    engine = dag_env["engine"]
    create_schema(engine)
    now = dt.datetime.now(dt.UTC)
    with engine.begin() as conn:
        for key, at in (("m365_3cx_delta/old", now - dt.timedelta(days=31)), ("m365_3cx_delta/new", now)):
            start_run(conn, key, "m365_3cx_delta", key.split("/")[1], "delta", False, at)
            finish_run(conn, key, "success", {}, at)
            add_audit(conn, [{"run_key": key, "at": at, "action": "create", "object_type": "extension",
                              "object_key": "u", "result": "ok"}])
        conn.execute(sa.insert(extension_map), [{"user_id": "u", "number": "100", "status": "active",
                                                 "assigned_at": now - dt.timedelta(days=400), "adopted": False}])
    assert_success(run_dag("m365_3cx_maintenance"))
    with engine.connect() as conn:
        assert [r[0] for r in conn.execute(sa.select(sync_runs.c.run_key))] == ["m365_3cx_delta/new"]
        assert [r[0] for r in conn.execute(sa.select(sync_audit.c.run_key))] == ["m365_3cx_delta/new"]
        assert conn.execute(sa.select(sa.func.count()).select_from(extension_map)).scalar_one() == 1
