"""Task bodies: each reads the context, opens hooks and makes one call into the pipeline.

DAG files wrap these with ``@task`` so they stay thin and read as the pipeline.
Every function returns small counts only (XCom).
"""

from __future__ import annotations

import logging
from typing import Any

from airflow.sdk import get_current_context

from m365_3cx.airflow.hooks import GraphHook, ThreeCXHook
from m365_3cx.airflow.runtime import (
    fatal_errors_fail_the_task,
    load_settings,
    on_demand_entries,
    run_info,
    staging_engine,
    task_step,
    utcnow,
)

log = logging.getLogger(__name__)


def start_run(mode: str) -> dict[str, Any]:
    """Open the run's row in ``sync_runs``."""
    from m365_3cx.pipeline.ondemand import ON_DEMAND_MODE
    from m365_3cx.pipeline.users import start_run as start

    context = get_current_context()
    run = run_info(context, ON_DEMAND_MODE if on_demand_entries(context) else mode)
    # A dry run is logged by the pipeline's start_run with its reason (Airflow 3.3's Task SDK has no
    # call to set the DAG run note from a task, so the log is the record).
    if run.mode == ON_DEMAND_MODE:
        log.info("provision on demand for %d entries (only_users); the step trace goes to sync_trace",
                 len(on_demand_entries(context)))
    with fatal_errors_fail_the_task(), staging_engine() as engine:
        return start(engine, run, utcnow())


def extract_users(mode: str) -> dict[str, Any]:
    """Graph users -> ``stg_users`` (full, or delta with fallback to full; just the named users on demand)."""
    from m365_3cx.pipeline.ondemand import extract_on_demand
    from m365_3cx.pipeline.users import extract_users as extract

    context = get_current_context()
    if (context.get("params") or {}).get("full_resync"):
        mode = "full"
    entries = on_demand_entries(context)
    with task_step(mode, client=GraphHook) as step:
        if entries:
            return extract_on_demand(step.engine, step.client, step.settings, step.run.run_key, entries, utcnow())
        return extract(step.engine, step.client, step.settings, step.run.run_key, mode, utcnow())


def has_pending_users(mode: str) -> bool:
    """True when a delta run has user changes to plan, or a removal grace period ran out (else the
    downstream steps are skipped)."""
    from m365_3cx.pipeline.users import grace_due_user_keys, pending_user_keys

    context = get_current_context()
    params = context.get("params") or {}
    if mode == "full" or params.get("full_resync") or on_demand_entries(context):
        return True
    run = run_info(context, mode)
    with staging_engine() as engine:
        return bool(pending_user_keys(engine, run.run_key)) or bool(
            grace_due_user_keys(engine, load_settings(), utcnow()))


def snapshot_threecx(mode: str) -> dict[str, int]:
    """3CX users -> ``cur_extensions`` (one paged read); takes the run's ``extensions`` lease."""
    from m365_3cx.pipeline.users import snapshot_threecx as snapshot

    with task_step(mode, lease=("extensions", "snapshot"), client=ThreeCXHook) as step:
        return snapshot(step.engine, step.client, step.run.run_key, utcnow(), step.settings)


def transform_extensions(mode: str) -> dict[str, int]:
    """``stg_users`` -> ``tgt_extensions`` (pandas)."""
    from m365_3cx.pipeline.users import transform_users

    with task_step(mode, lease=("extensions", "transform")) as step:
        return transform_users(step.engine, step.settings, step.run.run_key, utcnow(), dry_run=step.run.dry_run)


def plan_extensions(mode: str) -> dict[str, int]:
    """Desired vs current -> ``sync_plan``; a delta run plans only the users that changed."""
    from m365_3cx.pipeline.ondemand import on_demand_users, trace_plan
    from m365_3cx.pipeline.users import grace_due_user_keys, pending_user_keys, plan_users

    on_demand = bool(on_demand_entries(get_current_context()))
    with task_step(mode, lease=("extensions", "plan")) as step:
        engine, settings, run_key = step.engine, step.settings, step.run.run_key
        only_keys: set[str] | None = None
        if on_demand:
            only_keys = set(on_demand_users(engine, run_key))
        elif mode == "delta" and not step.params.get("full_resync"):
            only_keys = pending_user_keys(engine, run_key) | grace_due_user_keys(engine, settings, utcnow())
        counts = plan_users(engine, settings, run_key, only_keys, utcnow())
        if on_demand:
            trace_plan(engine, settings, run_key, utcnow())
        return counts


def finish_run(mode: str, counts: dict[str, Any] | None = None) -> dict[str, Any]:
    """Close the run's row in ``sync_runs`` as successful, with its counts."""
    from m365_3cx.pipeline.users import finish_run as finish

    run = run_info(get_current_context(), mode)
    with staging_engine() as engine:
        finish(engine, run.run_key, "success", counts or {}, utcnow())
    log.info("run %s finished successfully; its plan is in sync_plan, its writes in sync_audit "
             "(sync_runs.dry_run / dry_reason say whether it wrote)", run.run_key)
    return {"run_key": run.run_key, "status": "success"}
