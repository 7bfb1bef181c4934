"""Outlook contacts -> 3CX company phonebook end to end: real Airflow (``dag.test()``), both
emulators over HTTPS, staging in a throwaway PostgreSQL database.

Checked on the 3CX emulator's state: a contact added, edited and deleted in Outlook appears,
changes and disappears after one delta run; a second run writes nothing; hand-made and M365
contacts are never touched; hand edits of our entries are put back and hand-deleted entries
re-created; the messy corpus gives per-record notes and every usable entry reaches 3CX.
"""

from __future__ import annotations

import json
from typing import Any

import pytest
import sqlalchemy as sa
from dag_helpers import assert_success
from dag_helpers import run_dag as run_dag_in_airflow

TAG = "m365-sync:"

pytestmark = [pytest.mark.dag, pytest.mark.postgres, pytest.mark.integration]

SETTINGS = {
    "numbering": {"policy": "attribute", "attribute": "extensionAttribute1", "fallback_to_pool": True,
                  "pool_first": "300", "pool_last": "399"},
    "extensions": {"removal_policy": "disable", "default_region": "US"},
    "contacts": {"personal_contacts": "all", "exclude_category": "Private", "shard_size": 15},
}


@pytest.fixture
def env(dag_env: dict[str, Any]) -> dict[str, Any]:
    return dag_env


def run_dag(dag_id: str, **conf: Any) -> Any:
    run = run_dag_in_airflow(dag_id, **conf)
    assert_success(run)
    return run


def phonebook(env: dict[str, Any]) -> list[dict[str, Any]]:
    return env["pbx"].admin("GET", "state").json()["contacts"]


def ours(env: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c["Tag"]: c for c in phonebook(env) if (c.get("Tag") or "").startswith(TAG)}


def foreign(env: dict[str, Any]) -> dict[int, dict[str, Any]]:
    return {c["Id"]: c for c in phonebook(env) if not (c.get("Tag") or "").startswith(TAG)}


def by_name(env: dict[str, Any], first: str) -> list[dict[str, Any]]:
    return [c for c in ours(env).values() if c.get("FirstName") == first]


def pbx_writes(env: dict[str, Any]) -> int:
    counters = env["pbx"].admin("GET", "counters").json()
    return sum(n for key, n in counters["requests"].items()
               if key.split(" ", 1)[0] in ("POST", "PATCH", "DELETE") and "/xapi/" in key)


def sql(env: dict[str, Any], query: str, **params: Any) -> list[dict[str, Any]]:
    with env["engine"].connect() as conn:
        return [dict(r) for r in conn.execute(sa.text(query), params).mappings().all()]


def mailbox_owner(env: dict[str, Any], index: int = 0) -> str:
    users = [u for u in env["graph"].admin("GET", "state").json()["users"]
             if u.get("mail") and u.get("userType", "Member") == "Member" and u.get("accountEnabled")
             and not u.get("deleted")]
    return sorted(users, key=lambda u: u["id"])[index]["id"]


def test_outlook_add_edit_delete_reach_the_phonebook_after_one_delta_run(env: dict[str, Any]) -> None:
    graph = env["graph"]
    owner = mailbox_owner(env)
    edited = graph.admin("POST", f"users/{owner}/contacts",
                         json={"givenName": "Edda", "surname": "Edit", "mobilePhone": "+49 170 5550001"}).json()
    doomed = graph.admin("POST", f"users/{owner}/contacts",
                         json={"givenName": "Dora", "surname": "Doomed", "businessPhones": ["+49 30 5550002"],
                               "folder": "3CX"}).json()
    foreign_before = foreign(env)
    run_dag("m365_3cx_full_sync")
    assert len(by_name(env, "Edda")) == 1 and len(by_name(env, "Dora")) == 1
    assert foreign(env) == foreign_before
    desired = sql(env, "SELECT tag FROM tgt_phonebook")
    assert {r["tag"] for r in desired} == set(ours(env))

    graph.admin("PATCH", f"users/{owner}/contacts/{edited['id']}", json={"jobTitle": "Head of Edits",
                                                                        "businessPhones": ["+49 30 5550003"]})
    graph.admin("DELETE", f"users/{owner}/contacts/{doomed['id']}")
    graph.admin("POST", f"users/{owner}/contacts",
                json={"givenName": "Ned", "surname": "New", "homePhones": ["+44 20 7946 0999"]})
    env["pbx"].admin("DELETE", "counters")
    run_dag("m365_3cx_delta")

    (edda,) = by_name(env, "Edda")
    assert edda["Title"] == "Head of Edits" and edda["Business"] == "+49305550003"
    assert by_name(env, "Dora") == []
    (ned,) = by_name(env, "Ned")
    assert ned["PhoneNumber"] == "+442079460999" and ned["LastName"] == "New"
    assert pbx_writes(env) == 3  # one update, one delete, one create
    assert foreign(env) == foreign_before
    audit = sql(env, "SELECT action, count(*) AS n FROM sync_audit WHERE object_type = 'contact' "
                     "AND result = 'ok' AND run_key LIKE 'm365_3cx_delta/%' GROUP BY action")
    assert {r["action"] for r in audit} == {"create", "update", "delete"}

    env["pbx"].admin("DELETE", "counters")
    run_dag("m365_3cx_delta")
    assert pbx_writes(env) == 0
    reads = env["pbx"].admin("GET", "counters").json()["requests"]
    assert reads.get("GET /xapi/v1/Contacts", 0) == 0, "a delta run without changes must not read the phonebook"
    env["pbx"].admin("DELETE", "counters")
    run_dag("m365_3cx_full_sync")
    assert pbx_writes(env) == 0
    assert foreign(env) == foreign_before


def test_hand_edits_are_put_back_hand_deletes_recreated_and_foreign_contacts_left_alone(
        env: dict[str, Any]) -> None:
    pbx = env["pbx"]
    hand_made = pbx.admin("POST", "contacts", json={"FirstName": "Hand", "LastName": "Made",
                                                    "PhoneNumber": "+49 30 1111111"}).json()
    other_tag = pbx.admin("POST", "contacts", json={"FirstName": "Other", "PhoneNumber": "+49 30 2222222",
                                                    "Tag": "crm-sync:42"}).json()
    run_dag("m365_3cx_full_sync")
    foreign_before = foreign(env)
    assert hand_made["Id"] in foreign_before and other_tag["Id"] in foreign_before
    managed = sorted(ours(env).values(), key=lambda c: c["Id"])
    edited, deleted = managed[0], managed[1]
    pbx.admin("PATCH", f"contacts/{edited['Id']}", json={"FirstName": "Tampered", "Pager": "+1 206 555 0100"})
    pbx.admin("DELETE", f"contacts/{deleted['Id']}")

    run_dag("m365_3cx_delta")  # nothing changed in Microsoft 365: the delta run leaves the phonebook alone
    assert ours(env)[edited["Tag"]]["FirstName"] == "Tampered"

    run_dag("m365_3cx_full_sync")  # the reconciliation repairs the drift
    after = ours(env)
    assert after[edited["Tag"]]["FirstName"] == edited["FirstName"]
    assert after[edited["Tag"]]["Pager"] == "+1 206 555 0100"  # not a managed field: left as the user set it
    assert deleted["Tag"] in after and after[deleted["Tag"]]["Id"] != deleted["Id"]
    assert foreign(env) == foreign_before
    assert any(c.get("ContactType") == "M365" for c in foreign_before.values())


def test_messy_corpus_gives_notes_and_every_usable_entry_reaches_3cx(env: dict[str, Any]) -> None:
    run_dag("m365_3cx_full_sync")
    notes = sql(env, "SELECT field, severity, message FROM sync_notes WHERE object_type = 'contact'")
    assert any(n["severity"] == "info" and "no dialable number" in n["message"] for n in notes)
    assert not any(n["severity"] == "error" for n in notes)  # messy data is not an operator's error
    assert any("extension" in n["message"] and "dropped" in n["message"] for n in notes)
    assert any(n["field"] == "CompanyName" and "truncated" in n["message"] for n in notes)
    failed = sql(env, "SELECT count(*) AS n FROM sync_audit WHERE object_type = 'contact' AND result <> 'ok'")
    assert failed[0]["n"] == 0
    desired = {r["tag"]: r for r in sql(env, "SELECT * FROM tgt_phonebook")}
    assert set(desired) == set(ours(env)) and desired
    assert any(r["copies"] > 1 for r in desired.values())  # the same person held by several users: one entry
    names = {c.get("FirstName") for c in ours(env).values()}
    assert {"محمد", "דוד"} <= names  # right-to-left names reach 3CX unchanged
    # the emoji contact's only number is in a range reserved for drama: noted, not guessed at
    assert any("'+44 7700 900123'" in n["message"] for n in notes)
    assert not any(c.get("FirstName") == "Secret" for c in ours(env).values())  # category "Private"


def test_personal_contacts_off_removes_synced_entries_and_dry_run_writes_nothing(
        env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    run_dag("m365_3cx_full_sync")
    assert ours(env)
    foreign_before = foreign(env)
    monkeypatch.setenv("AIRFLOW_VAR_M365_3CX_SETTINGS", json.dumps(
        {**SETTINGS, "contacts": {"personal_contacts": "off"}, "guards": {"mass_removal_fraction": 1.0}}))
    env["pbx"].admin("DELETE", "counters")
    run_dag("m365_3cx_delta", dry_run=True)
    assert pbx_writes(env) == 0 and ours(env)
    run_dag("m365_3cx_delta")
    assert ours(env) == {}
    assert foreign(env) == foreign_before


def test_shared_mailbox_and_organisational_contacts_reach_the_phonebook_full_and_delta(
        env: dict[str, Any], monkeypatch: pytest.MonkeyPatch) -> None:
    """Issue 12 #2: both sources through the full and delta DAGs, deduped with personal contacts,
    privacy exclusion for the shared mailbox, removal when a source is dropped, idempotent."""
    graph = env["graph"]
    mailbox = graph.admin("POST", "users", json={
        "userPrincipalName": "reception@contoso.example", "displayName": "Reception",
        "mail": "reception@contoso.example", "accountEnabled": False}).json()  # how Graph shows a shared mailbox
    mid = mailbox["id"]
    lena = {"givenName": "Lena", "surname": "Locksmith", "mobilePhone": "+49 170 5550100"}
    graph.admin("POST", f"users/{mid}/contacts", json={**lena, "jobTitle": "Locks"})
    graph.admin("POST", f"users/{mailbox_owner(env)}/contacts", json=lena)  # the same person, held by a user too
    graph.admin("POST", f"users/{mid}/contacts", json={"givenName": "Pia", "surname": "Private",
                                                       "mobilePhone": "+49 170 5550101", "categories": ["Private"]})
    desk = graph.admin("POST", "orgContacts", json={
        "displayName": "Fabrikam Desk", "givenName": "Fabi", "surname": "Desk", "companyName": "Fabrikam",
        "mail": "desk@fabrikam.example", "phones": [{"type": "business", "number": "+1 206 555 0100"}]}).json()
    old = graph.admin("POST", "orgContacts", json={"displayName": "Olga Old", "givenName": "Olga", "surname": "Old",
                                                   "phones": [{"type": "mobile", "number": "+1 206 555 0199"}]}).json()
    both = {**SETTINGS, "contacts": {**SETTINGS["contacts"], "shared_mailboxes": ["reception@contoso.example"],
                                     "org_contacts": True}, "guards": {"mass_removal_fraction": 1.0}}
    monkeypatch.setenv("AIRFLOW_VAR_M365_3CX_SETTINGS", json.dumps(both))
    foreign_before = foreign(env)

    run_dag("m365_3cx_full_sync")
    (entry,) = by_name(env, "Lena")
    assert entry["Title"] == "Locks"  # one entry for both copies
    assert by_name(env, "Pia") == []  # exclude_category applies to shared mailboxes
    (fabi,) = by_name(env, "Fabi")
    assert (fabi["CompanyName"], fabi["PhoneNumber"], fabi["Email"]) == ("Fabrikam", "+12065550100",
                                                                         "desk@fabrikam.example")
    assert len(by_name(env, "Olga")) == 1
    sources = {(r["source"], r["owner_id"]) for r in sql(env, "SELECT DISTINCT source, owner_id FROM stg_contacts "
                                                               "WHERE NOT deleted AND source <> 'personal'")}
    assert sources == {("shared", f"shared:{mid}"), ("org", "org")}
    assert sql(env, "SELECT count(*) AS n FROM stg_contacts WHERE owner_id = :m", m=mid)[0]["n"] == 0

    graph.admin("PATCH", f"orgContacts/{desk['id']}", json={"phones": [{"type": "business",
                                                                        "number": "+1 206 555 0111"}]})
    graph.admin("DELETE", f"orgContacts/{old['id']}")
    graph.admin("POST", f"users/{mid}/contacts", json={"givenName": "Nora", "surname": "New",
                                                       "businessPhones": ["+49 30 5550102"]})
    run_dag("m365_3cx_delta")
    assert by_name(env, "Fabi")[0]["PhoneNumber"] == "+12065550111"
    assert by_name(env, "Olga") == [] and len(by_name(env, "Nora")) == 1

    env["pbx"].admin("DELETE", "counters")
    run_dag("m365_3cx_delta")  # nothing changed anywhere
    assert pbx_writes(env) == 0

    dropped = {**both, "contacts": {**SETTINGS["contacts"], "shared_mailboxes": [], "org_contacts": False}}
    monkeypatch.setenv("AIRFLOW_VAR_M365_3CX_SETTINGS", json.dumps(dropped))
    run_dag("m365_3cx_delta")
    assert by_name(env, "Fabi") == []  # organisational contacts off: their entries go
    assert sql(env, "SELECT count(*) AS n FROM stg_contacts WHERE source IN ('shared', 'org') "
                    "AND NOT deleted")[0]["n"] == 0
    # Off the list, the mailbox is an in-scope user with a mailbox like any other: personal_contacts
    # "all" reads it as a personal owner now (its contacts keep their entries, under the mailbox's id).
    assert len(by_name(env, "Nora")) == 1 and len(by_name(env, "Lena")) == 1
    assert sql(env, "SELECT count(*) AS n FROM stg_contacts WHERE owner_id = :m AND source = 'personal' "
                    "AND NOT deleted", m=mid)[0]["n"] == 3 - 1  # Pia stays out (category Private)
    assert foreign(env) == foreign_before
