"""Removals over the mass-removal guard park the run for a human decision (Airflow HITL).

Real Airflow (``dag.test()``), both emulators over HTTPS, staging in PostgreSQL; the decision is
sent through Airflow's real REST API (``PATCH .../hitlDetails``, what "Required actions" sends)
by :class:`dag_helpers.HitlResponder`, or left to time out through the scheduler's own sweep.
Checked on the 3CX emulator's state: approve disables every removed user's extension; reject and
timeout leave them enabled but still apply the rest of the plan; the request's body names every
removal; the decision is stored (``sync_approvals``) and audited.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from dag_helpers import HitlResponder, assert_success, run_dag

pytestmark = [pytest.mark.dag, pytest.mark.postgres, pytest.mark.integration]

SETTINGS = {
    "numbering": {"policy": "attribute", "attribute": "extensionAttribute1", "fallback_to_pool": True,
                  "pool_first": "300", "pool_last": "399"},
    "extensions": {"removal_policy": "disable", "default_region": "US"},
    "guards": {"mass_removal_min": 5, "mass_removal_fraction": 0.10},
    "contacts": {"personal_contacts": "off"},
}


def pbx_by_mail(env: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {u.get("EmailAddress"): u for u in env["pbx"].admin("GET", "state").json()["users"]}


def members(env: dict[str, Any]) -> list[dict[str, Any]]:
    return [u for u in env["graph"].admin("GET", "state").json()["users"]
            if u.get("accountEnabled") and not u.get("deleted") and u.get("userType", "Member") != "Guest"
            and u.get("mail")]


def approval_row(env: dict[str, Any], object_type: str = "extension") -> dict[str, Any]:
    with env["engine"].connect() as conn:
        return dict(conn.execute(sa.text(
            "SELECT * FROM sync_approvals WHERE object_type = :t ORDER BY requested_at DESC LIMIT 1"
        ), {"t": object_type}).mappings().one())


def _guarded_delta(env: dict[str, Any]) -> tuple[list[dict[str, Any]], dict[str, Any]]:
    """Go live, sync, then disable 8 users (over the guard of 5) and rename another."""
    assert_success(run_dag("m365_3cx_full_sync"))
    users = members(env)
    victims, renamed = users[:8], users[8]
    for user in victims:
        env["graph"].admin("POST", f"users/{user['id']}/disable")
    env["graph"].admin("PATCH", f"users/{renamed['id']}", json={"surname": "Renamed"})
    env["pbx"].admin("DELETE", "counters")
    return victims, renamed


def _assert_body_names_every_removal(responder: HitlResponder, victims: list[dict[str, Any]],
                                     numbers: dict[str, str]) -> None:
    assert responder.error is None, responder.error
    assert len(responder.requests) == 1, responder.requests
    request = responder.requests[0]
    assert request["task_instance"]["task_id"] == "approve_extension_removals"
    assert request["options"] == ["Approve", "Reject"] and request["defaults"] == ["Reject"]
    body = request["body"]
    assert "8 of" in body and "(the guard allows 5)" in body
    for user in victims:
        line = next((ln for ln in body.splitlines() if f"| {user['userPrincipalName']} |" in ln), None)
        assert line is not None, f"{user['userPrincipalName']} missing from the approval body"
        assert f"| {numbers[user['mail'].lower()]} |" in line and "| disable |" in line


@pytest.mark.parametrize("answer", ["Approve", "Reject"])
def test_guarded_removals_wait_for_a_decision(dag_env: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                                              tmp_path: Path, smtp_inbox: Any, answer: str) -> None:
    monkeypatch.setenv("AIRFLOW_VAR_M365_3CX_SETTINGS", json.dumps({
        **SETTINGS, "alerts": {"channel": "smtp", "smtp_conn_id": "smtp_alerts", "to": ["ops@example.com"]}}))
    victims, renamed = _guarded_delta(dag_env)
    numbers = {mail: u["Number"] for mail, u in pbx_by_mail(dag_env).items()}

    with HitlResponder(monkeypatch, tmp_path, "m365_3cx_delta", answer, user="alice") as responder:
        run = run_dag("m365_3cx_delta")
    assert_success(run)
    _assert_body_names_every_removal(responder, victims, numbers)

    after = pbx_by_mail(dag_env)
    assert after[renamed["mail"].lower()]["LastName"] == "Renamed", "the rest of the plan was not applied"
    disabled = [u for u in victims if after[u["mail"].lower()]["Enabled"] is False]
    assert len(disabled) == (8 if answer == "Approve" else 0)

    row = approval_row(dag_env)
    assert row["status"] == ("approved" if answer == "Approve" else "rejected")
    assert row["decided_by"] == "alice" and row["decided_at"] is not None
    assert (row["removals"], row["removal_limit"], row["run_id"]) == (8, 5, run.run_id)
    with dag_env["engine"].connect() as conn:
        audited = conn.execute(sa.text("SELECT after FROM sync_audit WHERE object_type = 'approval'")).scalars().all()
        statuses = dict(conn.execute(sa.text(
            "SELECT status, count(*) FROM sync_plan WHERE run_key = :k AND action = 'disable' GROUP BY status"
        ), {"k": row["run_key"]}).all())
    assert audited == [f"{row['status']} by alice"]
    assert statuses == ({"applied": 8} if answer == "Approve" else {"rejected": 8})
    assert any("approval needed" in m["Subject"] for m in smtp_inbox.messages), "no approval request e-mail"

    dag_env["pbx"].admin("DELETE", "counters")
    if answer == "Reject":  # rejected removals are planned again by the next full reconciliation
        with HitlResponder(monkeypatch, tmp_path, "m365_3cx_full_sync", "Approve") as again:
            assert_success(run_dag("m365_3cx_full_sync"))
        assert again.error is None and len(again.requests) == 1
        assert all(pbx_by_mail(dag_env)[u["mail"].lower()]["Enabled"] is False for u in victims)


def test_no_answer_in_time_rejects(dag_env: dict[str, Any], monkeypatch: pytest.MonkeyPatch,
                                   tmp_path: Path) -> None:
    victims, renamed = _guarded_delta(dag_env)
    with HitlResponder(monkeypatch, tmp_path, "m365_3cx_delta", None) as responder:
        assert_success(run_dag("m365_3cx_delta"))
    assert responder.error is None, responder.error
    after = pbx_by_mail(dag_env)
    assert all(after[u["mail"].lower()]["Enabled"] is True for u in victims)
    assert after[renamed["mail"].lower()]["LastName"] == "Renamed"
    row = approval_row(dag_env)
    assert (row["status"], row["decided_by"]) == ("timed_out", None)


def test_within_the_guard_or_overridden_no_approval_is_asked(dag_env: dict[str, Any],
                                                             monkeypatch: pytest.MonkeyPatch,
                                                             tmp_path: Path) -> None:
    victims, _ = _guarded_delta(dag_env)
    with HitlResponder(monkeypatch, tmp_path, "m365_3cx_delta", "Reject") as responder:
        assert_success(run_dag("m365_3cx_delta", allow_mass_removal=True))
    assert responder.requests == []
    assert all(pbx_by_mail(dag_env)[u["mail"].lower()]["Enabled"] is False for u in victims)
    assert approval_row(dag_env)["status"] == "overridden"

    user = members(dag_env)[0]
    dag_env["graph"].admin("POST", f"users/{user['id']}/disable")
    with HitlResponder(monkeypatch, tmp_path, "m365_3cx_delta", "Reject") as responder:
        run = run_dag("m365_3cx_delta")
    assert_success(run)
    assert responder.requests == []
    assert pbx_by_mail(dag_env)[user["mail"].lower()]["Enabled"] is False
    states = {ti.task_id: str(ti.state) for ti in run.get_task_instances()}
    assert "skipped" in states["approve_extension_removals"].lower()
    assert "success" in states["apply_extensions"].lower()
