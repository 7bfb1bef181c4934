"""Overlapping runs never duplicate: two real Airflow processes sync the same tenant at once.

Each process runs a DAG with ``dag.test()`` against the same emulators and the same PostgreSQL
staging database (each with its own copy of the Airflow metadata database, so the only thing
they share is what production runs share). The feature leases in staging
(:mod:`m365_3cx.staging.lease`) let one run at a time snapshot, plan and apply extensions,
the phonebook and statuses; the other waits for it. Both runs succeed, 3CX ends with exactly one
record per user and per contact, and a further full sync writes nothing (the state of one run).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from dag_helpers import assert_success, run_dag

pytestmark = [pytest.mark.dag, pytest.mark.postgres, pytest.mark.integration]

TAG = "m365-sync:"
HERE = Path(__file__).resolve().parent

SETTINGS = {
    "numbering": {"policy": "attribute", "attribute": "extensionAttribute1", "fallback_to_pool": True,
                  "pool_first": "300", "pool_last": "399"},
    "extensions": {"removal_policy": "disable", "default_region": "US"},
    "contacts": {"personal_contacts": "all", "exclude_category": "Private", "shard_size": 15},
    "guards": {"lease_wait_seconds": 900},  # the later run waits for the earlier one, never fails
}

_RUNNER = """
import sys
sys.path.insert(0, sys.argv[1])
from dag_helpers import load_dag
run = load_dag(sys.argv[2]).test()
print("STATE", run.state)
sys.exit(0 if str(run.state) in ("success", "DagRunState.SUCCESS") else 1)
"""


def _start(dag_id: str, home: Path) -> subprocess.Popen[str]:
    """``dag.test()`` of ``dag_id`` in a new process with its own copy of the metadata database.

    Its output goes to ``home/output.log``, not to a pipe: a pipe nobody reads yet fills up (64 KiB
    of task logs) and blocks the process mid-task, lease held, while the other run waits for it.
    """
    env = os.environ.copy()
    env["AIRFLOW__DATABASE__SQL_ALCHEMY_CONN"] = f"sqlite:///{home / 'airflow.db'}"
    with open(home / "output.log", "w", encoding="utf-8") as log:
        return subprocess.Popen([sys.executable, "-c", _RUNNER, str(HERE), dag_id], env=env, text=True,
                                stdout=log, stderr=subprocess.STDOUT)


def _ours(env: dict[str, Any]) -> list[dict[str, Any]]:
    contacts = env["pbx"].admin("GET", "state").json()["contacts"]
    return [c for c in contacts if str(c.get("Tag") or "").startswith(TAG)]


def _users(env: dict[str, Any]) -> list[dict[str, Any]]:
    return env["pbx"].admin("GET", "state").json()["users"]


def _writes(env: dict[str, Any]) -> int:
    counters = env["pbx"].admin("GET", "counters").json()
    return sum(n for key, n in counters["requests"].items()
               if key.split(" ", 1)[0] in ("POST", "PATCH", "DELETE") and "/xapi/" in key)


@pytest.mark.parametrize("dags", [("m365_3cx_full_sync", "m365_3cx_full_sync"),
                                  ("m365_3cx_full_sync", "m365_3cx_delta")], ids=["full+full", "full+delta"])
def test_runs_started_at_the_same_moment_end_with_one_record_each(
        dag_env: dict[str, Any], airflow_db: str, tmp_path: Path, dags: tuple[str, str]) -> None:
    users_before = {u["Number"] for u in _users(dag_env)}
    homes = []
    for i in range(2):
        home = tmp_path / f"airflow{i}"
        home.mkdir()
        shutil.copy(Path(airflow_db) / "airflow.db", home / "airflow.db")
        homes.append(home)
    started = time.monotonic()
    procs = [_start(dag_id, home) for dag_id, home in zip(dags, homes, strict=True)]
    for proc in procs:
        proc.wait(timeout=1500)
    elapsed = time.monotonic() - started
    outputs = [(home / "output.log").read_text(encoding="utf-8", errors="replace") for home in homes]
    for proc, out in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out[-6000:]

    # the leases serialised the features: somebody waited, and both runs' applies were audited
    with dag_env["engine"].connect() as conn:
        runs = conn.execute(sa.text("SELECT run_key, status FROM sync_runs ORDER BY started_at")).all()
        held = conn.execute(sa.text("SELECT feature, holder FROM feature_lease")).all()
        tags = [r[0] for r in conn.execute(sa.text("SELECT tag FROM tgt_phonebook WHERE state = 'active'"))]
    assert [status for _, status in runs] == ["success", "success"], runs
    assert all(holder is None for _, holder in held), held  # every lease was released

    ours = _ours(dag_env)
    per_tag = Counter(c["Tag"] for c in ours)
    assert per_tag and max(per_tag.values()) == 1, [t for t, n in per_tag.items() if n > 1]
    assert set(per_tag) == {str(t) for t in tags}
    users = _users(dag_env)
    new = [u for u in users if u["Number"] not in users_before]
    per_mail = Counter(str(u.get("EmailAddress") or "").lower() for u in new if u.get("EmailAddress"))
    assert new and max(per_mail.values()) == 1, [m for m, n in per_mail.items() if n > 1]
    assert len({u["Number"] for u in users}) == len(users)
    with dag_env["engine"].connect() as conn:
        mapped = [r[0] for r in conn.execute(sa.text(
            "SELECT threecx_id FROM extension_map WHERE status = 'active' AND threecx_id IS NOT NULL"))]
    assert sorted(mapped) == sorted(u["Id"] for u in new)  # one 3CX user per synced Entra user, no stray copy

    # the same state as one run: another full sync finds nothing to do
    dag_env["pbx"].admin("DELETE", "counters")
    assert_success(run_dag("m365_3cx_full_sync"))
    assert _writes(dag_env) == 0
    assert len(_ours(dag_env)) == len(ours) and len(_users(dag_env)) == len(users)
    print(f"\n{' + '.join(dags)} at once: {len(new)} extensions, {len(ours)} phonebook entries, "
          f"{elapsed:.0f}s for both runs")
