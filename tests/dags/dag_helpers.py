"""Helpers of the DAG tests: wire Airflow to the emulators, run a DAG with real Airflow."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

DAGS = Path(__file__).resolve().parents[2] / "dags"


def connect_airflow(monkeypatch: pytest.MonkeyPatch, graph: dict[str, Any], pbx: dict[str, Any],
                    staging_url: str, settings: dict[str, Any]) -> None:
    """Set the three connections and the settings Variable as environment variables."""
    url = sa.engine.make_url(staging_url)
    monkeypatch.setenv("AIRFLOW_CONN_M365_GRAPH", json.dumps({
        "conn_type": "m365_graph", "login": graph["client_id"], "password": graph["client_secret"],
        "extra": {"tenant_id": graph["tenant_id"], "authority": graph["authority"].rsplit("/", 1)[0],
                  "base_url": graph["graph_url"], "ca_bundle": graph["ca_bundle"]},
    }))
    monkeypatch.setenv("AIRFLOW_CONN_THREECX_XAPI", json.dumps({
        "conn_type": "threecx_xapi", "host": pbx["base_url"], "login": pbx["client_id"],
        "password": pbx["client_secret"], "extra": {"ca_bundle": pbx["ca_bundle"]},
    }))
    monkeypatch.setenv("AIRFLOW_CONN_M365_3CX_STAGING", json.dumps({
        "conn_type": "postgres", "host": url.host, "port": url.port, "login": url.username, "schema": url.database,
    }))
    monkeypatch.setenv("AIRFLOW_VAR_M365_3CX_SETTINGS", json.dumps(settings))


def load_dag(dag_id: str) -> Any:
    """The DAG as the dag-processor would load it from its file."""
    from airflow.dag_processing.dagbag import DagBag

    bag = DagBag(dag_folder=str(DAGS / f"{dag_id}.py"))
    assert bag.import_errors == {}
    return bag.dags[dag_id]


def run_dag(dag_id: str, **conf: Any) -> Any:
    """Run a DAG in-process with real Airflow (``dag.test()``); return the DagRun."""
    return load_dag(dag_id).test(run_conf=conf or None)


def assert_success(dag_run: Any) -> None:
    assert str(dag_run.state) in ("success", "DagRunState.SUCCESS"), dag_run.state


class HitlResponder:
    """Answers the first Human-in-the-loop request of a DAG through Airflow's real REST API.

    Runs the API app in-process (``airflow.api_fastapi.app.create_app``, on the same metadata
    database as ``dag.test()``) in a thread that waits for a task in ``awaiting_input`` and sends
    ``PATCH /api/v2/dags/{dag}/dagRuns/{run}/taskInstances/{task}/{map_index}/hitlDetails`` as
    ``user`` — the call the "Required actions" page makes. ``answer=None`` never answers; instead
    the request is timed out by the scheduler's own sweep (``check_awaiting_input_timeouts``)
    after its deadline is moved to the past.
    """

    def __init__(self, monkeypatch: pytest.MonkeyPatch, tmp_path: Path, dag_id: str, answer: str | None,
                 user: str = "alice") -> None:
        import secrets

        self.dag_id, self.answer, self.user = dag_id, answer, user
        self.requests: list[dict[str, Any]] = []
        self.error: BaseException | None = None
        monkeypatch.setenv("AIRFLOW__API_AUTH__JWT_SECRET", secrets.token_urlsafe(48))
        monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_USERS", f"{user}:admin")
        monkeypatch.setenv("AIRFLOW__CORE__SIMPLE_AUTH_MANAGER_PASSWORDS_FILE", str(tmp_path / "passwords.json"))
        self._stop = False

    def __enter__(self) -> HitlResponder:
        import threading
        from datetime import UTC, datetime

        self._since = datetime.now(UTC).isoformat()  # only requests of runs started from now on
        self._thread = threading.Thread(target=self._run, name="hitl-responder", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop = True
        self._thread.join(timeout=30)

    def _run(self) -> None:
        import time

        try:
            from airflow.api_fastapi.app import create_app, get_auth_manager
            from airflow.api_fastapi.auth.managers.simple.user import SimpleAuthManagerUser
            from fastapi.testclient import TestClient

            client = TestClient(create_app())
            token = get_auth_manager().generate_jwt(SimpleAuthManagerUser(username=self.user, role="admin"))
            headers = {"Authorization": f"Bearer {token}"}
            deadline = time.monotonic() + 600
            seen: set[str] = set()
            while not self._stop and time.monotonic() < deadline:
                listed = client.get(f"/api/v2/dags/{self.dag_id}/dagRuns/~/hitlDetails",
                                    params={"state": "awaiting_input"}, headers=headers)
                listed.raise_for_status()
                pending = [d for d in listed.json()["hitl_details"]
                           if d["task_instance"]["state"] == "awaiting_input"
                           and (d["task_instance"].get("start_date") or "") >= self._since
                           and d["task_instance"]["id"] not in seen]
                for detail in pending:
                    ti = detail["task_instance"]
                    seen.add(ti["id"])
                    self.requests.append(detail)
                    if self.answer is None:
                        self._time_out(ti)
                        continue
                    path = (f"/api/v2/dags/{ti['dag_id']}/dagRuns/{ti['dag_run_id']}/taskInstances/"
                            f"{ti['task_id']}/{ti['map_index']}/hitlDetails")
                    answered = client.patch(path, headers=headers, json={"chosen_options": [self.answer],
                                                                         "params_input": {}})
                    answered.raise_for_status()
                time.sleep(1)
        except BaseException as exc:  # reported by the test; fail the parked task so dag.test() ends
            self.error = exc
            self._fail_parked()

    def _fail_parked(self) -> None:
        from airflow.models.taskinstance import TaskInstance
        from airflow.utils.session import create_session
        from airflow.utils.state import TaskInstanceState

        with create_session() as session:
            for row in session.query(TaskInstance).filter(TaskInstance.dag_id == self.dag_id,
                                                          TaskInstance.state == TaskInstanceState.AWAITING_INPUT):
                row.state = TaskInstanceState.FAILED

    @staticmethod
    def _time_out(ti: dict[str, Any]) -> None:
        """Move the request's deadline to the past and let the scheduler's real sweep resolve it."""
        import uuid
        from datetime import UTC, datetime, timedelta

        from airflow.jobs.job import Job
        from airflow.jobs.scheduler_job_runner import SchedulerJobRunner
        from airflow.models.taskinstance import TaskInstance
        from airflow.utils.session import create_session

        with create_session() as session:
            row = session.get(TaskInstance, uuid.UUID(ti["id"]))
            row.trigger_timeout = datetime.now(UTC) - timedelta(seconds=1)
        SchedulerJobRunner(job=Job()).check_awaiting_input_timeouts()
