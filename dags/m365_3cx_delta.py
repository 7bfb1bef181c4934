"""
### Microsoft 365 -> 3CX: near-real-time delta

Every few minutes (`M365_3CX_DELTA_MINUTES`, default 5, down to 1):

* **users** — follows the Graph users delta link into staging and, when users
  changed, plans and applies just those users (when nothing changed, the users'
  3CX steps are skipped). An expired delta link falls back to a full extract (logged);
* **contacts** — per-mailbox contact delta links, sharded across workers, then the
  company phonebook plan and apply;
* **presence** — calendar delta for the window, then the 3CX status due *now* for
  every user (never a status from the past). It follows the users' 3CX steps, so a user
  whose extension this run created gets their status in the same run.

Trigger form: `dry_run`, `full_resync` (ignore delta links), `only_users` (provision on demand:
users, contacts and status of just these users, traced per step in `sync_trace`),
`allow_mass_removal`.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import dag, task

from m365_3cx.airflow import tasks
from m365_3cx.airflow.alerts import SyncFailureNotifier
from m365_3cx.airflow.approval import RemovalApprovalOperator
from m365_3cx.airflow.contacts_group import contacts_sync
from m365_3cx.airflow.dag_defaults import (
    DELTA_INTERVAL,
    GRAPH_POOL,
    STG_USERS,
    TAGS,
    TGT_EXTENSIONS,
    THREECX_EXTENSIONS,
    THREECX_POOL,
    default_args,
    sync_params,
)
from m365_3cx.airflow.operators import ThreeCXApplyOperator
from m365_3cx.airflow.presence_group import presence_apply, presence_refresh
from m365_3cx.airflow.timetables import FreshDeltaTriggerTimetable, schedule_grace

MODE = "delta"


@dag(
    dag_id="m365_3cx_delta",
    schedule=FreshDeltaTriggerTimetable(DELTA_INTERVAL, grace=schedule_grace()),
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=pendulum.duration(minutes=30),
    default_args=default_args(pendulum.duration(minutes=10)),
    params=sync_params(),
    tags=[*TAGS, "delta"],
    doc_md=__doc__,
    on_failure_callback=SyncFailureNotifier(),
)
def m365_3cx_delta() -> None:
    @task
    def start_run() -> dict:
        return tasks.start_run(MODE)

    @task(pool=GRAPH_POOL, outlets=[STG_USERS])
    def extract_users() -> dict:
        return tasks.extract_users(MODE)

    @task.short_circuit(ignore_downstream_trigger_rules=False)
    def users_changed() -> bool:
        return tasks.has_pending_users(MODE)

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

    @task(trigger_rule="none_failed")
    def finish_run(extracted: dict, applied: dict | None) -> dict:
        return tasks.finish_run(MODE, {"extract": extracted, "apply": applied})

    extracted = extract_users()
    (
        start_run()
        >> extracted
        >> users_changed()
        >> snapshot_threecx()
        >> transform_extensions()
        >> (planned := plan_extensions())
        >> approve_removals  # parks only when the removals exceed the guard; else skipped
        >> apply_extensions
    )
    planned >> apply_extensions
    finished = finish_run(extracted, apply_extensions.output)

    extracted >> contacts_sync(MODE) >> finished

    # The calendar shards are planned after apply_extensions, so the users whose extension this
    # run created are read (and get their status) in this run, not one delta run later.
    refresh = presence_refresh(MODE)
    extracted >> refresh >> presence_apply(incremental=True) >> finished
    apply_extensions >> refresh


m365_3cx_delta()
