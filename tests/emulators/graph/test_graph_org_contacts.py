"""Organisational contacts and shared mailboxes on the Graph emulator over HTTPS: list, get and
delta of ``/contacts`` (``$select``, paging, ``@removed``, no ``phones`` in delta), the
``OrgContact.Read.All`` check, and a shared mailbox (a user with a mailbox, ``accountEnabled``
false) serving its contacts like any mailbox."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from emulators.common.handle import EmulatorHandle


def org(graph: EmulatorHandle, **props: Any) -> dict[str, Any]:
    return graph.admin("POST", "orgContacts", json=props).json()


def test_list_and_get_with_select_and_paging(graph: EmulatorHandle, caller: Any) -> None:
    made = [org(graph, displayName=f"Supplier {i}", givenName="Sam", surname=f"Supplier{i}",
                companyName="Fabrikam", mail=f"s{i}@fabrikam.example",
                phones=[{"type": "business", "number": f"+1 206 555 01{i:02d}"}, {"type": "mobile", "number": None}])
            for i in range(5)]
    items, pages = caller.all_pages("/v1.0/contacts?$select=id,displayName,phones&$top=2")
    assert len(pages) == 3 and [i["id"] for i in items] == [m["id"] for m in made]
    assert set(items[0]) == {"id", "displayName", "phones"}
    assert items[0]["phones"][0] == {"type": "business", "number": "+1 206 555 0100"}
    one = caller.get(f"/v1.0/contacts/{made[1]['id']}?$select=mail,companyName")
    assert one.status_code == 200 and one.json()["mail"] == "s1@fabrikam.example"
    assert caller.get("/v1.0/contacts?$select=nickname").status_code == 400
    assert caller.get("/v1.0/contacts?$top=1000").status_code == 400
    missing = caller.get("/v1.0/contacts/00000000-0000-0000-0000-000000000000")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "Request_ResourceNotFound"


def test_delta_rounds_report_changes_and_removals_without_phones(graph: EmulatorHandle, caller: Any) -> None:
    kept = org(graph, displayName="Kept", phones=[{"type": "business", "number": "+1 206 555 0111"}])
    gone = org(graph, displayName="Gone")
    items, pages = caller.all_pages("/v1.0/contacts/delta?$select=displayName,mail,phones")
    assert {i["id"] for i in items} == {kept["id"], gone["id"]}
    assert all("phones" not in i for i in items)  # delta does not return phones
    link = pages[-1]["@odata.deltaLink"]
    assert caller.all_pages(link)[0] == []  # nothing changed

    graph.admin("PATCH", f"orgContacts/{kept['id']}", json={"mail": "kept@fabrikam.example"})
    graph.admin("DELETE", f"orgContacts/{gone['id']}")
    added = org(graph, displayName="Added")
    items, pages = caller.all_pages(link)
    assert {i["id"]: i.get("@removed") for i in items} == {kept["id"]: None, gone["id"]: {"reason": "deleted"},
                                                            added["id"]: None}
    assert next(i for i in items if i["id"] == kept["id"]) == {"id": kept["id"], "displayName": "Kept",
                                                                "mail": "kept@fabrikam.example"}
    graph.admin("POST", "reset")
    stale = caller.get(pages[-1]["@odata.deltaLink"])
    assert stale.status_code == 400 and stale.json()["error"]["code"] == "syncStateNotFound"


def test_delta_pages_follow_the_preferred_page_size(graph: EmulatorHandle, caller: Any) -> None:
    for i in range(5):
        org(graph, displayName=f"Org {i}")
    items, pages = caller.all_pages("/v1.0/contacts/delta", headers={"Prefer": "odata.maxpagesize=2"})
    assert len(items) == 5 and len(pages) == 3


def test_org_contacts_need_their_permission(graph: EmulatorHandle, caller: Any) -> None:
    granted = graph.admin("GET", "permissions").json()["granted"]
    graph.admin("PUT", "permissions", json={"granted": [g for g in granted if g != "OrgContact.Read.All"]})
    for path in ("/v1.0/contacts", "/v1.0/contacts/delta"):
        response = caller.get(path)
        assert response.status_code == 403
        assert response.json()["error"]["code"] == "Authorization_RequestDenied"


def test_admin_api_refuses_unknown_properties(graph: EmulatorHandle) -> None:
    with pytest.raises(requests.HTTPError, match="400"):
        graph.admin("POST", "orgContacts", json={"nickname": "x"})
    with pytest.raises(requests.HTTPError, match="400"):
        graph.admin("POST", "orgContacts", json={"phones": [{"type": "cell", "number": "1"}]})
    with pytest.raises(requests.HTTPError, match="404"):
        graph.admin("DELETE", "orgContacts/nope")


def test_a_shared_mailbox_is_a_disabled_user_whose_mailbox_serves_contacts(graph: EmulatorHandle,
                                                                          caller: Any) -> None:
    mailbox = graph.admin("POST", "users", json={
        "userPrincipalName": "reception@contoso.example", "displayName": "Reception",
        "mail": "reception@contoso.example", "accountEnabled": False}).json()
    graph.admin("POST", f"users/{mailbox['id']}/contacts", json={"givenName": "Lena", "surname": "Locksmith",
                                                                 "businessPhones": ["+49 30 5550100"]})
    user = caller.get("/v1.0/users/reception@contoso.example?$select=id,accountEnabled,mail").json()
    assert (user["id"], user["accountEnabled"]) == (mailbox["id"], False)
    contacts = caller.get("/v1.0/users/reception@contoso.example/contacts?$select=givenName,parentFolderId").json()
    assert [c["givenName"] for c in contacts["value"]] == ["Lena"]
