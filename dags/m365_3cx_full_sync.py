"""
### Microsoft 365 -> 3CX: nightly full reconciliation

Extracts every Entra user from Microsoft Graph into staging, reads every 3CX
extension, computes the desired extensions, diffs them and applies the change set;
does the same for Outlook contacts and the company phonebook (sharded per batch of
users). Calendar statuses are refreshed by `m365_3cx_hourly`.
Repairs any drift (including edits made by hand in 3CX to managed fields) and
resets the users delta link. Safe to run at any time and to backfill: it is a
snapshot reconciliation, idempotent, and never replays old calendar statuses.

Trigger form: `dry_run` (plan only), `only_users`, `allow_mass_removal`.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import dag, task

from m365_3cx.airflow import tasks
from m365_3cx.airflow.alerts import SyncFailureNotifier
from m365_3cx.airflow.approval import RemovalApprovalOperator
from m365_3cx.airflow.contacts_group import contacts_sync
from m365_3cx.airflow.dag_defaults import (
    FULL_SYNC_CRON,
    GRAPH_POOL,
    STG_USERS,
    SYNC_TIMEZONE,
    TAGS,
    TGT_EXTENSIONS,
    THREECX_EXTENSIONS,
    THREECX_POOL,
    default_args,
    sync_params,
)
from m365_3cx.airflow.operators import ThreeCXApplyOperator
from m365_3cx.airflow.timetables import FreshCronTriggerTimetable, schedule_grace

MODE = "full"


@dag(
    dag_id="m365_3cx_full_sync",
    schedule=FreshCronTriggerTimetable(FULL_SYNC_CRON, timezone=SYNC_TIMEZONE, grace=schedule_grace()),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=pendulum.duration(hours=3),
    default_args=default_args(),
    params=sync_params(),
    tags=[*TAGS, "nightly"],
    doc_md=__doc__,
    on_failure_callback=SyncFailureNotifier(),
)
def m365_3cx_full_sync() -> None:
    @task
    def start_run() -> dict:
        return tasks.start_run(MODE)

    @task(pool=GRAPH_POOL, outlets=[STG_USERS])
    def extract_users() -> dict:
        return tasks.extract_users(MODE)

    @task(pool=THREECX_POOL)
    def snapshot_threecx() -> dict:
        return tasks.snapshot_threecx(MODE)

    @task(inlets=[STG_USERS], outlets=[TGT_EXTENSIONS])
    def transform_extensions() -> dict:
        return tasks.transform_extensions(MODE)

    @task
    def plan_extensions() -> dict:
        return tasks.plan_extensions(MODE)

    approve_removals = RemovalApprovalOperator(task_id="approve_extension_removals", object_type="extension",
                                               mode=MODE)
    apply_extensions = ThreeCXApplyOperator(
        task_id="apply_extensions", mode=MODE, pool=THREECX_POOL, trigger_rule="none_failed_min_one_success",
        inlets=[TGT_EXTENSIONS], outlets=[THREECX_EXTENSIONS],
    )

    @task
    def finish_run(extracted: dict, applied: dict | None) -> dict:
        return tasks.finish_run(MODE, {"extract": extracted, "apply": applied})

    extracted = extract_users()
    (
        start_run()
        >> extracted
        >> snapshot_threecx()
        >> transform_extensions()
        >> (planned := plan_extensions())
        >> approve_removals  # parks only when the removals exceed the guard; else skipped
        >> apply_extensions
    )
    planned >> apply_extensions
    finished = finish_run(extracted, apply_extensions.output)

    extracted >> contacts_sync(MODE) >> finished


m365_3cx_full_sync()
