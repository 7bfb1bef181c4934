"""
### Microsoft 365 -> 3CX: Graph change-notification subscriptions

Every `M365_3CX_SUBSCRIPTIONS_MINUTES` (default 15) and on demand: keeps exactly the Graph
subscriptions the settings call for — one `/users` subscription and, per in-scope mailbox, one
for its contacts (contacts feature on) and one for its calendar events (presence on). It creates
the missing ones, renews those expiring within `push.renew_margin_minutes` (or that Graph asked to
re-authorize), re-creates those Graph removed or let expire and queues a catch-up delta of their
scope (the push DAG runs it), and deletes those of users who left scope. With `push.enabled =
false` it deletes every subscription it made. Read-only towards 3CX.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import dag, task

from m365_3cx.airflow import push_tasks, tasks
from m365_3cx.airflow.alerts import SyncFailureNotifier
from m365_3cx.airflow.dag_defaults import GRAPH_POOL, SUBSCRIPTIONS_INTERVAL, TAGS, default_args

MODE = "full"


@dag(
    dag_id="m365_3cx_subscriptions",
    schedule=SUBSCRIPTIONS_INTERVAL,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=pendulum.duration(minutes=30),
    default_args=default_args(pendulum.duration(minutes=15)),
    tags=[*TAGS, "push"],
    doc_md=__doc__,
    on_failure_callback=SyncFailureNotifier(),
)
def m365_3cx_subscriptions() -> None:
    @task
    def start_run() -> dict:
        return tasks.start_run(MODE)

    @task(pool=GRAPH_POOL)
    def reconcile_subscriptions() -> dict:
        return push_tasks.reconcile_subscriptions()

    @task
    def finish_run(counts: dict) -> dict:
        return tasks.finish_run(MODE, {"subscriptions": counts})

    started = start_run()
    reconciled = reconcile_subscriptions()
    started >> reconciled
    finish_run(reconciled)


m365_3cx_subscriptions()
