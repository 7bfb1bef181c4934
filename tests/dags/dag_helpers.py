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
