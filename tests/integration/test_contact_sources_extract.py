"""Shared-mailbox and organisational contacts against the Graph emulator over HTTPS, staged in a
throwaway PostgreSQL database: full and delta reads, removals, the exclusion category, a mailbox
taken off the list or unknown to Graph, and a missing OrgContact.Read.All."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from m365_3cx.errors import GraphFatalError
from m365_3cx.graph.auth import GraphCredentials
from m365_3cx.graph.client import GraphClient
from m365_3cx.http import RetryPolicy
from m365_3cx.pipeline.contact_sources import extract_other_sources
from m365_3cx.settings import Settings
from m365_3cx.staging.db import make_engine
from m365_3cx.staging.schema import create_schema

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

FAST = RetryPolicy(max_attempts=4, backoff_base=0.01, backoff_cap=0.05, max_total_wait=20, connect_timeout=5,
                   read_timeout=10)


def settings(**contacts: Any) -> Settings:
    return Settings.from_mapping({"contacts": {"shared_mailboxes": ["reception@contoso.example"],
                                               "org_contacts": True, **contacts}})


@pytest.fixture
def env(graph_emulator: Any, pg_database: str) -> Iterator[dict[str, Any]]:
    info = graph_emulator.info
    authority_host = str(info["authority"]).rstrip("/").rsplit("/", 1)[0]
    client = GraphClient(GraphCredentials(
        tenant_id=info["tenant_id"], client_id=info["client_id"], client_secret=info["client_secret"],
        authority_host=authority_host, graph_url=info["graph_url"], ca_bundle=info["ca_bundle"]), FAST)
    engine = make_engine(pg_database)
    create_schema(engine)
    graph = graph_emulator
    mailbox = graph.admin("POST", "users", json={
        "userPrincipalName": "reception@contoso.example", "displayName": "Reception",
        "mail": "reception@contoso.example", "accountEnabled": False}).json()
    yield {"graph": graph, "client": client, "engine": engine, "mailbox": mailbox["id"]}
    client.close()
    engine.dispose()


def staged(env: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    with env["engine"].connect() as conn:
        rows = conn.execute(sa.text("SELECT * FROM stg_contacts WHERE NOT deleted")).mappings().all()
    return {(r["source"], r["given_name"] or r["display_name"]): dict(r) for r in rows}


def run(env: dict[str, Any], mode: str, key: str, **contacts: Any) -> dict[str, Any]:
    return extract_other_sources(env["engine"], env["client"], settings(**contacts), key, mode,
                                 dt.datetime.now(dt.UTC))


def test_full_then_delta_reads_both_sources_with_removals_and_exclusions(env: dict[str, Any]) -> None:
    graph, mid = env["graph"], env["mailbox"]
    lena = graph.admin("POST", f"users/{mid}/contacts", json={"givenName": "Lena", "surname": "Lock",
                                                              "businessPhones": ["+49 30 5550100"]}).json()
    graph.admin("POST", f"users/{mid}/contacts", json={"givenName": "Pia", "mobilePhone": "+49 170 5550101",
                                                       "categories": ["Private"]})
    supplier = graph.admin("POST", "orgContacts", json={
        "displayName": "Fabrikam Desk", "givenName": "Fabi", "surname": "Desk", "companyName": "Fabrikam",
        "mail": "desk@fabrikam.example", "phones": [{"type": "business", "number": "+1 206 555 0100"}]}).json()
    doomed = graph.admin("POST", "orgContacts", json={"displayName": "Old Vendor", "givenName": "Olga",
                                                      "phones": [{"type": "mobile", "number": "+1 206 555 0199"}]})

    counts = run(env, "full", "full/1")
    assert (counts["mailboxes"], counts["org"]) == (1, 2) and counts["excluded"] == 1
    rows = staged(env)
    assert set(rows) == {("shared", "Lena"), ("org", "Fabi"), ("org", "Olga")}
    assert rows[("shared", "Lena")]["owner_id"] == f"shared:{mid}"
    assert rows[("org", "Fabi")]["business_phones"] == ["+1 206 555 0100"]
    assert rows[("org", "Olga")]["mobile_phone"] == "+1 206 555 0199"

    graph.admin("PATCH", f"users/{mid}/contacts/{lena['id']}", json={"jobTitle": "Locksmith"})
    new_phones = [{"type": "mobile", "number": "+1 206 555 0177"}]
    graph.admin("PATCH", f"orgContacts/{supplier['id']}", json={"jobTitle": "Key account", "phones": new_phones})
    graph.admin("DELETE", f"orgContacts/{doomed.json()['id']}")
    graph.admin("DELETE", "counters")
    counts = run(env, "delta", "delta/1")
    rows = staged(env)
    assert set(rows) == {("shared", "Lena"), ("org", "Fabi")}
    assert rows[("shared", "Lena")]["job_title"] == "Locksmith"
    assert (rows[("org", "Fabi")]["job_title"], rows[("org", "Fabi")]["mobile_phone"]) == ("Key account",
                                                                                          "+1 206 555 0177")
    calls = graph.admin("GET", "counters").json()["requests"]
    assert "GET /v1.0/contacts" not in calls  # a delta run never lists every organisational contact
    assert counts["deleted"] == 1

    again = run(env, "delta", "delta/2")
    assert (again["inserted"], again["updated"], again["deleted"]) == (0, 0, 0)


def test_mailboxes_off_the_list_or_unknown_lose_their_contacts_and_org_off_clears(env: dict[str, Any]) -> None:
    graph, mid = env["graph"], env["mailbox"]
    graph.admin("POST", f"users/{mid}/contacts", json={"givenName": "Lena", "businessPhones": ["+49 30 5550100"]})
    graph.admin("POST", "orgContacts", json={"displayName": "Desk", "phones": [{"type": "business",
                                                                               "number": "+1 206 555 0100"}]})
    run(env, "full", "full/1")
    assert len(staged(env)) == 2

    counts = run(env, "delta", "delta/1", shared_mailboxes=["nobody@contoso.example"], org_contacts=False)
    assert counts["missing_mailboxes"] == 1 and staged(env) == {}
    with env["engine"].connect() as conn:
        notes = conn.execute(sa.text("SELECT object_key, severity, message FROM sync_notes")).all()
    assert any(key == "nobody@contoso.example" and "no such user" in msg for key, _, msg in notes)


def test_a_named_folder_and_a_missing_permission(env: dict[str, Any]) -> None:
    graph, mid = env["graph"], env["mailbox"]
    graph.admin("POST", f"users/{mid}/contacts", json={"givenName": "Root", "businessPhones": ["+49 30 5550100"]})
    graph.admin("POST", f"users/{mid}/contacts", json={"givenName": "Shared", "businessPhones": ["+49 30 5550101"],
                                                       "folder": "Phonebook"})
    run(env, "full", "full/1", shared_mailbox_folder="Phonebook", org_contacts=False)
    assert set(staged(env)) == {("shared", "Shared")}

    granted = graph.admin("GET", "permissions").json()["granted"]
    graph.admin("PUT", "permissions", json={"granted": [g for g in granted if g != "OrgContact.Read.All"]})
    with pytest.raises(GraphFatalError, match=r"OrgContact\.Read\.All"):
        run(env, "full", "full/2")
