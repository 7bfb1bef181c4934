"""
### Microsoft 365 -> 3CX: staleness watchdog

Every few minutes (`M365_3CX_WATCHDOG_MINUTES`, default 10) reads `sync_runs` and alerts through
the failure-alert channel (`alerts` in the settings Variable) when a feature had no successful
run for longer than its limit: users and phonebook (`m365_3cx_full_sync`, `m365_3cx_delta`;
`alerts.stale_users_minutes`, `alerts.stale_phonebook_minutes`, default 90) and 3CX statuses
(`m365_3cx_hourly`, `m365_3cx_delta`; `alerts.stale_status_minutes`, default 180, only with
`presence.enabled`). Also fires when the sync DAGs never ran at all (paused, never scheduled).
One alert per staleness episode and one when it recovers; `0` turns a feature's check off.
Keep this DAG unpaused: it is the alarm for a sync that silently stopped.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import DeltaTriggerTimetable, dag, task

from m365_3cx.airflow import maintenance_tasks
from m365_3cx.airflow.alerts import SyncFailureNotifier
from m365_3cx.airflow.dag_defaults import TAGS, WATCHDOG_INTERVAL, default_args


@dag(
    dag_id="m365_3cx_watchdog",
    schedule=DeltaTriggerTimetable(WATCHDOG_INTERVAL),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=pendulum.duration(minutes=5),
    default_args=default_args(pendulum.duration(minutes=3)),
    tags=[*TAGS, "maintenance"],
    doc_md=__doc__,
    on_failure_callback=SyncFailureNotifier(),
)
def m365_3cx_watchdog() -> None:
    @task
    def check_staleness() -> dict:
        return maintenance_tasks.check_staleness()

    check_staleness()


m365_3cx_watchdog()
