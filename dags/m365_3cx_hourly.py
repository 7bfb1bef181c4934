"""
### Microsoft 365 -> 3CX: calendar-driven status, hourly refresh

Every hour (`M365_3CX_HOURLY_CRON`, default minute 5): reads each managed user's calendar
window (now - `presence.window_days_back` .. now + `presence.window_days_ahead`) with
`calendarView` and their automatic replies, in shards of `presence.shard_size` users
(one mapped task per shard), then computes the 3CX status every user should have *now*
and switches it where needed. Between hourly runs the delta DAG follows calendar delta
links and applies due switches every few minutes.

Statuses: automatic replies on -> "Out of office"; then `showAs` oof > busy >
workingElsewhere > tentative (mapping in `presence.mapping`); nothing -> "Available".
A status the user chose by hand is respected (`presence.mode = respect`). No event
subjects are stored. A late or backfilled run applies only what is due at the real
current time. Needs `presence.enabled = true` in the settings Variable.

Trigger form: `dry_run` (plan only), `full_resync`, `only_users`, `allow_mass_removal`
(the last two are not used by this DAG).
"""

from __future__ import annotations

import pendulum
from airflow.sdk import dag, task

from m365_3cx.airflow import tasks
from m365_3cx.airflow.alerts import SyncFailureNotifier
from m365_3cx.airflow.dag_defaults import HOURLY_CRON, SYNC_TIMEZONE, TAGS, default_args, sync_params
from m365_3cx.airflow.presence_group import presence_apply, presence_refresh
from m365_3cx.airflow.timetables import FreshCronTriggerTimetable, schedule_grace

MODE = "full"


@dag(
    dag_id="m365_3cx_hourly",
    schedule=FreshCronTriggerTimetable(HOURLY_CRON, timezone=SYNC_TIMEZONE, grace=schedule_grace()),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=pendulum.duration(minutes=55),
    default_args=default_args(pendulum.duration(minutes=20)),
    params=sync_params(),
    tags=[*TAGS, "presence", "hourly"],
    doc_md=__doc__,
    on_failure_callback=SyncFailureNotifier(),
)
def m365_3cx_hourly() -> None:
    @task
    def start_run() -> dict:
        return tasks.start_run(MODE)

    @task(trigger_rule="none_failed")
    def finish_run() -> dict:
        return tasks.finish_run(MODE, {"presence": "see sync_plan/sync_audit (object_type presence)"})

    start_run() >> presence_refresh(MODE) >> presence_apply() >> finish_run()


m365_3cx_hourly()
