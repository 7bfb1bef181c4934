"""Task bodies of the push DAG (``m365_3cx_push``) and the subscriptions DAG (``m365_3cx_subscriptions``).

The push DAG is one task, :func:`sync_notified`: it runs the delta DAG's task bodies one after the
other in one process, because on a push every second counts and each Airflow task costs a process
start and a scheduling round. The steps, leases, plan, audit, dry-run/writes-off gate and
removal guard are the delta DAG's; removals over the guard are left to the timed delta, whose
approval task asks a human (a push run never parks).
"""

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


def _removals_need_approval(object_type: str, mode: str) -> bool:
    """True (and the feature's lease freed) when the run's planned removals exceed the guard."""
    from m365_3cx.airflow.runtime import FEATURE_OF
    from m365_3cx.pipeline.contacts import review_phonebook_removals
    from m365_3cx.pipeline.users import review_user_removals
    from m365_3cx.staging import lease

    context = get_current_context()
    if (context.get("params") or {}).get("allow_mass_removal"):
        return False
    run = run_info(context, mode)
    settings = load_settings()
    review_of = review_user_removals if object_type == "extension" else review_phonebook_removals
    with staging_engine() as engine:
        review = review_of(engine, settings, run.run_key)
        if not review.tripped:
            return False
        lease.release(engine, FEATURE_OF[object_type], run.run_key, wrote=False)
    log.warning("push run: %d of %d %s removals exceed the guard (%d); nothing of this plan is applied here, "
                "the next timed delta run plans it again and asks for an approval",
                len(review.removals), review.managed, object_type, review.limit)
    return True


def sync_notified(mode: str) -> dict[str, Any]:
    """The whole push run: open it, drain the queue, users delta, notified mailboxes' contacts and calendars."""
    from m365_3cx.airflow import contacts_group as contacts
    from m365_3cx.airflow import presence_group as presence
    from m365_3cx.airflow import tasks
    from m365_3cx.airflow.operators import apply_extensions

    context = get_current_context()
    counts: dict[str, Any] = {"run": tasks.start_run(mode), "notifications": drain_notifications(mode)}
    counts["extract"] = tasks.extract_users(mode)
    if tasks.has_pending_users(mode):
        tasks.snapshot_threecx(mode)
        tasks.transform_extensions(mode)
        counts["plan"] = tasks.plan_extensions(mode)
        counts["apply"] = ({"deferred": "approval"} if _removals_need_approval("extension", mode)
                           else apply_extensions(context, mode))
    shard_counts = [contacts.run_extract_contacts(mode, shard) for shard in contacts.run_contact_shards(mode, True)]
    counts["contacts"] = {"mailboxes": sum(int(c.get("users") or 0) for c in shard_counts)}
    if contacts.run_phonebook_has_work(mode, shard_counts):
        contacts.run_snapshot_phonebook(mode)
        contacts.run_transform_phonebook(mode)
        contacts.run_plan_phonebook(mode)
        counts["phonebook"] = ({"deferred": "approval"} if _removals_need_approval("contact", mode)
                               else contacts.run_apply_phonebook(mode))
    calendars = [presence.extract_calendars_body(mode, shard) for shard in presence.plan_calendar_shards_body(True)]
    counts["calendars"] = {"shards": len(calendars), "staged": sum(int(c.get("staged") or 0) for c in calendars)}
    presence.extract_teams_presence_body(push=True)
    presence.compute_presence_body(incremental=True)  # only users whose inputs changed or are due
    counts["presence"] = presence.apply_presence_body()
    return finish_push_run(mode, counts)


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
