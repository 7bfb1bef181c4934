"""Removal grace period, protected users, clearing emptied fields and the scope explanation end to end:
real Airflow (``dag.test()``), both emulators over HTTPS, staging on PostgreSQL.

One tenant story, run after run (the grace period is shortened by ageing ``removal_since`` in
staging, as 30 days passing would):

* full sync: protected (UPN, group) and opted-out users get no extension, one info note each;
* delta: deleted users and a user taken out of the scope group are disabled, not deleted; emptied
  fields are cleared or kept per ``extensions.clear_on_empty`` (every managed field both ways, over
  two runs); a managed user put into the protected group is neither changed nor disabled;
* a user restored from deleted items (``POST /directory/deletedItems/{id}/restore``) within the
  grace period gets the same extension back, enabled; a dry run of the grace expiry deletes
  nothing; the real run deletes the one whose grace ran out (planned, guarded, audited);
* an on-demand run traces why each user is in or out of scope, and the console's users page (its
  JSON twin) says the same; a user restored after the delete gets the kept number re-created;
* a delta with no user changes and no grace expiry reads nothing from 3CX; the full sync deletes
  an extension whose grace period ran out earlier.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest
import requests
import sqlalchemy as sa
from dag_helpers import assert_success, run_dag

pytestmark = [pytest.mark.dag, pytest.mark.postgres, pytest.mark.integration]

OPT_OUT = "extensionAttribute5"
SETTINGS = {
    "numbering": {"policy": "attribute", "attribute": "extensionAttribute1", "fallback_to_pool": True,
                  "pool_first": "300", "pool_last": "399"},
    "extensions": {"removal_policy": "disable_then_delete", "delete_after_days": 30, "default_region": "US",
                   "manage_outbound_caller_id": True, "clear_on_empty": {"Mobile": False, "EmailAddress": False}},
    "guards": {"mass_removal_min": 5, "mass_removal_fraction": 0.10},
}


def _state(env: dict[str, Any]) -> dict[str, Any]:
    return env["graph"].admin("GET", "state").json()


def _pbx(env: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {u["Id"]: u for u in env["pbx"].admin("GET", "state").json()["users"]}


def _map(env: dict[str, Any]) -> dict[str, dict[str, Any]]:
    with env["engine"].connect() as conn:
        return {r["user_id"]: dict(r) for r in conn.execute(sa.text("SELECT * FROM extension_map")).mappings()}


def _last_run(env: dict[str, Any]) -> dict[str, Any]:
    with env["engine"].connect() as conn:
        row = dict(conn.execute(sa.text(
            "SELECT run_key, mode, status, dry_run, counts FROM sync_runs ORDER BY started_at DESC LIMIT 1"
        )).mappings().one())
    row["counts"] = row["counts"] if isinstance(row["counts"], dict) else json.loads(row["counts"] or "{}")
    return row


def _plan(env: dict[str, Any], run_key: str) -> dict[str, list[tuple[str, str]]]:
    with env["engine"].connect() as conn:
        rows = conn.execute(sa.text("SELECT object_key, action, reason, status FROM sync_plan WHERE run_key = :k"),
                            {"k": run_key}).all()
    out: dict[str, list[tuple[str, str]]] = {}
    for key, action, reason, status in rows:
        out.setdefault(key, []).append((action, reason, status))
    return out


def _restore(env: dict[str, Any], user_id: str) -> None:
    """Restore a deleted user the way an admin does: Graph ``POST /directory/deletedItems/{id}/restore``."""
    info = env["graph"].info
    token = requests.post(f"{info['authority']}/oauth2/v2.0/token", verify=info["ca_bundle"], timeout=10, data={
        "grant_type": "client_credentials", "client_id": info["client_id"], "client_secret": info["client_secret"],
        "scope": "https://graph.microsoft.com/.default"}).json()["access_token"]
    response = requests.post(f"{info['graph_url']}/v1.0/directory/deletedItems/{user_id}/restore",
                             headers={"Authorization": f"Bearer {token}"}, verify=info["ca_bundle"], timeout=10)
    assert response.status_code == 200, response.text


def test_grace_period_protection_clear_on_empty_and_scope_explanation(
        dag_env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    env, graph = dag_env, dag_env["graph"]
    state = _state(env)
    groups = {g["displayName"]: g for g in state["groups"]}
    scope_group, protected_group = groups["Telephony Users"], groups["Telephony Overflow"]
    shielded = set(protected_group["members"])
    members = sorted((u for u in state["users"] if u.get("mail") and u.get("accountEnabled")
                      and u.get("userType", "Member") == "Member" and u["id"] not in shielded),
                     key=lambda u: u["id"])
    deleted, restored, moved_out, to_protect, protected, opted = members[:6]
    guest = next(u for u in state["users"] if u.get("userType") == "Guest")
    disabled = next(u for u in state["users"] if not u.get("accountEnabled") and u.get("userType") == "Member")
    settings = {**SETTINGS, "scope": {"group_id": scope_group["id"], "protected_group_id": protected_group["id"],
                                      "protected_upns": [protected["userPrincipalName"].upper()],
                                      "opt_out_attribute": OPT_OUT}}
    monkeypatch.setenv("AIRFLOW_VAR_M365_3CX_SETTINGS", json.dumps(settings))
    graph.admin("PATCH", f"users/{opted['id']}", json={"onPremisesExtensionAttributes": {OPT_OUT: "No-3CX-Sync"}})

    # 1. full sync: no extension for the protected and opted-out users, one info note each
    assert_success(run_dag("m365_3cx_full_sync"))
    run1 = _last_run(env)
    mapped = _map(env)
    assert protected["id"] not in mapped and opted["id"] not in mapped
    assert not shielded & set(mapped)
    for user in (deleted, restored, moved_out, to_protect):
        assert user["id"] in mapped and mapped[user["id"]]["threecx_id"] is not None
    with env["engine"].connect() as conn:
        info = dict(conn.execute(sa.text(
            "SELECT object_key, message FROM sync_notes WHERE run_key = :k AND severity = 'info' AND field = 'scope'"
        ), {"k": run1["run_key"]}).all())
    assert "scope.protected_upns" in info[protected["id"]] and OPT_OUT in info[opted["id"]]
    assert shielded <= set(info) and "protected group" in info[next(iter(shielded))]
    before = _pbx(env)
    ids = {u["id"]: mapped[u["id"]]["threecx_id"] for u in members if u["id"] in mapped}
    spare = [u for u in members[6:] if u["id"] in ids]  # users whose fields get emptied, by what 3CX holds
    with_mobile = [u for u in spare if before[ids[u["id"]]]["Mobile"] and before[ids[u["id"]]]["FirstName"]]
    c1, c3 = with_mobile[:2]
    with_phone = [u for u in spare if before[ids[u["id"]]]["OutboundCallerID"] and before[ids[u["id"]]]["LastName"]
                  and before[ids[u["id"]]]["EmailAddress"] and u["id"] not in (c1["id"], c3["id"])]
    c2, c4 = with_phone[:2]

    # 2. delta: removals disable (the grace period starts), fields cleared or kept, protected untouched
    graph.admin("DELETE", f"users/{deleted['id']}")
    graph.admin("DELETE", f"users/{restored['id']}")
    graph.admin("PUT", f"groups/{scope_group['id']}/members",
                json=[m for m in scope_group["members"] if m != moved_out["id"]])
    graph.admin("PATCH", f"users/{c1['id']}", json={"givenName": None, "mobilePhone": None})
    graph.admin("PATCH", f"users/{c2['id']}", json={"surname": None, "mail": None, "businessPhones": []})
    graph.admin("PUT", f"groups/{protected_group['id']}/members", json=[*protected_group["members"], to_protect["id"]])
    graph.admin("PATCH", f"users/{to_protect['id']}", json={"surname": "ShouldNotReach3CX"})
    graph.admin("POST", f"users/{to_protect['id']}/disable")
    assert_success(run_dag("m365_3cx_delta"))
    run2 = _last_run(env)
    after = _pbx(env)
    for user in (deleted, restored, moved_out):
        assert after[ids[user["id"]]]["Enabled"] is False, user["userPrincipalName"]
    plan2 = _plan(env, run2["run_key"])
    assert plan2[deleted["id"]] == [("disable", "user deleted; deleted after 30 days unless the user is back",
                                     "applied")]
    assert plan2[moved_out["id"]][0][1].startswith("user out of scope")
    first, second = after[ids[c1["id"]]], after[ids[c2["id"]]]
    assert first["FirstName"] == "" and first["Mobile"] == before[ids[c1["id"]]]["Mobile"]  # cleared / kept
    assert second["LastName"] == "" and second["OutboundCallerID"] == ""  # cleared
    assert second["EmailAddress"] == before[ids[c2["id"]]]["EmailAddress"]  # kept (clear_on_empty false)
    assert after[ids[to_protect["id"]]] == before[ids[to_protect["id"]]]  # protected now: no change, no disable
    assert to_protect["id"] not in plan2
    clock = _map(env)
    assert all(clock[u["id"]]["removal_since"] is not None for u in (deleted, restored, moved_out))
    assert clock[c1["id"]]["removal_since"] is None

    # 3. the other way round for every field (clear_on_empty swapped), in the runs below
    swapped = {"FirstName": False, "LastName": False, "OutboundCallerID": False, "Mobile": True, "EmailAddress": True}
    settings["extensions"] = {**settings["extensions"], "clear_on_empty": swapped}
    monkeypatch.setenv("AIRFLOW_VAR_M365_3CX_SETTINGS", json.dumps(settings))
    graph.admin("PATCH", f"users/{c3['id']}", json={"givenName": None, "mobilePhone": None})
    graph.admin("PATCH", f"users/{c4['id']}", json={"surname": None, "mail": None, "businessPhones": []})

    # the restored user comes back; the deleted user's grace period runs out (as if 30 days passed)
    _restore(env, restored["id"])
    with env["engine"].begin() as conn:
        conn.execute(sa.text("UPDATE extension_map SET removal_since = now() - interval '30 days 1 second' "
                             "WHERE user_id = :u"), {"u": deleted["id"]})
    env["pbx"].admin("DELETE", "counters")
    assert_success(run_dag("m365_3cx_delta", dry_run=True))
    dry = _last_run(env)
    assert dry["dry_run"] and _pbx(env) == after
    plan_dry = _plan(env, dry["run_key"])
    assert [(a, s) for a, _, s in plan_dry[deleted["id"]]] == [("delete", "dry_run")]
    assert [(a, s) for a, _, s in plan_dry[restored["id"]]] == [("update", "dry_run")]
    assert _map(env)[restored["id"]]["removal_since"] is not None  # a dry run moves no clock

    assert_success(run_dag("m365_3cx_delta"))
    run3 = _last_run(env)
    now = _pbx(env)
    assert ids[deleted["id"]] not in now  # deleted in 3CX after the grace period
    back = now[ids[restored["id"]]]  # same 3CX user, same number, enabled again
    assert back["Enabled"] is True and back["Number"] == before[ids[restored["id"]]]["Number"]
    third, fourth = now[ids[c3["id"]]], now[ids[c4["id"]]]
    assert third["FirstName"] == before[ids[c3["id"]]]["FirstName"] and third["Mobile"] == ""  # kept / cleared
    assert fourth["LastName"] == before[ids[c4["id"]]]["LastName"]  # kept
    assert fourth["OutboundCallerID"] == before[ids[c4["id"]]]["OutboundCallerID"]  # kept
    assert fourth["EmailAddress"] == ""  # cleared
    plan3 = _plan(env, run3["run_key"])
    assert plan3[restored["id"]] == [("update", "user back within the grace period, re-enabled", "applied")]
    (action, reason, status), = plan3[deleted["id"]]
    assert (action, status) == ("delete", "applied") and "grace period of 30 days over" in reason
    clock = _map(env)
    assert clock[deleted["id"]]["status"] == "released" and clock[restored["id"]]["removal_since"] is None
    assert clock[moved_out["id"]]["removal_since"] is not None and now[ids[moved_out["id"]]]["Enabled"] is False
    with env["engine"].connect() as conn:
        audited = conn.execute(sa.text("SELECT action, result FROM sync_audit WHERE run_key = :k AND object_key = :u"),
                               {"k": run3["run_key"], "u": deleted["id"]}).all()
    assert audited == [("delete", "ok")]

    # 4. on demand: the trace says why each user is in or out of scope, and so does the console
    only = [u["userPrincipalName"] for u in (moved_out, guest, disabled, protected, opted, deleted, c1)]
    assert_success(run_dag("m365_3cx_delta", only_users=only))
    on_demand = _last_run(env)
    with env["engine"].connect() as conn:
        scope = {r["user_id"]: (r["outcome"], r["detail"]) for r in conn.execute(sa.text(
            "SELECT user_id, outcome, detail FROM sync_trace WHERE run_key = :k AND step = 'scope'"
        ), {"k": on_demand["run_key"]}).mappings()}

    def codes(user: dict[str, Any]) -> tuple[str, list[str]]:
        outcome, detail = scope[user["id"]]
        detail = detail if isinstance(detail, dict) else json.loads(detail)
        return outcome, [r["code"] for r in detail["reasons"]]

    assert codes(moved_out) == ("removed", ["not_in_group"])
    assert codes(guest)[0] == "removed" and {"not_in_group", "guest"} <= set(codes(guest)[1])
    assert codes(disabled)[0] == "removed" and "disabled" in codes(disabled)[1]
    assert codes(protected) == ("protected", ["protected_upn", "in_scope"])
    assert codes(opted) == ("protected", ["opted_out", "in_scope"])
    assert codes(deleted)[0] == "removed" and codes(deleted)[1][0] == "deleted"
    assert codes(c1) == ("in_scope", ["in_scope"])

    from m365_3cx.console import pages
    from m365_3cx.settings import Settings
    from m365_3cx.transform.scope import ScopeParams

    ctx = pages.Context(now=datetime.now(UTC), scope=ScopeParams.from_settings(Settings.from_mapping(settings)))
    with env["engine"].connect() as conn:
        page = pages.build("users", conn, {"id": moved_out["id"]}, ctx)
        listing = pages.build("users", conn, {}, ctx)
    why = page["history"]["scope"]
    assert why["verdict"] == "out_of_scope" and scope_group["id"] in why["reasons"][0]["message"]
    assert page["history"]["extension"]["removal_since"] is not None
    listed = {u["user_id"]: u["protection"] for u in listing["protected"]["items"]}
    assert listed[protected["id"]] == "protected_upn" and listed[opted["id"]] == "opted_out"
    assert listed[to_protect["id"]] == "protected_group"

    # 5. deleted after the grace period, restored within the quarantine: the kept number is re-created
    _restore(env, deleted["id"])
    assert_success(run_dag("m365_3cx_delta"))
    recreated = next(u for u in _pbx(env).values() if u["Number"] == before[ids[deleted["id"]]]["Number"])
    assert recreated["Enabled"] is True and recreated["Id"] != ids[deleted["id"]]
    row = _map(env)[deleted["id"]]
    assert (row["status"], row["threecx_id"], row["released_at"]) == ("active", recreated["Id"], None)

    # 6. nothing changed and no grace period ran out since the last run (one that ran out long ago is
    #    the full sync's): the delta reads nothing from 3CX, writes nothing
    with env["engine"].begin() as conn:
        conn.execute(sa.text("UPDATE extension_map SET removal_since = now() - interval '31 days' WHERE user_id = :u"),
                     {"u": moved_out["id"]})
    env["pbx"].admin("DELETE", "counters")
    assert_success(run_dag("m365_3cx_delta"))
    requests_made = env["pbx"].admin("GET", "counters").json()["requests"]
    assert not [k for k, n in requests_made.items() if n and "/xapi/" in k], requests_made
    assert ids[moved_out["id"]] in _pbx(env)

    # 7. the nightly full sync deletes every extension whose grace period is over
    assert_success(run_dag("m365_3cx_full_sync"))
    assert ids[moved_out["id"]] not in _pbx(env)
    full = _last_run(env)
    assert [a for a, _, _ in _plan(env, full["run_key"])[moved_out["id"]]] == ["delete"]
    assert _map(env)[moved_out["id"]]["status"] == "released"
