"""A fresh install is not live: no DAG path writes to 3CX until an operator turns writes on, audited.

Real Airflow (``dag.test()``), both emulators over HTTPS, staging in PostgreSQL, starting from a
fresh install (``not_live``: no go-live switch set). The 3CX emulator's write counters are the
judge. The scheduled-tick, backfill and catch-up paths with a real scheduler are in
``tests/distributed``; ``test_schedule.py`` shows that unpausing schedules no stale tick.
"""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from dag_helpers import assert_success, run_dag

pytestmark = [pytest.mark.dag, pytest.mark.postgres, pytest.mark.integration, pytest.mark.not_live]

SETTINGS = {
    "numbering": {"policy": "attribute", "attribute": "extensionAttribute1", "fallback_to_pool": True,
                  "pool_first": "300", "pool_last": "399"},
    "extensions": {"removal_policy": "disable", "default_region": "US"},
    "presence": {"enabled": True},
}


def pbx_writes(env: dict[str, Any]) -> int:
    counters = env["pbx"].admin("GET", "counters").json()
    return sum(n for key, n in counters["requests"].items()
               if key.split(" ", 1)[0] in ("POST", "PATCH", "DELETE") and "/xapi/" in key)


def runs(env: dict[str, Any]) -> dict[str, dict[str, Any]]:
    with env["engine"].connect() as conn:
        rows = conn.execute(sa.text("SELECT run_id, dag_id, dry_run, dry_reason FROM sync_runs")).mappings().all()
    return {r["run_id"]: dict(r) for r in rows}


def control(env: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    with env["engine"].connect() as conn:
        state = [dict(r) for r in conn.execute(sa.text("SELECT * FROM sync_control")).mappings()]
        log = [dict(r) for r in conn.execute(sa.text("SELECT * FROM sync_control_log ORDER BY id")).mappings()]
    return state, log


def test_no_run_writes_until_go_live_and_going_live_is_audited(dag_env: dict[str, Any]) -> None:
    env = dag_env
    # every kind of run a person can start, with every param that could ask for writes
    dry = [run_dag("m365_3cx_full_sync"), run_dag("m365_3cx_full_sync", dry_run=False, allow_mass_removal=True),
           run_dag("m365_3cx_delta", full_resync=True), run_dag("m365_3cx_hourly"),
           run_dag("m365_3cx_full_sync", dry_run=True)]
    for run in dry:
        assert_success(run)
    assert pbx_writes(env) == 0, "a run wrote to 3CX although writes were never turned on"
    stored = runs(env)
    assert [stored[r.run_id]["dry_reason"] for r in dry] == [
        "writes_off", "writes_off", "writes_off", "writes_off", "requested,writes_off"]
    assert all(stored[r.run_id]["dry_run"] is True for r in dry)
    with env["engine"].connect() as conn:
        planned = conn.execute(sa.text("SELECT count(*) FROM sync_plan WHERE run_key = :k AND action = 'create'"),
                               {"k": f"m365_3cx_full_sync/{dry[0].run_id}"}).scalar_one()
        assigned = conn.execute(sa.text("SELECT count(*) FROM extension_map")).scalar_one()
    assert planned > 0, "the dry run stored no plan"
    assert assigned == 0, "a dry run recorded extension numbers"

    # going live needs the typed confirmation: without it the switch stays off
    refused = run_dag("m365_3cx_go_live", writes_enabled=True, confirm="yes please")
    assert "failed" in str(refused.state).lower()
    assert control(env) == ([], [])

    assert_success(run_dag("m365_3cx_go_live", writes_enabled=True, confirm="ENABLE WRITES", note="pilot"))
    state, log = control(env)
    assert [(s["enabled"], s["changed_by"], s["note"]) for s in state] == [(True, "dag_test", "pilot")]
    assert [(e["enabled"], e["previous"], e["changed_by"]) for e in log] == [(True, None, "dag_test")]
    assert state[0]["changed_at"] is not None and state[0]["run_key"].startswith("m365_3cx_go_live/")

    live = run_dag("m365_3cx_full_sync")
    assert_success(live)
    assert pbx_writes(env) > 0, "writes on, but the full sync wrote nothing"
    assert runs(env)[live.run_id]["dry_run"] is False and runs(env)[live.run_id]["dry_reason"] is None

    # and off again: no confirmation needed, audited, and the next run is dry
    assert_success(run_dag("m365_3cx_go_live", writes_enabled=False, note="rollback"))
    env["graph"].admin("PATCH", f"users/{_some_user(env)}", json={"surname": "Changed while not live"})
    env["pbx"].admin("DELETE", "counters")
    again = run_dag("m365_3cx_full_sync")
    assert_success(again)
    assert pbx_writes(env) == 0
    assert runs(env)[again.run_id]["dry_reason"] == "writes_off"
    assert [(e["enabled"], e["previous"], e["note"]) for e in control(env)[1]] == [
        (True, None, "pilot"), (False, True, "rollback")]


def _some_user(env: dict[str, Any]) -> str:
    users = env["graph"].admin("GET", "state").json()["users"]
    return next(u["id"] for u in users if u.get("accountEnabled") and u.get("mail") and not u.get("deleted"))
