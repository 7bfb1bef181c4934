"""Push, live: a real scheduler, triggerer, dag-processor and HTTPS api-server (``scripts/push_cluster.py``).

The Graph emulator posts change notifications to the receiver plugin route of the api-server; the
receiver queues them in staging; the triggerer's AssetWatcher fires; the scheduler starts
``m365_3cx_push``, which carries the change to 3CX. Every other DAG is paused and never triggered
in the cluster, so no timed run can have done it. The setup (a full sync that gives everyone an
extension, then the subscriptions) runs in-process with ``dag.test()`` against the cluster's
staging database and emulators.

Scenarios in one go: a rename, a new contact and a meeting now each reach 3CX; forged posts (wrong
clientState, unknown subscription) are refused and change nothing; a notification Graph lost
followed by a ``missed`` lifecycle event leads to a catch-up delta that brings the change.
"""

from __future__ import annotations

import datetime as dt
import importlib.util
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from tests.dags.dag_helpers import assert_success, load_dag

pytestmark = [pytest.mark.live, pytest.mark.postgres, pytest.mark.integration]

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = {
    "numbering": {"policy": "attribute", "attribute": "extensionAttribute1", "fallback_to_pool": True,
                  "pool_first": "300", "pool_last": "399"},
    "extensions": {"removal_policy": "disable", "default_region": "US"},
    "contacts": {"personal_contacts": "all", "exclude_category": "Private", "shard_size": 50},
    "presence": {"enabled": True, "mode": "respect", "shard_size": 50},
}
ARRIVAL_TIMEOUT = 240.0


def _launcher() -> Any:
    name = "m365_3cx_push_cluster"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, ROOT / "scripts" / "push_cluster.py")
        assert spec and spec.loader
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture(scope="module")
def cluster() -> Iterator[Any]:
    instance = _launcher().PushCluster(graph_users=12, settings=SETTINGS)
    try:
        instance.start()
    except BaseException:
        instance.stop()
        raise
    try:
        yield instance
    finally:
        home = instance.home
        instance.stop()
        assert not instance.leftovers(), "processes left behind by the push cluster"
        assert not home.exists() and not instance.databases


def staging(cluster: Any, query: str, **params: Any) -> list[dict[str, Any]]:
    """Rows of a query on the cluster's staging database."""
    engine = sa.create_engine(cluster._pg_url(cluster.staging_db))
    try:
        with engine.connect() as conn:
            return [dict(r) for r in conn.execute(sa.text(query), params).mappings()]
    finally:
        engine.dispose()


def members(cluster: Any) -> list[dict[str, Any]]:
    users = [u for u in cluster.graph_admin("GET", "state")["users"]
             if u.get("mail") and u.get("userType", "Member") == "Member" and u.get("accountEnabled")
             and not u.get("deleted")]
    return sorted(users, key=lambda u: u["id"])


def extension(cluster: Any, user: dict[str, Any]) -> dict[str, Any]:
    return next(u for u in cluster.threecx_admin("GET", "state")["users"]
                if u.get("EmailAddress") == user["mail"].lower())


def phonebook_names(cluster: Any) -> set[str]:
    return {c.get("FirstName") or "" for c in cluster.threecx_admin("GET", "state")["contacts"]}


def wait_until(what: str, probe: Callable[[], bool], timeout: float = ARRIVAL_TIMEOUT) -> float:
    """Seconds until ``probe()`` held; fail after ``timeout``."""
    started = time.monotonic()
    while not probe():
        if time.monotonic() - started > timeout:
            pytest.fail(f"{what} did not happen within {timeout:.0f} s")
        time.sleep(0.5)
    return time.monotonic() - started


def meeting_now(cluster: Any, user: dict[str, Any]) -> None:
    now = dt.datetime.now(dt.UTC)
    fmt = "%Y-%m-%dT%H:%M:%S"
    cluster.graph_admin("POST", f"users/{user['id']}/events", json={
        "subject": "Push live", "showAs": "busy",
        "start": {"dateTime": (now - dt.timedelta(minutes=5)).strftime(fmt), "timeZone": "UTC"},
        "end": {"dateTime": (now + dt.timedelta(minutes=55)).strftime(fmt), "timeZone": "UTC"}})


@pytest.fixture
def setup(cluster: Any, airflow_db: str, monkeypatch: pytest.MonkeyPatch) -> dict[str, Any]:
    """Live writes, everyone provisioned, subscriptions created (in-process ``dag.test()`` on the cluster's staging)."""
    from m365_3cx.staging.control import set_writes_enabled
    from m365_3cx.staging.schema import create_schema

    for key, value in cluster.connections_env().items():
        monkeypatch.setenv(key, value)
    engine = sa.create_engine(cluster._pg_url(cluster.staging_db))
    create_schema(engine)
    with engine.begin() as conn:
        set_writes_enabled(conn, True, changed_by="tests/distributed push", now=dt.datetime.now(dt.UTC),
                           note="live push test")
    engine.dispose()
    renamed, owner, busy, missed_owner = members(cluster)[:4]
    for event in cluster.graph_admin("GET", f"users/{busy['id']}/mailbox")["events"]:
        cluster.graph_admin("DELETE", f"users/{busy['id']}/events/{event['id']}")
    cluster.graph_admin("PUT", f"users/{busy['id']}/automaticReplies", json={"status": "disabled"})
    for dag_id in ("m365_3cx_full_sync", "m365_3cx_subscriptions"):
        assert_success(load_dag(dag_id).test())
    assert staging(cluster, "SELECT count(*) AS n FROM push_queue")[0]["n"] == 0  # the setup made no change
    return {"renamed": renamed, "owner": owner, "busy": busy, "missed_owner": missed_owner}


def test_changes_reach_3cx_through_notifications_alone(cluster: Any, setup: dict[str, Any]) -> None:
    renamed, owner, busy = setup["renamed"], setup["owner"], setup["busy"]
    assert extension(cluster, busy)["CurrentProfileName"] == "Available"
    subscriptions = cluster.graph_admin("GET", "subscriptions")["subscriptions"]
    assert {s["notificationUrl"] for s in subscriptions} == {cluster.notification_url}

    cluster.graph_admin("PATCH", f"users/{renamed['id']}", json={"surname": "Livepush"})
    cluster.graph_admin("POST", f"users/{owner['id']}/contacts",
                        json={"givenName": "Lena", "surname": "Live", "mobilePhone": "+49 170 5550201"})
    meeting_now(cluster, busy)
    took = {
        "rename": wait_until("the rename in 3CX", lambda: extension(cluster, renamed)["LastName"] == "Livepush"),
        "contact": wait_until("the contact in 3CX", lambda: "Lena" in phonebook_names(cluster)),
        "meeting": wait_until("the meeting's status in 3CX",
                              lambda: extension(cluster, busy)["CurrentProfileName"] == "Away"),
    }
    print(f"\nchange -> 3CX (cumulative seconds): {took}")
    push_runs = cluster.runs("m365_3cx_push")
    assert push_runs and {r["run_type"] for r in push_runs} == {"asset_triggered"}, push_runs
    for dag_id in ("m365_3cx_delta", "m365_3cx_full_sync", "m365_3cx_hourly", "m365_3cx_subscriptions"):
        assert cluster.runs(dag_id) == [], f"{dag_id} ran in the cluster"

    # forged posts: refused, nothing queued, no run
    wait_until("the push runs to finish", lambda: all(r["state"] in ("success", "failed")
                                                      for r in cluster.runs("m365_3cx_push")))
    runs_before = len(cluster.runs("m365_3cx_push"))
    queued_before = staging(cluster, "SELECT count(*) AS n FROM push_queue")[0]["n"]
    contact_sub = next(s for s in subscriptions if s["resource"].endswith(f"{owner['id']}/contacts"))
    forged = {"subscriptionId": contact_sub["id"], "clientState": "guessed", "changeType": "created",
              "tenantId": cluster.graph["tenant_id"], "resource": f"Users/{owner['id']}/Contacts/x",
              "resourceData": {"id": "x"}}
    assert cluster.post_receiver("notifications", {"value": [forged]}).status_code == 403
    unknown = {**forged, "subscriptionId": "00000000-0000-0000-0000-000000000000"}
    assert cluster.post_receiver("notifications", {"value": [unknown]}).status_code == 404
    assert cluster.post_receiver("lifecycle", {"value": [{**forged, "lifecycleEvent": "missed"}]}).status_code == 403
    time.sleep(5)
    assert staging(cluster, "SELECT count(*) AS n FROM push_queue")[0]["n"] == queued_before
    assert len(cluster.runs("m365_3cx_push")) == runs_before
    assert {r["reason"] for r in staging(cluster, "SELECT reason FROM push_rejections")} == {
        "client_state", "unknown_subscription"}

    # a notification Graph lost, then `missed`: the catch-up delta brings the change
    missed_owner = setup["missed_owner"]
    cluster.graph_admin("PUT", "subscriptions/faults", json={"drop": 1})
    cluster.graph_admin("POST", f"users/{missed_owner['id']}/contacts",
                        json={"givenName": "Mats", "surname": "Missed", "mobilePhone": "+49 170 5550202"})
    cluster.graph_admin("POST", "subscriptions/drain", json={"timeout": 10})
    time.sleep(3)
    assert "Mats" not in phonebook_names(cluster)
    assert len(cluster.runs("m365_3cx_push")) == runs_before  # nothing arrived, nothing ran
    missed_sub = next(s for s in cluster.graph_admin("GET", "subscriptions")["subscriptions"]
                      if s["resource"].endswith(f"{missed_owner['id']}/contacts"))
    cluster.graph_admin("POST", f"subscriptions/{missed_sub['id']}/lifecycle", json={"event": "missed"})
    wait_until("the missed contact in 3CX", lambda: "Mats" in phonebook_names(cluster))
    assert staging(cluster, "SELECT kind, user_id FROM push_queue WHERE source = 'missed'") == [
        {"kind": "contacts", "user_id": missed_owner["id"]}]
    cluster.graph_admin("DELETE", "subscriptions/faults")
