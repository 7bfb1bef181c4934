"""
### Microsoft 365 -> 3CX: event-driven delta (Graph change notifications)

Runs when the Graph change-notification receiver (the api-server plugin route
`/m365-3cx-graph/notifications`) queued notifications: an `AssetWatcher` on the staging queue
`push_queue` fires, and this DAG's one task, `sync_notified`,

* **drains** every queued notification (a burst coalesces into one run; what arrives meanwhile
  stays queued and starts the next run — `max_active_runs=1`);
* runs the **users** delta (one delta-link read; a users notification is why it finds changes)
  and plans/applies the changed users;
* runs the **contacts** delta and the **calendar** delta of just the notified mailboxes, then the
  phonebook plan/apply and the 3CX status due now.

One task, not the delta DAG's twenty: each task costs a process start and a scheduling round,
and a push is about seconds. The steps inside are the delta DAG's task bodies, with the same
leases, plan, audit, dry-run / writes-off gate and removal guard; removals over the guard are
left to the timed delta, whose approval task asks a human. The timed delta stays the safety net
(and catches up whatever a lost notification missed). Needs `push.enabled = true`; the
subscriptions are kept by `m365_3cx_subscriptions`.
"""

from __future__ import annotations

import pendulum
from airflow.sdk import dag, task

from m365_3cx.airflow import push_tasks
from m365_3cx.airflow.alerts import SyncFailureNotifier
from m365_3cx.airflow.dag_defaults import (
    GRAPH_CHANGES,
    STG_CONTACTS,
    STG_EVENTS,
    STG_USERS,
    TAGS,
    THREECX_EXTENSIONS,
    THREECX_PHONEBOOK,
    THREECX_POOL,
    THREECX_PRESENCE,
    default_args,
    sync_params,
)

MODE = "delta"


@dag(
    dag_id="m365_3cx_push",
    schedule=GRAPH_CHANGES,
    start_date=pendulum.datetime(2026, 1, 1, tz="UTC"),
    catchup=False,
    max_active_runs=1,
    dagrun_timeout=pendulum.duration(minutes=30),
    default_args=default_args(pendulum.duration(minutes=20)),
    params=sync_params(),
    tags=[*TAGS, "push"],
    doc_md=__doc__,
    on_failure_callback=SyncFailureNotifier(),
)
def m365_3cx_push() -> None:
    # threecx_api: the task writes to 3CX (one live token per API client), like every apply step
    @task(pool=THREECX_POOL,
          outlets=[STG_USERS, THREECX_EXTENSIONS, STG_CONTACTS, THREECX_PHONEBOOK, STG_EVENTS, THREECX_PRESENCE])
    def sync_notified() -> dict:
        return push_tasks.sync_notified(MODE)

    sync_notified()


m365_3cx_push()
