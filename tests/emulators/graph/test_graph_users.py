"""GET /users, single users, groups and /me against the emulator over HTTPS."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from emulators.graph.seed import build_tenant

pytestmark = pytest.mark.integration

DEFAULT_PROPS = {"businessPhones", "displayName", "givenName", "id", "jobTitle", "mail", "mobilePhone",
                 "officeLocation", "preferredLanguage", "surname", "userPrincipalName"}


def test_seed_is_deterministic_and_varied() -> None:
    first, again, other = build_tenant(42, 40), build_tenant(42, 40), build_tenant(43, 40)
    assert first == again
    assert [u["id"] for u in first.users] != [u["id"] for u in other.users]
    users = first.users
    assert len(users) == 40 and len({u["id"] for u in users}) == 40
    assert any(not u["displayName"].isascii() for u in users)
    assert sum(not u["accountEnabled"] for u in users) == 4
    guests = [u for u in users if u["userType"] == "Guest"]
    assert guests and all("#EXT#@contoso.example" in u["userPrincipalName"] for u in guests)
    assert any(u["mail"] is None for u in users)
    assert any(not u["businessPhones"] and u["mobilePhone"] is None for u in users)
    ext = [u["onPremisesExtensionAttributes"]["extensionAttribute1"] for u in users]
    assert sum(bool(e) for e in ext) > 25 and any(not e for e in ext)
    assert all(len(e) == 3 and e.isdigit() for e in ext if e)
    assert len({u["usageLocation"] for u in users}) >= 4


def test_paging_with_top_covers_every_user_once(caller: Any) -> None:
    items, pages = caller.all_pages("/v1.0/users?$top=7&$select=id,displayName")
    assert len(items) == 40 and len({u["id"] for u in items}) == 40
    assert len(pages) == 6
    first = pages[0]
    assert first["@odata.context"].endswith("/v1.0/$metadata#users(id,displayName)")
    link = first["@odata.nextLink"]
    query = parse_qs(urlsplit(link).query)
    assert link.startswith("https://") and query["$top"] == ["7"] and "$skiptoken" in query
    assert query["$select"] == ["id,displayName"]
    assert "@odata.nextLink" not in pages[-1]
    assert set(items[0]) == {"id", "displayName"}


def test_default_page_and_default_properties(caller: Any) -> None:
    page = caller.get("/v1.0/users").json()
    assert len(page["value"]) == 40 and "@odata.nextLink" not in page
    assert set(page["value"][0]) == DEFAULT_PROPS
    selected = caller.get("/v1.0/users?$select=id,accountEnabled,onPremisesExtensionAttributes").json()
    assert set(selected["value"][0]) == {"id", "accountEnabled", "onPremisesExtensionAttributes"}


@pytest.mark.parametrize(("url", "code"), [
    ("/v1.0/users?$skip=10", "Request_BadRequest"),
    ("/v1.0/users?$top=1000", "Request_UnsupportedQuery"),
    ("/v1.0/users?$filter=endswith(mail,'x')", "Request_UnsupportedQuery"),
    ("/v1.0/users?$filter=city gt 'a'", "Request_UnsupportedQuery"),
    ("/v1.0/users?$select=nope", "Request_BadRequest"),
    ("/v1.0/users?$count=true", "Request_UnsupportedQuery"),
])
def test_unsupported_queries_are_400(caller: Any, url: str, code: str) -> None:
    response = caller.get(url)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == code


def test_filters(caller: Any, graph: Any) -> None:
    users = graph.backend.list_users()
    enabled = caller.get("/v1.0/users?$filter=accountEnabled eq true&$select=id,accountEnabled").json()["value"]
    assert {u["id"] for u in enabled} == {u["id"] for u in users if u["accountEnabled"]}
    disabled = caller.get("/v1.0/users?$filter=accountEnabled eq false&$select=accountEnabled").json()["value"]
    assert len(disabled) == 4 and not any(u["accountEnabled"] for u in disabled)
    prefix = users[0]["displayName"][:3]
    started = caller.get(f"/v1.0/users?$filter=startswith(displayName,'{prefix.lower()}')").json()["value"]
    assert started and all(u["displayName"].lower().startswith(prefix.lower()) for u in started)
    combo = caller.get("/v1.0/users?$filter=userType eq 'Member' and (accountEnabled eq true or "
                       f"id eq '{users[7]['id']}')&$select=id,userType").json()["value"]
    expected = {u["id"] for u in users if u["userType"] == "Member" and (u["accountEnabled"] or u is users[7])}
    assert {u["id"] for u in combo} == expected


def test_count_needs_consistency_level_and_is_on_first_page_only(caller: Any) -> None:
    headers = {"ConsistencyLevel": "eventual"}
    _, pages = caller.all_pages("/v1.0/users?$count=true&$top=15&$filter=accountEnabled eq true", headers)
    assert pages[0]["@odata.count"] == 36
    assert all("@odata.count" not in p for p in pages[1:])
    ne = caller.get("/v1.0/users?$count=true&$filter=userType ne 'Member'", headers=headers).json()
    assert ne["@odata.count"] == 2


def test_single_user_by_id_and_upn(caller: Any, graph: Any) -> None:
    user = graph.backend.list_users()[3]
    by_id = caller.get(f"/v1.0/users/{user['id']}?$select=id,usageLocation").json()
    assert by_id["id"] == user["id"] and by_id["usageLocation"] == user["usageLocation"]
    by_upn = caller.get(f"/v1.0/users/{user['userPrincipalName']}").json()
    assert by_upn["id"] == user["id"] and set(by_upn) - {"@odata.context"} == DEFAULT_PROPS
    missing = caller.get("/v1.0/users/00000000-0000-4000-8000-000000000000")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "Request_ResourceNotFound"


def test_upn_addressing_follows_creates_renames_and_deletes(caller: Any, graph: Any) -> None:
    """Users are found by UPN (any case) through an index: it must follow every change of who holds a UPN."""
    made = graph.admin("POST", "/users", json={"userPrincipalName": "Indexed.User@contoso.example",
                                               "displayName": "Indexed User", "mail": "indexed@contoso.example"})
    uid = made.json()["id"]
    assert caller.get("/v1.0/users/indexed.user@CONTOSO.example").json()["id"] == uid
    assert caller.get("/v1.0/users/indexed.user@contoso.example/mailboxSettings").status_code == 200
    graph.admin("PATCH", f"/users/{uid}", json={"userPrincipalName": "Renamed.User@contoso.example"})
    assert caller.get("/v1.0/users/indexed.user@contoso.example").status_code == 404
    assert caller.get("/v1.0/users/renamed.user@contoso.example").json()["id"] == uid
    graph.admin("DELETE", f"/users/{uid}")
    assert caller.get("/v1.0/users/renamed.user@contoso.example").status_code == 404
    gone = caller.get("/v1.0/users/renamed.user@contoso.example/mailboxSettings").json()
    assert gone["error"]["code"] == "MailboxNotEnabledForRESTAPI"  # soft-deleted: still known by its UPN
    graph.admin("DELETE", f"/users/{uid}?hard=true")
    again = graph.admin("POST", "/users", json={"userPrincipalName": "renamed.user@contoso.example",
                                                "displayName": "Second Holder"}).json()
    assert caller.get("/v1.0/users/Renamed.User@contoso.example").json()["id"] == again["id"] != uid
    assert caller.get("/v1.0/users/nobody@contoso.example/mailboxSettings").json()["error"]["code"] == \
        "ErrorInvalidUser"


def _telephony_group(graph: Any) -> dict[str, Any]:
    return next(g for g in graph.admin("GET", "/state").json()["groups"] if g["displayName"] == "Telephony Users")


def test_group_transitive_members_are_paged_users(caller: Any, graph: Any) -> None:
    group = _telephony_group(graph)
    url = f"/v1.0/groups/{group['id']}/transitiveMembers/microsoft.graph.user?$top=10&$select=id,displayName"
    items, pages = caller.all_pages(url)
    enabled_members = {u["id"] for u in graph.backend.list_users()
                       if u["accountEnabled"] and u["userType"] == "Member"}
    assert {u["id"] for u in items} == enabled_members
    assert len(pages) == 4
    assert all(u["@odata.type"] == "#microsoft.graph.user" and set(u) == {"@odata.type", "id", "displayName"}
               for u in items)
    direct = caller.get(f"/v1.0/groups/{group['id']}/members").json()["value"]
    assert any(m["@odata.type"] == "#microsoft.graph.group" for m in direct)
    direct_users = caller.get(f"/v1.0/groups/{group['id']}/members/microsoft.graph.user?$top=999").json()["value"]
    assert 0 < len(direct_users) < len(enabled_members)

    graph.admin("PUT", f"/groups/{group['id']}/members", json={"members": [items[0]["id"]]})
    after = caller.get(f"/v1.0/groups/{group['id']}/transitiveMembers/microsoft.graph.user").json()["value"]
    assert [u["id"] for u in after] == [items[0]["id"]]
    missing = caller.get("/v1.0/groups/00000000-0000-4000-8000-000000000000/transitiveMembers/microsoft.graph.user")
    assert missing.status_code == 404


def test_me_and_unknown_paths(caller: Any) -> None:
    me = caller.get("/v1.0/me")
    assert me.status_code == 400
    assert me.json()["error"]["message"] == "/me request is only valid with delegated authentication flow."
    unknown = caller.get("/v1.0/nothingHere")
    assert unknown.status_code == 400 and "nothingHere" in unknown.json()["error"]["message"]
    assert caller.get("/v2.5/users").status_code == 404


def test_request_ids_are_returned_and_echoed(caller: Any) -> None:
    response = caller.get("/v1.0/users?$top=1", headers={"client-request-id": "abc-123"})
    assert response.headers["client-request-id"] == "abc-123"
    assert len(response.headers["request-id"]) == 36
    error = caller.get("/v1.0/me", headers={"client-request-id": "abc-123"}).json()["error"]["innerError"]
    assert error["client-request-id"] == "abc-123"


def test_any_unicode_name_is_stored_and_served_as_json(caller: Any, graph: Any) -> None:
    import json

    body = {"userPrincipalName": "lone.surrogate@contoso.example", "displayName": "Lone \ud800 Surrogate",
            "givenName": "Zero\u200bWidth\u202e", "surname": "Nul\u0000Byte", "mail": "lone.surrogate@contoso.example"}
    made = graph.admin("POST", "/users", data=json.dumps(body), headers={"Content-Type": "application/json"})
    assert made.status_code == 201, made.text
    assert "\\ud800" in made.text  # escaped the way a JSON writer must, not a 500
    listed = caller.get("/v1.0/users?$top=999&$select=id,displayName,givenName,surname")
    assert listed.status_code == 200
    mine = next(u for u in listed.json()["value"] if u["id"] == made.json()["id"])
    assert mine["displayName"] == "Lone \ud800 Surrogate"
    assert mine["givenName"] == "Zero\u200bWidth\u202e" and mine["surname"] == "Nul\u0000Byte"
    delta = caller.get("/v1.0/users/delta?$select=displayName")
    assert delta.status_code == 200


def test_deleted_items_list_and_restore_as_graph_documents_them(caller: Any, graph: Any) -> None:
    user = caller.get("/v1.0/users?$top=1").json()["value"][0]
    graph.admin("DELETE", f"/users/{user['id']}")
    assert caller.get(f"/v1.0/users/{user['id']}").status_code == 404
    deleted = caller.get("/v1.0/directory/deletedItems/microsoft.graph.user?$select=id,userPrincipalName").json()
    assert [(u["id"], u["userPrincipalName"]) for u in deleted["value"]] == [(user["id"], user["userPrincipalName"])]
    assert deleted["value"][0]["deletedDateTime"] and deleted["value"][0]["@odata.type"] == "#microsoft.graph.user"

    url = f"{caller.info['graph_url']}/v1.0/directory/deletedItems/{user['id']}/restore"
    restored = caller.session.post(url, headers={"Authorization": f"Bearer {caller.token}"},
                                   verify=caller.info["ca_bundle"], timeout=10)
    assert restored.status_code == 200 and restored.json()["id"] == user["id"]
    assert caller.get(f"/v1.0/users/{user['id']}").json()["userPrincipalName"] == user["userPrincipalName"]
    assert caller.get("/v1.0/directory/deletedItems/microsoft.graph.user").json()["value"] == []
    again = caller.session.post(url, headers={"Authorization": f"Bearer {caller.token}"},
                                verify=caller.info["ca_bundle"], timeout=10)
    assert again.status_code == 404 and again.json()["error"]["code"] == "Request_ResourceNotFound"
