"""The sync DAGs end to end: real Airflow (``dag.test()``), both emulators over HTTPS,
staging in a throwaway PostgreSQL database.

What the product promises, checked on the 3CX emulator's state:
a full sync creates exactly the expected extensions and a second run writes nothing;
renames, disables and deletes reach 3CX after one delta run; unmanaged extensions are
never modified; a failed run alerts once and writes nothing; an expired delta
token falls back to a full extract; throttling and 503s do not change the outcome.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa
from dag_helpers import assert_success, run_dag

pytestmark = [pytest.mark.dag, pytest.mark.postgres, pytest.mark.integration]

SETTINGS = {
    "numbering": {"policy": "attribute", "attribute": "extensionAttribute1", "fallback_to_pool": True,
                  "pool_first": "300", "pool_last": "399"},
    "extensions": {"removal_policy": "disable", "default_region": "US"},
    "guards": {"mass_removal_min": 5, "mass_removal_fraction": 0.10},
}


@pytest.fixture
def sync_env(dag_env: dict[str, Any]) -> dict[str, Any]:
    return dag_env


def pbx_users(env: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {u["Number"]: u for u in env["pbx"].admin("GET", "state").json()["users"]}


def graph_users(env: dict[str, Any]) -> list[dict[str, Any]]:
    return env["graph"].admin("GET", "state").json()["users"]


def pbx_writes(env: dict[str, Any]) -> int:
    counters = env["pbx"].admin("GET", "counters").json()
    return sum(n for key, n in counters["requests"].items()
               if key.split(" ", 1)[0] in ("POST", "PATCH", "DELETE") and "/xapi/" in key)


def last_run(env: dict[str, Any], dag_id: str) -> dict[str, Any]:
    with env["engine"].connect() as conn:
        row = conn.execute(sa.text(
            "SELECT run_key, status, counts FROM sync_runs WHERE dag_id = :d ORDER BY started_at DESC LIMIT 1"
        ), {"d": dag_id}).mappings().one()
    counts = row["counts"] if isinstance(row["counts"], dict) else json.loads(row["counts"] or "{}")
    return {"run_key": row["run_key"], "status": row["status"], "counts": counts}


def audit_ok_writes(env: dict[str, Any], run_key: str) -> int:
    with env["engine"].connect() as conn:
        return conn.execute(sa.text("SELECT count(*) FROM sync_audit WHERE run_key = :k AND result = 'ok'"),
                            {"k": run_key}).scalar_one()


def managed_members(env: dict[str, Any]) -> list[dict[str, Any]]:
    """Graph users the default settings put in 3CX: enabled, not deleted members."""
    return [u for u in graph_users(env)
            if u.get("accountEnabled") and not u.get("deleted") and u.get("userType", "Member") != "Guest"]


def test_full_sync_creates_expected_extensions_and_is_idempotent(sync_env: dict[str, Any]) -> None:
    before = pbx_users(sync_env)
    assert_success(run_dag("m365_3cx_full_sync"))

    after = pbx_users(sync_env)
    expected = managed_members(sync_env)
    by_mail = {u.get("EmailAddress"): u for u in after.values()}
    for user in expected:
        if user.get("mail"):
            ext = by_mail.get(user["mail"].lower())
            assert ext is not None, user["userPrincipalName"]
            assert ext["Enabled"] is True
            assert ext["LastName"] == user["surname"]
    assert len(after) == len(before) + len(expected)
    for number, unmanaged in before.items():
        assert after[number] == unmanaged, f"unmanaged extension {number} was modified"
    first = last_run(sync_env, "m365_3cx_full_sync")
    assert first["counts"]["apply"]["created"] == len(expected)
    assert audit_ok_writes(sync_env, first["run_key"]) > 0

    sync_env["pbx"].admin("DELETE", "counters")
    assert_success(run_dag("m365_3cx_full_sync"))
    second = last_run(sync_env, "m365_3cx_full_sync")
    assert second["run_key"] != first["run_key"]
    assert audit_ok_writes(sync_env, second["run_key"]) == 0
    assert pbx_writes(sync_env) == 0
    assert pbx_users(sync_env) == after


def test_delta_reflects_rename_disable_delete_and_leaves_unmanaged_alone(sync_env: dict[str, Any]) -> None:
    assert_success(run_dag("m365_3cx_full_sync"))
    unmanaged_before = {n: u for n, u in pbx_users(sync_env).items() if n in ("100", "101", "999")}
    members = [u for u in managed_members(sync_env) if u.get("mail")]
    renamed, disabled, deleted = members[0], members[1], members[2]
    graph = sync_env["graph"]
    graph.admin("PATCH", f"users/{renamed['id']}", json={"surname": "Renamed"})
    graph.admin("POST", f"users/{disabled['id']}/disable")
    graph.admin("DELETE", f"users/{deleted['id']}")

    assert_success(run_dag("m365_3cx_delta"))
    by_mail = {u.get("EmailAddress"): u for u in pbx_users(sync_env).values()}
    assert by_mail[renamed["mail"].lower()]["LastName"] == "Renamed"
    assert by_mail[disabled["mail"].lower()]["Enabled"] is False
    assert by_mail[deleted["mail"].lower()]["Enabled"] is False
    run = last_run(sync_env, "m365_3cx_delta")
    assert run["counts"]["extract"]["mode"] == "delta"
    assert run["counts"]["apply"]["updated"] == 1
    assert run["counts"]["apply"]["disabled"] == 2
    after = pbx_users(sync_env)
    for number, user in unmanaged_before.items():
        assert after[number] == user

    sync_env["pbx"].admin("DELETE", "counters")
    assert_success(run_dag("m365_3cx_delta"))
    assert pbx_writes(sync_env) == 0


def test_hand_edit_of_managed_field_is_put_back_by_full_sync(sync_env: dict[str, Any]) -> None:
    assert_success(run_dag("m365_3cx_full_sync"))
    member = next(u for u in managed_members(sync_env) if u.get("mail"))
    ext = next(u for u in pbx_users(sync_env).values() if u.get("EmailAddress") == member["mail"].lower())
    sync_env["pbx"].admin("PATCH", f"users/{ext['Id']}", json={"FirstName": "Edited by hand"})

    assert_success(run_dag("m365_3cx_full_sync"))
    assert pbx_users(sync_env)[ext["Number"]]["FirstName"] == ext["FirstName"]


def test_a_failed_run_sends_one_alert_and_writes_nothing(
    sync_env: dict[str, Any], smtp_inbox: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """(Removals over the guard no longer fail a run: they ask for approval, see test_approvals.py.)"""
    monkeypatch.setenv("AIRFLOW_VAR_M365_3CX_SETTINGS", json.dumps({
        **SETTINGS, "numbering": {"policy": "no-such-policy"},
        "alerts": {"channel": "smtp", "smtp_conn_id": "smtp_alerts", "to": ["ops@example.com"]},
    }))
    failed = run_dag("m365_3cx_delta")
    assert "failed" in str(failed.state).lower()
    assert pbx_writes(sync_env) == 0
    assert len(smtp_inbox.messages) == 1, "the failure alert was not sent"
    alert = smtp_inbox.html(smtp_inbox.messages[0])
    assert "m365_3cx_delta" in alert and failed.run_id in alert
    assert "numbering.policy" in alert, alert


def test_dry_run_writes_nothing(sync_env: dict[str, Any]) -> None:
    before = pbx_users(sync_env)
    assert_success(run_dag("m365_3cx_full_sync", dry_run=True))
    assert pbx_users(sync_env) == before
    assert pbx_writes(sync_env) == 0
    with sync_env["engine"].connect() as conn:
        planned = conn.execute(sa.text("SELECT count(*) FROM sync_plan WHERE action = 'create'")).scalar_one()
        recorded = conn.execute(sa.text("SELECT count(*) FROM extension_map")).scalar_one()
    assert planned == len(managed_members(sync_env))
    assert recorded == 0, "a dry run must not record extension numbers"

    # the real run after a dry run creates exactly what the dry run planned
    assert_success(run_dag("m365_3cx_full_sync"))
    with sync_env["engine"].connect() as conn:
        dry, real = (
            set(conn.execute(sa.text(
                "SELECT p.object_key, p.number FROM sync_plan p JOIN sync_runs r ON r.run_key = p.run_key "
                "WHERE p.action = 'create' AND r.dry_run = :d"), {"d": flag}).all())
            for flag in (True, False)
        )
    assert dry == real


def test_expired_delta_token_falls_back_to_full_extract(sync_env: dict[str, Any]) -> None:
    assert_success(run_dag("m365_3cx_full_sync"))
    member = next(u for u in managed_members(sync_env) if u.get("mail"))
    sync_env["graph"].admin("PATCH", f"users/{member['id']}", json={"givenName": "Changed"})
    sync_env["graph"].admin("POST", "delta/expire")

    assert_success(run_dag("m365_3cx_delta"))
    run = last_run(sync_env, "m365_3cx_delta")
    assert run["counts"]["extract"]["mode"] == "full"
    by_mail = {u.get("EmailAddress"): u for u in pbx_users(sync_env).values()}
    assert by_mail[member["mail"].lower()]["FirstName"] == "Changed"


def test_throttling_and_503s_do_not_change_the_outcome(sync_env: dict[str, Any]) -> None:
    for handle, path in ((sync_env["graph"], "^/v1.0/"), (sync_env["pbx"], "^/xapi/")):
        handle.admin("POST", "faults", json={"kind": "status", "status": 429, "retry_after": 0.05, "rate": 0.1,
                                             "path": path})
        handle.admin("POST", "faults", json={"kind": "status", "status": 503, "rate": 0.1, "path": path})
    assert_success(run_dag("m365_3cx_full_sync"))
    faulted = (sync_env["graph"].admin("GET", "counters").json()["faults"],
               sync_env["pbx"].admin("GET", "counters").json()["faults"])
    assert any(faulted), "the fault plan did not fire"
    for handle in (sync_env["graph"], sync_env["pbx"]):
        handle.admin("DELETE", "faults")
    managed = {n: u for n, u in pbx_users(sync_env).items() if u.get("EmailAddress")}
    expected_mails = {u["mail"].lower() for u in managed_members(sync_env) if u.get("mail")}
    assert expected_mails <= {u["EmailAddress"] for u in managed.values()}
    sync_env["pbx"].admin("DELETE", "counters")
    assert_success(run_dag("m365_3cx_full_sync"))
    assert pbx_writes(sync_env) == 0


def test_existing_extension_is_adopted_by_email_only_when_asked(
    sync_env: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    member = next(u for u in managed_members(sync_env) if u.get("mail"))
    existing = sync_env["pbx"].admin("POST", "users", json={
        "Number": "777", "FirstName": "Old", "LastName": "Name", "EmailAddress": member["mail"].lower(),
    }).json()

    # default: the hand-made extension is left alone; the user gets a new one of their own
    assert_success(run_dag("m365_3cx_full_sync", dry_run=True))
    assert pbx_users(sync_env)["777"]["FirstName"] == "Old"

    monkeypatch.setenv("AIRFLOW_VAR_M365_3CX_SETTINGS", json.dumps({
        **SETTINGS, "extensions": {**SETTINGS["extensions"], "adopt_existing": "email"},
    }))
    assert_success(run_dag("m365_3cx_full_sync"))
    adopted = pbx_users(sync_env)["777"]
    assert adopted["Id"] == existing["Id"]
    assert (adopted["FirstName"], adopted["LastName"]) == (member["givenName"], member["surname"])
    mails = [u.get("EmailAddress") for u in pbx_users(sync_env).values()]
    assert mails.count(member["mail"].lower()) == 1, "the adopted user must not get a second extension"
    with sync_env["engine"].connect() as conn:
        row = conn.execute(sa.text("SELECT number, adopted FROM extension_map WHERE user_id = :u"),
                           {"u": member["id"]}).one()
    assert row == ("777", True)
    untouched = pbx_users(sync_env)["102"]  # tagged MS: owned by 3CX's own M365 sync
    assert untouched["FirstName"] == "Megan"
