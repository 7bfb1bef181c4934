"""The contacts -> company phonebook task group, shared by the full and the delta DAG.

``contacts_sync(mode)`` builds::

    contact_shards -> extract_contacts (mapped over shards of users, pool graph_api)
    extract_contact_sources (shared mailboxes + organisational contacts, pool graph_api)
        -> snapshot_phonebook (pool threecx_api) -> transform_phonebook -> plan_phonebook
        -> approve_phonebook_removals (HITL; only when deletes exceed the guard, else skipped)
        -> apply_phonebook (pool threecx_api)

Shards are a few hundred users (``settings.contacts.shard_size``, default 200), never one
task per user; XCom carries only shard descriptors (``{"shard", "of", "first", "last"}``)
and counts. Each mapped instance is named by its user range (``map_index_template``).
Task bodies make one call into :mod:`m365_3cx.pipeline.contacts`; fatal errors fail the
task without retries (:func:`~m365_3cx.airflow.runtime.fatal_errors_fail_the_task`).
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import get_current_context, task, task_group

from m365_3cx.airflow.approval import RemovalApprovalOperator
from m365_3cx.airflow.dag_defaults import (
    GRAPH_POOL,
    STG_CONTACTS,
    TGT_PHONEBOOK,
    THREECX_PHONEBOOK,
    THREECX_POOL,
)
from m365_3cx.airflow.hooks import GraphHook, ThreeCXHook
from m365_3cx.airflow.runtime import (
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

__all__ = ["contacts_sync"]




def _effective_mode(context: Any, mode: str) -> str:
    params = context.get("params") or {}
    return "full" if params.get("full_resync") else mode


def run_contact_shards(mode: str, push: bool = False) -> list[dict[str, Any]]:
    """Shard descriptors of the eligible users (at least one, so cleanup still runs).

    :param push: a push run: one shard of the mailboxes its notifications name.
    """
    from m365_3cx.pipeline.contacts import contact_shards

    settings = load_settings()
    on_demand = bool(on_demand_entries(get_current_context()))
    with fatal_errors_fail_the_task(), staging_engine() as engine:
        return contact_shards(engine, settings, on_demand=on_demand, push=push and not on_demand)


def run_extract_contacts(mode: str, shard: dict[str, Any]) -> dict[str, Any]:
    """Graph contacts of one shard of users -> ``stg_contacts`` (batched; delta with per-stream fallback)."""
    from m365_3cx.pipeline.contacts import extract_contacts, shard_label

    context = get_current_context()
    context["shard_label"] = shard_label(shard)  # type: ignore[index]  # rendered by map_index_template
    effective = _effective_mode(context, mode)
    with task_step(mode, client=GraphHook) as step:
        return extract_contacts(step.engine, step.client, step.settings, step.run.run_key, effective, shard, utcnow())


def run_extract_contact_sources(mode: str, push: bool = False) -> dict[str, Any]:
    """Shared-mailbox and organisational contacts -> ``stg_contacts`` (not in on-demand or push runs).

    :param push: a push run (its notifications name users' mailboxes; the delta runs read these sources).
    """
    from m365_3cx.pipeline.contact_sources import extract_other_sources

    context = get_current_context()
    if on_demand_entries(context) or push:
        return {"skipped": "on-demand and push runs read only the mailboxes they name"}
    with task_step(mode, client=GraphHook) as step:
        return extract_other_sources(step.engine, step.client, step.settings, step.run.run_key,
                                     _effective_mode(context, mode), utcnow())


def run_snapshot_phonebook(mode: str) -> dict[str, int]:
    """3CX company phonebook (one paged read) -> ``phonebook_map`` matches."""
    from m365_3cx.pipeline.contacts import snapshot_phonebook

    with task_step(mode, lease=("phonebook", "snapshot"), client=ThreeCXHook) as step:
        return snapshot_phonebook(step.engine, step.client, step.settings, step.run.run_key, utcnow(),
                                  mode=_effective_mode(step.context, mode))


def run_transform_phonebook(mode: str) -> dict[str, int]:
    """``stg_contacts`` -> ``tgt_phonebook`` (pandas): the entries the change touches, or every
    entry (no record, settings changed, last full recompute too old, ``full_resync``)."""
    from m365_3cx.pipeline.contacts import transform_phonebook
    from m365_3cx.pipeline.ondemand import on_demand_users

    with task_step(mode, lease=("phonebook", "transform")) as step:
        owners = set(on_demand_users(step.engine, step.run.run_key)) if on_demand_entries(step.context) else None
        return transform_phonebook(step.engine, step.settings, step.run.run_key, utcnow(), only_owner_ids=owners,
                                   mode=_effective_mode(step.context, mode),
                                   recompute_all=bool(step.params.get("full_resync")))


def run_phonebook_has_work(mode: str, shard_counts: list[dict[str, Any]]) -> bool:
    """False when a delta run has nothing for the phonebook (its 3CX steps are then skipped)."""
    from m365_3cx.pipeline.contacts import phonebook_has_work

    context = get_current_context()
    params = context.get("params") or {}
    if params.get("full_resync") or on_demand_entries(context):
        return True
    run = run_info(context, mode)
    with staging_engine() as engine:
        return phonebook_has_work(engine, load_settings(), run.run_key, mode, list(shard_counts or []))


def run_plan_phonebook(mode: str) -> dict[str, int]:
    """Desired vs managed 3CX contacts -> ``sync_plan`` (object type ``contact``)."""
    from m365_3cx.pipeline.contacts import plan_phonebook
    from m365_3cx.pipeline.ondemand import on_demand_users

    with task_step(mode, lease=("phonebook", "plan")) as step:
        owners = set(on_demand_users(step.engine, step.run.run_key)) if on_demand_entries(step.context) else None
        return plan_phonebook(step.engine, step.run.run_key, only_owner_ids=owners, now=utcnow(),
                              preview=step.settings.logs.plan_preview, mode=_effective_mode(step.context, mode))


def run_apply_phonebook(mode: str) -> dict[str, int]:
    """Execute the phonebook plan (guarded, audited; ``dry_run`` writes nothing)."""
    from m365_3cx.pipeline.contacts import apply_phonebook, contact_plan_key, owner_keys
    from m365_3cx.pipeline.ondemand import on_demand_users, trace_results

    with task_step(mode, client=ThreeCXHook) as step:
        engine, run_key = step.engine, step.run.run_key
        try:
            with feature_lease(engine, "phonebook", run_key, "apply", step.settings):
                counts = apply_phonebook(
                    engine, step.client, step.settings, run_key, utcnow(),
                    dry_run=bool(step.params.get("dry_run", False)),
                    allow_mass_removal=bool(step.params.get("allow_mass_removal", False)),
                    mode=_effective_mode(step.context, mode),
                )
            release_feature(engine, "phonebook", run_key, counts)
            return counts
        finally:
            if on_demand_entries(step.context):
                owners = owner_keys(engine, on_demand_users(engine, run_key))
                trace_results(engine, run_key, contact_plan_key(run_key), "contact", "phonebook_apply",
                              utcnow(), owners=owners)


@task_group(group_id="contacts", tooltip="Outlook contacts -> 3CX company phonebook")
def contacts_sync(mode: str, push: bool = False) -> None:
    """Build the contacts task group for a DAG running in ``mode`` (``full`` or ``delta``).

    Use as ``extracted >> contacts_sync(MODE) >> finished``.

    :param mode: ``full`` (initial delta rounds, set-difference deletes) or ``delta``.
    :param push: the event-driven DAG: read only the mailboxes its change notifications name.
    """

    @task
    def contact_shards() -> list[dict[str, Any]]:
        return run_contact_shards(mode, push)

    @task(pool=GRAPH_POOL, outlets=[STG_CONTACTS], map_index_template="{{ shard_label }}")
    def extract_contacts(shard: dict[str, Any]) -> dict[str, Any]:
        return run_extract_contacts(mode, shard)

    @task(pool=GRAPH_POOL, outlets=[STG_CONTACTS])
    def extract_contact_sources() -> dict[str, Any]:
        return run_extract_contact_sources(mode, push)

    @task.short_circuit(ignore_downstream_trigger_rules=False)
    def phonebook_changed(shard_counts: list[dict[str, Any]], source_counts: dict[str, Any]) -> bool:
        return run_phonebook_has_work(mode, [*list(shard_counts or []), source_counts or {}])

    @task(pool=THREECX_POOL)
    def snapshot_phonebook() -> dict[str, int]:
        return run_snapshot_phonebook(mode)

    @task(inlets=[STG_CONTACTS], outlets=[TGT_PHONEBOOK])
    def transform_phonebook() -> dict[str, int]:
        return run_transform_phonebook(mode)

    @task
    def plan_phonebook() -> dict[str, int]:
        return run_plan_phonebook(mode)

    @task(pool=THREECX_POOL, inlets=[TGT_PHONEBOOK], outlets=[THREECX_PHONEBOOK],
          trigger_rule="none_failed_min_one_success")
    def apply_phonebook() -> dict[str, int]:
        return run_apply_phonebook(mode)

    extracted = extract_contacts.expand(shard=contact_shards())
    snapshot = snapshot_phonebook()
    phonebook_changed(extracted, extract_contact_sources()) >> snapshot
    planned = plan_phonebook()
    applied = apply_phonebook()
    approve = RemovalApprovalOperator(task_id="approve_phonebook_removals", object_type="contact", mode=mode)
    snapshot >> transform_phonebook() >> planned >> approve >> applied
    planned >> applied
