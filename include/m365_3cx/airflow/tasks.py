"""Task bodies: each reads the context, opens hooks and makes one call into the pipeline.

DAG files wrap these with ``@task`` so they stay thin and read as the pipeline.
Every function returns small counts only (XCom).
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import get_current_context

from m365_3cx.airflow.hooks import GraphHook, ThreeCXHook
from m365_3cx.airflow.runtime import (
    api_client,
    fatal_errors_fail_the_task,
    load_settings,
    run_info,
    staging_engine,
    utcnow,
)


def start_run(mode: str) -> dict[str, Any]:
    """Open the run's row in ``sync_runs``."""
    from m365_3cx.pipeline.users import start_run as start

    run = run_info(get_current_context(), mode)
    with fatal_errors_fail_the_task(), staging_engine() as engine:
        return start(engine, run, utcnow())


def extract_users(mode: str) -> dict[str, Any]:
    """Graph users -> ``stg_users`` (full, or delta with fallback to full)."""
    from m365_3cx.pipeline.users import extract_users as extract

    context = get_current_context()
    params = context.get("params") or {}
    if params.get("full_resync"):
        mode = "full"
    run = run_info(context, mode)
    settings = load_settings()
    with fatal_errors_fail_the_task(), staging_engine() as engine, api_client(GraphHook()) as graph:
        return extract(engine, graph, settings, run.run_key, mode, utcnow())


def has_pending_users(mode: str) -> bool:
    """True when a delta run has user changes to plan (else the downstream steps are skipped)."""
    from m365_3cx.pipeline.users import pending_user_keys

    context = get_current_context()
    params = context.get("params") or {}
    if mode == "full" or params.get("full_resync") or params.get("only_users"):
        return True
    run = run_info(context, mode)
    with staging_engine() as engine:
        return bool(pending_user_keys(engine, run.run_key))


def snapshot_threecx(mode: str) -> dict[str, int]:
    """3CX users -> ``cur_extensions`` (one paged read)."""
    from m365_3cx.pipeline.users import snapshot_threecx as snapshot

    run = run_info(get_current_context(), mode)
    settings = load_settings()
    with fatal_errors_fail_the_task(), staging_engine() as engine, api_client(ThreeCXHook()) as threecx:
        return snapshot(engine, threecx, run.run_key, utcnow(), settings)


def transform_extensions(mode: str) -> dict[str, int]:
    """``stg_users`` -> ``tgt_extensions`` (pandas)."""
    from m365_3cx.pipeline.users import transform_users

    run = run_info(get_current_context(), mode)
    settings = load_settings()
    with fatal_errors_fail_the_task(), staging_engine() as engine:
        return transform_users(engine, settings, run.run_key, utcnow(), dry_run=run.dry_run)


def plan_extensions(mode: str) -> dict[str, int]:
    """Desired vs current -> ``sync_plan``; a delta run plans only the users that changed."""
    from m365_3cx.pipeline.users import pending_user_keys, plan_users, resolve_only_users

    context = get_current_context()
    params = context.get("params") or {}
    run = run_info(context, mode)
    settings = load_settings()
    with fatal_errors_fail_the_task(), staging_engine() as engine:
        only_keys: set[str] | None = None
        if params.get("only_users"):
            only_keys = resolve_only_users(engine, list(params["only_users"]))
        elif mode == "delta" and not params.get("full_resync"):
            only_keys = pending_user_keys(engine, run.run_key)
        return plan_users(engine, settings, run.run_key, only_keys, utcnow())


def finish_run(mode: str, counts: dict[str, Any] | None = None) -> dict[str, Any]:
    """Close the run's row in ``sync_runs`` as successful, with its counts."""
    from m365_3cx.pipeline.users import finish_run as finish

    run = run_info(get_current_context(), mode)
    with staging_engine() as engine:
        finish(engine, run.run_key, "success", counts or {}, utcnow())
    return {"run_key": run.run_key, "status": "success"}
