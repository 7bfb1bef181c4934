"""Every DAG imports cleanly and follows the project's operating rules."""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

DAGS = Path(__file__).resolve().parents[2] / "dags"
EXPECTED = {"m365_3cx_full_sync", "m365_3cx_delta", "m365_3cx_hourly", "m365_3cx_watchdog", "m365_3cx_maintenance",
            "m365_3cx_go_live", "m365_3cx_push", "m365_3cx_subscriptions"}
#: Housekeeping DAGs: no trigger form, no Graph or 3CX calls.
MAINTENANCE = {"m365_3cx_watchdog", "m365_3cx_maintenance"}
#: DAGs that are not syncs (no trigger form of the sync, no extension tasks), manual only.
CONTROL_DAGS = {"m365_3cx_go_live"}
#: DAGs that keep Graph subscriptions (Graph calls only, no trigger form of the sync).
SUBSCRIPTION_DAGS = {"m365_3cx_subscriptions"}
#: The push DAG: one task running the delta steps for the notified mailboxes.
PUSH_DAGS = {"m365_3cx_push"}
#: DAGs without the users -> extensions tasks (checked by test_presence_tasks_run_in_pools).
PRESENCE_ONLY = {"m365_3cx_hourly"}


@pytest.fixture(scope="module")
def dagbag():
    from airflow.dag_processing.dagbag import DagBag

    return DagBag(dag_folder=str(DAGS))


def test_no_import_errors(dagbag) -> None:
    assert dagbag.import_errors == {}


def test_expected_dags_present(dagbag) -> None:
    assert set(dagbag.dag_ids) >= EXPECTED


def _dags(dagbag):
    return [dagbag.dags[dag_id] for dag_id in sorted(dagbag.dags)]


def test_dag_level_policy(dagbag) -> None:
    for dag in _dags(dagbag):
        assert dag.catchup is False, dag.dag_id
        assert dag.max_active_runs == 1, dag.dag_id
        assert "m365-3cx-sync" in dag.tags, dag.dag_id
        assert dag.dagrun_timeout is not None, dag.dag_id
        assert dag.doc_md, dag.dag_id
        assert dag.on_failure_callback, f"{dag.dag_id} has no failure alert callback"
        if dag.dag_id in CONTROL_DAGS:
            assert type(dag.timetable).__name__ == "NullTimetable", dag.dag_id  # manual only
            continue
        if dag.dag_id not in MAINTENANCE | SUBSCRIPTION_DAGS:
            assert {"dry_run", "full_resync", "only_users", "allow_mass_removal"} <= set(dag.params.keys()), dag.dag_id


def test_task_level_policy(dagbag) -> None:
    for dag in _dags(dagbag):
        for task in dag.tasks:
            where = f"{dag.dag_id}.{task.task_id}"
            assert task.execution_timeout is not None, where
            assert task.retries >= 2, where
            assert task.retry_exponential_backoff, where


def test_external_calls_run_in_pools(dagbag) -> None:
    for dag in _dags(dagbag):
        pools = {task.task_id: task.pool for task in dag.tasks}
        if dag.dag_id in SUBSCRIPTION_DAGS:
            assert pools["reconcile_subscriptions"] == "graph_api", dag.dag_id
            continue
        if dag.dag_id in PUSH_DAGS:
            assert pools == {"sync_notified": "threecx_api"}, dag.dag_id
            continue
        if dag.dag_id in PRESENCE_ONLY | MAINTENANCE | CONTROL_DAGS:
            continue
        assert pools["extract_users"] == "graph_api", dag.dag_id
        assert pools["snapshot_threecx"] == "threecx_api", dag.dag_id
        assert pools["apply_extensions"] == "threecx_api", dag.dag_id


def test_presence_tasks_run_in_pools(dagbag) -> None:
    for dag_id in ("m365_3cx_hourly", "m365_3cx_delta"):
        dag = dagbag.dags[dag_id]
        pools = {task.task_id: task.pool for task in dag.tasks}
        assert pools["presence_refresh.extract_calendars"] == "graph_api", dag_id
        assert pools["presence_refresh.extract_teams_presence"] == "graph_api", dag_id
        assert "presence_apply.compute_presence" in dag.get_task(
            "presence_refresh.extract_teams_presence").get_flat_relative_ids(upstream=False), dag_id
        assert pools["presence_apply.compute_presence"] == "threecx_api", dag_id
        assert pools["presence_apply.apply_presence"] == "threecx_api", dag_id


def test_contact_sources_are_read_beside_the_shards_before_the_phonebook_steps(dagbag) -> None:
    for dag_id in ("m365_3cx_full_sync", "m365_3cx_delta"):
        dag = dagbag.dags[dag_id]
        task = dag.get_task("contacts.extract_contact_sources")
        assert task.pool == "graph_api", dag_id
        assert "contacts.phonebook_changed" in task.downstream_task_ids, dag_id


def test_pipeline_order(dagbag) -> None:
    dag = dagbag.dags["m365_3cx_full_sync"]
    chain = ["start_run", "extract_users", "snapshot_threecx", "transform_extensions", "plan_extensions",
             "approve_extension_removals", "apply_extensions", "finish_run"]
    for upstream, downstream in itertools.pairwise(chain):
        assert downstream in dag.get_task(upstream).downstream_task_ids, (upstream, downstream)


def test_apply_steps_run_after_an_approval_or_its_skip(dagbag) -> None:
    """Each apply step follows its plan and its approval task, and still runs when the approval is skipped."""
    for dag_id in ("m365_3cx_full_sync", "m365_3cx_delta"):
        dag = dagbag.dags[dag_id]
        for plan, approve, apply in (
            ("plan_extensions", "approve_extension_removals", "apply_extensions"),
            ("contacts.plan_phonebook", "contacts.approve_phonebook_removals", "contacts.apply_phonebook"),
        ):
            assert dag.get_task(apply).upstream_task_ids == {plan, approve}, (dag_id, apply)
            assert dag.get_task(approve).upstream_task_ids == {plan}, (dag_id, approve)
            assert dag.get_task(apply).trigger_rule == "none_failed_min_one_success", (dag_id, apply)
            assert type(dag.get_task(approve)).__name__ == "RemovalApprovalOperator"


def test_dag_files_parse_without_reading_variables_or_connections(monkeypatch) -> None:
    """Parse-time code must not touch Variables or Connections: poison them and parse again."""
    from airflow.dag_processing.dagbag import DagBag
    from airflow.sdk import BaseHook, Variable

    def poisoned(*args, **kwargs):
        raise AssertionError("DAG parse touched a Variable or Connection")

    monkeypatch.setattr(Variable, "get", poisoned)
    monkeypatch.setattr(BaseHook, "get_connection", poisoned)
    bag = DagBag(dag_folder=str(DAGS))
    assert bag.import_errors == {}
