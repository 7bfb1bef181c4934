"""Provision on demand end to end: real Airflow (``dag.test()``), both emulators over HTTPS, staging
on PostgreSQL.

``m365_3cx_delta`` with ``only_users`` runs users, contacts and status for the named users only
(another user's pending changes of all three kinds stay untouched and reach 3CX with the next
regular delta run), records a complete step trace per user, names an unknown UPN, and fails a run
whose entries are all unknown, naming them.
"""

from __future__ import annotations

import logging
from typing import Any

import pytest
import sqlalchemy as sa
from dag_helpers import assert_success, run_dag

from m365_3cx.staging.trace import STEPS

pytestmark = [pytest.mark.dag, pytest.mark.postgres, pytest.mark.integration]

TAG = "m365-sync:"
SETTINGS = {
    "numbering": {"policy": "attribute", "attribute": "extensionAttribute1", "fallback_to_pool": True,
                  "pool_first": "300", "pool_last": "399"},
    "extensions": {"removal_policy": "disable", "default_region": "US"},
    "contacts": {"personal_contacts": "all", "exclude_category": "Private", "shard_size": 15},
    "presence": {"enabled": True, "mode": "respect", "shard_size": 15},
}
GHOST = "ghost.user@nowhere.example"


def _members(env: dict[str, Any]) -> list[dict[str, Any]]:
    users = [u for u in env["graph"].admin("GET", "state").json()["users"]
             if u.get("mail") and u.get("userType", "Member") == "Member" and u.get("accountEnabled")
             and not u.get("deleted")]
    return sorted(users, key=lambda u: u["id"])


def _extension(env: dict[str, Any], mail: str) -> dict[str, Any] | None:
    users = env["pbx"].admin("GET", "state").json()["users"]
    return next((u for u in users if (u.get("EmailAddress") or "").lower() == mail.lower()), None)


def _entries(env: dict[str, Any], first: str) -> list[dict[str, Any]]:
    return [c for c in env["pbx"].admin("GET", "state").json()["contacts"]
            if (c.get("Tag") or "").startswith(TAG) and c.get("FirstName") == first]


def _trace(env: dict[str, Any], run_key: str) -> list[dict[str, Any]]:
    with env["engine"].connect() as conn:
        return [dict(r) for r in conn.execute(sa.text(
            "SELECT user_id, upn, step, seq, outcome, detail FROM sync_trace WHERE run_key = :k ORDER BY seq, id"
        ), {"k": run_key}).mappings()]


def _last_run(env: dict[str, Any]) -> dict[str, Any]:
    with env["engine"].connect() as conn:
        return dict(conn.execute(sa.text(
            "SELECT run_key, mode, status, last_error FROM sync_runs ORDER BY started_at DESC LIMIT 1"
        )).mappings().one())


@pytest.fixture
def env(dag_env: dict[str, Any]) -> dict[str, Any]:
    """Quiet calendars, then one full sync (every member has an extension, phonebook synced)."""
    graph = dag_env["graph"]
    for user in _members(dag_env):
        for event in graph.admin("GET", f"users/{user['id']}/mailbox").json()["events"]:
            graph.admin("DELETE", f"users/{user['id']}/events/{event['id']}")
        graph.admin("PUT", f"users/{user['id']}/automaticReplies", json={"status": "disabled"})
    assert_success(run_dag("m365_3cx_full_sync"))
    return dag_env


def test_only_users_runs_users_contacts_and_status_for_those_users_only(
        env: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    graph = env["graph"]
    alice, bob = _members(env)[0], _members(env)[1]
    alice_ext = _extension(env, alice["mail"])
    assert alice_ext is not None and _extension(env, bob["mail"]) is not None
    new = graph.admin("POST", "users", json={
        "userPrincipalName": "nora.new@contoso.example", "displayName": "Nora New", "givenName": "Nora",
        "surname": "New", "mail": "nora.new@contoso.example", "accountEnabled": True,
        "usageLocation": "US"}).json()
    for user, suffix in ((alice, "A"), (bob, "B")):  # three kinds of change for each of them
        graph.admin("PATCH", f"users/{user['id']}", json={"surname": f"Renamed{suffix}"})
        graph.admin("POST", f"users/{user['id']}/contacts",
                    json={"givenName": f"Contact{suffix}", "surname": "OnDemand", "mobilePhone": "+49 170 5550123"})
        graph.admin("PUT", f"users/{user['id']}/automaticReplies", json={"status": "alwaysEnabled"})
    env["pbx"].admin("DELETE", "counters")

    caplog.set_level(logging.WARNING)
    only = [alice_ext["Number"], "NORA.NEW@contoso.example", GHOST]
    assert_success(run_dag("m365_3cx_delta", only_users=only))
    run = _last_run(env)
    assert run["mode"] == "on_demand" and run["status"] == "success"

    # alice (named by her extension number) and the new user got everything; bob nothing at all
    alice_now, bob_now = _extension(env, alice["mail"]), _extension(env, bob["mail"])
    assert alice_now["LastName"] == "RenamedA" and alice_now["CurrentProfileName"] == "Out of office"
    assert bob_now["LastName"] != "RenamedB" and bob_now["CurrentProfileName"] == "Available"
    assert len(_entries(env, "ContactA")) == 1 and _entries(env, "ContactB") == []
    nora = _extension(env, new["mail"])
    assert nora is not None and nora["FirstName"] == "Nora"

    # the unknown entry is named in the log and recorded for the console
    assert GHOST in caplog.text and "matched nobody" in caplog.text
    trace = _trace(env, run["run_key"])
    unknown = [t for t in trace if t["step"] == "resolve" and t["outcome"] == "unknown"]
    assert [t["upn"] for t in unknown] == [GHOST]

    # the trace is complete and in step order for alice
    mine = [t for t in trace if t["user_id"] == alice["id"]]
    assert [t["step"] for t in mine] == [s for s in STEPS for t in mine if t["step"] == s][: len(mine)]
    assert {t["step"] for t in mine} == set(STEPS)
    by_step = {t["step"]: t for t in mine}
    assert by_step["resolve"]["detail"]["matched_by"] == "extension"
    assert by_step["read"]["outcome"] == "found" and by_step["read"]["detail"]["accountEnabled"] is True
    assert by_step["scope"]["outcome"] == "in_scope"
    assert by_step["match"]["outcome"] == "existing" and by_step["match"]["detail"]["number"] == alice_ext["Number"]
    assert by_step["plan"]["outcome"] == "update" and "LastName" in by_step["plan"]["detail"]["fields"]
    assert by_step["apply"]["outcome"] == "ok"
    assert by_step["contacts_read"]["outcome"] == "read" and by_step["contacts_read"]["detail"]["contacts"] >= 1
    assert by_step["phonebook_plan"]["detail"]["create"] == 1
    assert by_step["phonebook_apply"]["outcome"] == "ok"
    assert by_step["status_decide"]["outcome"] == "Out of office"
    assert by_step["status_decide"]["detail"]["reason"] == "automatic_replies"
    assert by_step["status_apply"]["outcome"] == "ok"
    nora_steps = {t["step"]: t for t in trace if t["user_id"] == new["id"]}
    assert nora_steps["resolve"]["detail"]["matched_by"] == "upn"
    assert nora_steps["match"]["outcome"] == "new" and nora_steps["match"]["detail"]["policy"] == "attribute"
    assert nora_steps["plan"]["outcome"] == "create" and nora_steps["apply"]["outcome"] == "ok"
    assert not [t for t in trace if t["user_id"] == bob["id"]]

    # the next regular delta run carries bob's pending changes of all three kinds
    assert_success(run_dag("m365_3cx_delta"))
    bob_now = _extension(env, bob["mail"])
    assert bob_now["LastName"] == "RenamedB" and bob_now["CurrentProfileName"] == "Out of office"
    assert len(_entries(env, "ContactB")) == 1 and len(_entries(env, "ContactA")) == 1


def test_only_unknown_entries_fail_the_run_naming_them(env: dict[str, Any]) -> None:
    env["pbx"].admin("DELETE", "counters")
    dag_run = run_dag("m365_3cx_delta", only_users=[GHOST, "99999"])
    assert "failed" in str(dag_run.state).lower()
    run = _last_run(env)
    assert run["mode"] == "on_demand" and run["status"] == "failed"
    assert "none of the 2 entries is a known user" in run["last_error"]
    assert GHOST in run["last_error"] and "99999" in run["last_error"]
    assert [t["upn"] for t in _trace(env, run["run_key"]) if t["outcome"] == "unknown"] == [GHOST, "99999"]
    assert int(env["pbx"].admin("GET", "counters").json()["writes"]) == 0
