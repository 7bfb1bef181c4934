"""
### Microsoft 365 -> 3CX: daily staging maintenance

Once a day (`M365_3CX_MAINTENANCE_CRON`, default 03:45 in `M365_3CX_TIMEZONE`) deletes the
history older than `retention.days` (default 180) from staging: `sync_runs` with their
`sync_plan` rows, `sync_audit`, `sync_notes` and `sync_trace` — one bulk delete per table.
`extension_map`, `phonebook_map`, `presence_state` and the delta links are never touched.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import CronTriggerTimetable, dag, task

from m365_3cx.airflow import maintenance_tasks
from m365_3cx.airflow.alerts import SyncFailureNotifier
from m365_3cx.airflow.dag_defaults import MAINTENANCE_CRON, SYNC_TIMEZONE, TAGS, default_args


@dag(
    dag_id="m365_3cx_maintenance",
    schedule=CronTriggerTimetable(MAINTENANCE_CRON, timezone=SYNC_TIMEZONE),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=pendulum.duration(hours=1),
    default_args=default_args(pendulum.duration(minutes=30)),
    tags=[*TAGS, "maintenance"],
    doc_md=__doc__,
    on_failure_callback=SyncFailureNotifier(),
)
def m365_3cx_maintenance() -> None:
    @task
    def purge_history() -> dict:
        return maintenance_tasks.purge_history()

    purge_history()


m365_3cx_maintenance()
