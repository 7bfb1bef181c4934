"""
### Microsoft 365 -> 3CX: go-live switch (writes to 3CX on or off)

A fresh install is **not live**: every run of the sync DAGs — scheduled, manual, backfill or
catch-up — is a dry run that stores and logs its plan and writes nothing to 3CX. Trigger this
DAG to change that:

* **Writes to 3CX enabled** ticked and `ENABLE WRITES` typed in **Confirm** -> live;
* unticked -> not live again (no confirmation needed).

Each change is recorded in staging (`sync_control`, history in `sync_control_log`) with the
Airflow user who triggered the run, the time and the note. Manual only, never scheduled.
A run already in progress keeps the decision it started with if it started dry.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import Param, dag, task

from m365_3cx.airflow import go_live
from m365_3cx.airflow.alerts import SyncFailureNotifier
from m365_3cx.airflow.dag_defaults import TAGS, default_args


@dag(
    dag_id="m365_3cx_go_live",
    schedule=None,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=pendulum.duration(minutes=10),
    default_args=default_args(pendulum.duration(minutes=5)),
    params={
        "writes_enabled": Param(
            False, type="boolean", title="Writes to 3CX enabled",
            description="Ticked: the sync writes to 3CX (live). Unticked: every run is a dry run.",
        ),
        "confirm": Param(
            "", type="string", title="Confirm",
            description=f"Type {go_live.CONFIRMATION} to turn writes on.",
        ),
        "note": Param("", type="string", title="Note", description="Why (kept in the go-live history)."),
    },
    tags=[*TAGS, "go-live"],
    doc_md=__doc__,
    on_failure_callback=SyncFailureNotifier(),
)
def m365_3cx_go_live() -> None:
    @task
    def set_go_live() -> dict:
        return go_live.set_go_live()

    set_go_live()


m365_3cx_go_live()
