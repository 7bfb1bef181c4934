"""Hostile directory data end to end (issue 9): real Airflow (``dag.test()``), both emulators over
HTTPS, staging in a throwaway PostgreSQL database.

A user and an Outlook contact whose names hold NUL, 300 characters, zero-width and right-to-left
override characters sync in one full run: the run succeeds, 3CX gets clean names within its
limits, the rest of the tenant syncs as usual, and ``sync_notes`` names the record and the field
of every change. Two users whose mails differ only in case get one e-mail address between them,
with a note naming both. A second run writes nothing.
"""

from __future__ import annotations

from typing import Any

import pytest
import sqlalchemy as sa
from dag_helpers import assert_success, run_dag

pytestmark = [pytest.mark.dag, pytest.mark.postgres, pytest.mark.integration]

SETTINGS = {
    "numbering": {"policy": "pool", "pool_first": "300", "pool_last": "399"},
    "extensions": {"removal_policy": "disable", "default_region": "US"},
    "contacts": {"personal_contacts": "all", "exclude_category": "Private", "shard_size": 15},
}

LONG = "Ω" * 300
HOSTILE_USER = {
    "userPrincipalName": "hostile@contoso.example", "mail": "hostile@contoso.example", "usageLocation": "US",
    "displayName": "\u202eHostile\u202c User\x00",
    "givenName": "An\x00na\u200b\u200d",
    "surname": "\ufeff" + LONG,
    "jobTitle": "Chief\u2066 Tester\u2069",
}


@pytest.fixture
def env(dag_env: dict[str, Any]) -> dict[str, Any]:
    return dag_env


def _notes(env: dict[str, Any], key_like: str) -> list[dict[str, Any]]:
    with env["engine"].connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT step, object_type, object_key, record_label, field, severity, message FROM sync_notes "
            "WHERE object_key LIKE :k ORDER BY id"), {"k": key_like}).mappings().all()
    return [dict(r) for r in rows]


def test_hostile_user_and_contact_sync_clean_with_notes(env: dict[str, Any]) -> None:
    graph, pbx = env["graph"], env["pbx"]
    made = graph.admin("POST", "users", json=HOSTILE_USER)
    assert made.status_code == 201, made.text
    hostile = made.json()
    twin_a = graph.admin("POST", "users", json={"userPrincipalName": "twin.a@contoso.example", "displayName": "Twin A",
                                                "mail": "Twin@Contoso.example", "givenName": "Twin", "surname": "A"})
    assert twin_a.status_code == 201, twin_a.text
    contact = graph.admin("POST", f"users/{hostile['id']}/contacts", json={
        "givenName": "Bo\x00b\u200b", "surname": "\u202eStone" + "s" * 300, "companyName": "\u2066ACME\u2069" + LONG,
        "mobilePhone": "+1 425 555 0199\x00", "emailAddresses": [{"address": "bob\u200b@fabrikam.example"}],
    })
    assert contact.status_code == 201, contact.text
    contact_id = contact.json()["id"]

    assert_success(run_dag("m365_3cx_full_sync"))
    twin_b = graph.admin("POST", "users", json={"userPrincipalName": "twin.b@contoso.example", "displayName": "Twin B",
                                                "mail": "twin@contoso.example", "givenName": "Twin", "surname": "B"})
    assert twin_b.status_code == 201, twin_b.text
    assert_success(run_dag("m365_3cx_delta"))

    state = pbx.admin("GET", "state").json()
    extension = next(u for u in state["users"] if u.get("EmailAddress") == "hostile@contoso.example")
    assert extension["FirstName"] == "Anna"
    assert extension["LastName"] == "Ω" * 50
    twins = [u for u in state["users"] if u.get("LastName") in ("A", "B") and u.get("FirstName") == "Twin"]
    assert sorted((u["LastName"], u.get("EmailAddress") or None) for u in twins) == [
        ("A", "twin@contoso.example"), ("B", None)]
    entries = [c for c in state["contacts"] if (c.get("Tag") or "").startswith("m365-sync:")
               and c.get("FirstName") == "Bob" and (c.get("LastName") or "").startswith("Stone")]
    assert len(entries) == 1
    entry = entries[0]
    assert entry["LastName"] == "Stone" + "s" * 45 and entry["CompanyName"].startswith("ACMEΩ")
    assert len(entry["CompanyName"]) == 100 and entry["Email"] == "bob@fabrikam.example"
    for value in (extension["FirstName"], extension["LastName"], entry["FirstName"], entry["LastName"],
                  entry["CompanyName"]):
        assert not any(ch in value for ch in "\x00\u200b\u200d\u202e\u202c\u2066\u2069\ufeff")

    user_notes = _notes(env, hostile["id"])
    by_field = {(n["step"], n["field"]) for n in user_notes}
    assert {("sanitize", "givenName"), ("sanitize", "surname"), ("sanitize", "displayName"),
            ("sanitize", "jobTitle"), ("transform", "surname")} <= by_field
    sanitize = next(n for n in user_notes if n["step"] == "sanitize" and n["field"] == "givenName")
    assert sanitize["record_label"] == "hostile@contoso.example" and sanitize["object_type"] == "user"
    assert "U+0000" in sanitize["message"] and "hostile@contoso.example" in sanitize["message"]
    assert any("truncated to 50" in n["message"] for n in user_notes if n["step"] == "transform")
    contact_notes = _notes(env, f"{hostile['id']}/%")
    fields = {n["field"] for n in contact_notes if n["step"] == "sanitize"}
    assert {"givenName", "surname", "companyName", "mobilePhone", "emailAddresses[0]"} <= fields
    assert all(contact_id in n["message"] for n in contact_notes)
    assert any(n["field"] in ("CompanyName", "LastName") and "truncated" in n["message"] for n in contact_notes)
    twin_note = _notes(env, twin_b.json()["id"])
    assert [n["field"] for n in twin_note if n["step"] == "transform"] == ["mail"]
    assert "twin.a@contoso.example" in twin_note[0]["message"]

    pbx.admin("DELETE", "counters")
    assert_success(run_dag("m365_3cx_full_sync"))
    assert pbx.admin("GET", "counters").json()["writes"] == 0
