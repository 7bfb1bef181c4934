"""Calendar and Teams presence as TaskGroups the DAGs wire in: refresh (extract) and apply.

``presence_refresh(mode)``: ``plan_calendar_shards`` splits the managed users into shards of
``presence.shard_size`` and ``extract_calendars`` is mapped over them (dynamic task mapping;
XCom carries only ``{"shard", "of", "first", "last"}``), each instance named by its user range;
beside them ``extract_teams_presence`` polls every managed user's Teams presence (one task:
650 users per Graph request, within the client-side request budget).
``presence_apply()``: ``compute_presence`` (desired profiles at wall-clock now, plan; the delta
DAG's re-decides only the users whose inputs changed or whose decision is due) then
``apply_presence`` (the writes), both in the ``threecx_api`` pool.

Every task runs with trigger rule ``none_failed``, so a skipped upstream (the delta DAG's
"no user changed" short-circuit, or no shard at all) never skips presence; a failed one does.
Task bodies make one call each into :mod:`m365_3cx.pipeline.presence` and use the real current
time, never the run's logical date, so backfills and late runs never apply a past status.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import TaskGroup, get_current_context, task

from m365_3cx.airflow.dag_defaults import (
    GRAPH_POOL,
    STG_AUTO_REPLIES,
    STG_EVENTS,
    STG_TEAMS_PRESENCE,
    TGT_PRESENCE,
    THREECX_POOL,
    THREECX_PRESENCE,
)
from m365_3cx.airflow.hooks import GraphHook, ThreeCXHook
from m365_3cx.airflow.runtime import (
    api_client,
    fatal_errors_fail_the_task,
    feature_lease,
    load_settings,
    on_demand_entries,
    release_feature,
    run_info,
    staging_engine,
    task_step,
    utcnow,
)

__all__ = ["presence_apply", "presence_refresh"]

#: ``mode`` used for the run identity of the apply tasks (the run key does not depend on it).
_APPLY_MODE = "delta"




def plan_calendar_shards_body(push: bool = False) -> list[dict[str, Any]]:
    """Shard descriptors of the managed users (empty when presence is disabled).

    :param push: a push run: one shard of the mailboxes its calendar notifications name.
    """
    from m365_3cx.pipeline.presence import plan_shards

    with task_step(_APPLY_MODE) as step:
        run_key = step.run.run_key
        on_demand = run_key if on_demand_entries(step.context) else None
        push_run = run_key if push and on_demand is None else None
        return plan_shards(step.engine, step.settings, on_demand_run=on_demand, push_run=push_run)


def extract_calendars_body(mode: str, shard: dict[str, Any]) -> dict[str, Any]:
    """Stage one shard's calendars (``full``: window + automatic replies; ``delta``: delta links)."""
    from m365_3cx.pipeline.presence import extract_calendars, shard_label

    context = get_current_context()
    context["shard_label"] = shard_label(shard)  # type: ignore[typeddict-unknown-key]
    with task_step(mode, client=GraphHook) as step:
        effective = "full" if step.params.get("full_resync") else mode
        return extract_calendars(step.engine, step.client, step.settings, step.run.run_key, effective, shard,
                                 utcnow())


def extract_teams_presence_body(push: bool = False) -> dict[str, Any]:
    """Poll the managed users' Teams presence (nothing unless ``presence.teams.enabled``).

    :param push: a push run: no poll (the delta and hourly runs poll; what they staged still counts).
    """
    from m365_3cx.pipeline.presence import extract_teams_presence

    context = get_current_context()
    run = run_info(context, _APPLY_MODE)
    settings = load_settings()
    if not (settings.presence.enabled and settings.presence.teams.enabled):
        return {"enabled": False}
    if push and not on_demand_entries(context):
        return {"push": True, "polled": False}
    with fatal_errors_fail_the_task(), staging_engine() as engine, api_client(GraphHook()) as graph:
        return extract_teams_presence(engine, graph, settings, run.run_key, utcnow(),
                                      on_demand_run=bool(on_demand_entries(context)))


def compute_presence_body(incremental: bool = False) -> dict[str, Any]:
    """Desired profiles at wall-clock now -> ``tgt_presence`` and the run's presence plan.

    :param incremental: a delta run: decide only the users whose decision can have changed
        (not with the ``full_resync`` param).
    """
    from m365_3cx.pipeline.ondemand import on_demand_users
    from m365_3cx.pipeline.presence import compute_presence

    with task_step(_APPLY_MODE, lease=("presence", "snapshot"), client=ThreeCXHook) as step:
        only = set(on_demand_users(step.engine, step.run.run_key)) if on_demand_entries(step.context) else None
        return compute_presence(step.engine, step.client, step.settings, step.run.run_key, utcnow(),
                                dry_run=bool(step.params.get("dry_run", False)), only_user_ids=only,
                                incremental=incremental and not step.params.get("full_resync"))


def apply_presence_body() -> dict[str, Any]:
    """Write the run's planned profile switches (nothing with the ``dry_run`` param)."""
    from m365_3cx.pipeline.ondemand import trace_results
    from m365_3cx.pipeline.presence import apply_presence, presence_plan_key

    with task_step(_APPLY_MODE, client=ThreeCXHook) as step:
        engine, run_key = step.engine, step.run.run_key
        try:
            with feature_lease(engine, "presence", run_key, "apply", step.settings):
                counts = apply_presence(engine, step.client, step.settings, run_key, utcnow(),
                                        dry_run=bool(step.params.get("dry_run", False)))
            release_feature(engine, "presence", run_key, counts)
            return counts
        finally:
            if on_demand_entries(step.context):
                trace_results(engine, run_key, presence_plan_key(run_key), "presence", "status_apply", utcnow())


def presence_refresh(mode: str, push: bool = False) -> TaskGroup:
    """TaskGroup ``presence_refresh``: shard the users, extract calendars per shard (mapped).

    :param mode: ``full`` (hourly window refresh + automatic replies) or ``delta`` (delta links).
    :param push: the event-driven DAG: read only the calendars its change notifications name.
    """
    with TaskGroup(group_id="presence_refresh", tooltip="calendars and automatic replies -> staging") as group:

        @task(task_id="plan_calendar_shards", trigger_rule="none_failed")
        def plan_calendar_shards() -> list[dict[str, Any]]:
            return plan_calendar_shards_body(push)

        @task(task_id="extract_calendars", pool=GRAPH_POOL, trigger_rule="none_failed",
              map_index_template="{{ shard_label }}", outlets=[STG_EVENTS, STG_AUTO_REPLIES])
        def extract_calendars(shard: dict[str, Any]) -> dict[str, Any]:
            return extract_calendars_body(mode, shard)

        extract_calendars.expand(shard=plan_calendar_shards())

        @task(task_id="extract_teams_presence", pool=GRAPH_POOL, trigger_rule="none_failed",
              outlets=[STG_TEAMS_PRESENCE])
        def extract_teams_presence() -> dict[str, Any]:
            return extract_teams_presence_body(push)

        extract_teams_presence()
    return group


def presence_apply(incremental: bool = False) -> TaskGroup:
    """TaskGroup ``presence_apply``: compute desired profiles and plan, then switch them in 3CX.

    :param incremental: the delta DAG: re-decide only users whose inputs changed or whose decision is due.
    """
    with TaskGroup(group_id="presence_apply", tooltip="desired 3CX status now -> 3CX") as group:

        @task(task_id="compute_presence", pool=THREECX_POOL, trigger_rule="none_failed",
              inlets=[STG_EVENTS, STG_AUTO_REPLIES, STG_TEAMS_PRESENCE], outlets=[TGT_PRESENCE])
        def compute_presence() -> dict[str, Any]:
            return compute_presence_body(incremental)

        @task(task_id="apply_presence", pool=THREECX_POOL, trigger_rule="none_failed",
              inlets=[TGT_PRESENCE], outlets=[THREECX_PRESENCE])
        def apply_presence() -> dict[str, Any]:
            return apply_presence_body()

        compute_presence() >> apply_presence()
    return group
