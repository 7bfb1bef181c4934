"""
### Microsoft 365 -> 3CX: event-driven delta (Graph change notifications)

Runs when the Graph change-notification receiver (the api-server plugin route
`/m365-3cx-graph/notifications`) queued notifications: an `AssetWatcher` on the staging queue
`push_queue` fires, and this DAG

* **drains** every queued notification at its start (a burst coalesces into one run; what
  arrives meanwhile stays queued and starts the next run — `max_active_runs=1`);
* runs the **users** delta (one delta-link read; a users notification is why it finds changes)
  and plans/applies the changed users;
* runs the **contacts** delta and the **calendar** delta of just the notified mailboxes, then the
  phonebook plan/apply and the 3CX status due now.

Same plan, approval guard, apply, audit and run exclusion as the timed delta, which stays the
safety net (and catches up whatever a lost notification missed). Needs `push.enabled = true`;
the subscriptions are kept by `m365_3cx_subscriptions`.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import dag, task

from m365_3cx.airflow import push_tasks, tasks
from m365_3cx.airflow.alerts import SyncFailureNotifier
from m365_3cx.airflow.approval import RemovalApprovalOperator
from m365_3cx.airflow.contacts_group import contacts_sync
from m365_3cx.airflow.dag_defaults import (
    GRAPH_CHANGES,
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

MODE = "delta"


@dag(
    dag_id="m365_3cx_push",
    schedule=GRAPH_CHANGES,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=pendulum.duration(minutes=30),
    default_args=default_args(pendulum.duration(minutes=10)),
    params=sync_params(),
    tags=[*TAGS, "push"],
    doc_md=__doc__,
    on_failure_callback=SyncFailureNotifier(),
)
def m365_3cx_push() -> None:
    @task
    def start_run() -> dict:
        return tasks.start_run(MODE)

    @task
    def drain_notifications() -> dict:
        return push_tasks.drain_notifications(MODE)

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
    def finish_run(drained: dict, extracted: dict, applied: dict | None) -> dict:
        return push_tasks.finish_push_run(MODE, {"notifications": drained, "extract": extracted, "apply": applied})

    drained = drain_notifications()
    extracted = extract_users()
    (
        start_run()
        >> drained
        >> extracted
        >> users_changed()
        >> snapshot_threecx()
        >> transform_extensions()
        >> (planned := plan_extensions())
        >> approve_removals
        >> apply_extensions
    )
    planned >> apply_extensions
    finished = finish_run(drained, extracted, apply_extensions.output)

    extracted >> contacts_sync(MODE, push=True) >> finished

    refresh = presence_refresh(MODE, push=True)
    extracted >> refresh >> presence_apply() >> finished
    apply_extensions >> refresh


m365_3cx_push()
