"""Task bodies of the push DAG (``m365_3cx_push``) and the subscriptions DAG (``m365_3cx_subscriptions``)."""

from __future__ import annotations

import logging
from datetime import timedelta
from typing import Any

from airflow.sdk import get_current_context

from m365_3cx.airflow.hooks import GraphHook
from m365_3cx.airflow.runtime import (
    api_client,
    fatal_errors_fail_the_task,
    load_settings,
    run_info,
    staging_engine,
    utcnow,
)

log = logging.getLogger(__name__)

#: Done queue rows are kept this long (their notification ids count as replays meanwhile).
QUEUE_KEEP = timedelta(days=2)


def drain_notifications(mode: str) -> dict[str, int]:
    """Claim every queued notification for this run (what arrives from now on waits for the next run)."""
    from m365_3cx.staging import push

    run = run_info(get_current_context(), mode)
    with staging_engine() as engine, engine.begin() as conn:
        counts = push.claim(conn, run.run_key, utcnow())
    log.info("push run claims %d users, %d contacts and %d calendar notifications (%d mailboxes)",
             counts["users"], counts["contacts"], counts["events"], counts["mailboxes"])
    return counts


def finish_push_run(mode: str, counts: dict[str, Any]) -> dict[str, Any]:
    """Close the run in ``sync_runs`` and mark its claimed notifications done."""
    from m365_3cx.airflow import tasks
    from m365_3cx.staging import push

    result = tasks.finish_run(mode, counts)
    run = run_info(get_current_context(), mode)
    with staging_engine() as engine, engine.begin() as conn:
        result["notifications_done"] = push.complete(conn, run.run_key, utcnow())
    return result


def reconcile_subscriptions() -> dict[str, int]:
    """Create, renew, re-create and delete Graph subscriptions; purge old queue rows."""
    from m365_3cx.push.subscriptions import reconcile
    from m365_3cx.staging import push

    run = run_info(get_current_context(), "full")
    settings = load_settings()
    now = utcnow()
    with fatal_errors_fail_the_task(), staging_engine() as engine, api_client(GraphHook()) as graph:
        counts = reconcile(engine, graph, settings, run.run_key, now)
        with engine.begin() as conn:
            counts["purged"] = push.purge_done(conn, now - QUEUE_KEEP)
    return counts
