"""Outlook contacts: folders, paging, delta rounds fed by the admin API, immutable ids, expiry, 404s."""

from __future__ import annotations

from typing import Any

import pytest

from emulators.graph.mailbox import MailboxOptions
from emulators.graph.state import TenantBackend

pytestmark = pytest.mark.integration

IMMUTABLE = {"Prefer": 'IdType="ImmutableId"'}


def _members_with_mail(graph: Any) -> list[dict[str, Any]]:
    return [u for u in graph.backend.list_users() if u["mail"] and u["userType"] == "Member"]


def _round(caller: Any, url: str, headers: dict[str, str] | None = None) -> tuple[list[dict[str, Any]], str]:
    items, pages = caller.all_pages(url, headers)
    for page in pages[:-1]:
        assert "@odata.nextLink" in page and "@odata.deltaLink" not in page
    assert "@odata.deltaLink" in pages[-1] and "@odata.nextLink" not in pages[-1]
    return items, pages[-1]["@odata.deltaLink"]


def _default_delta(caller: Any, uid: str) -> str:
    """The documented delta URL of the default folder: its id is any of its contacts' parentFolderId."""
    first = caller.get(f"/v1.0/users/{uid}/contacts?$top=1&$select=parentFolderId").json()["value"][0]
    return f"/v1.0/users/{uid}/contactFolders/{first['parentFolderId']}/contacts/delta"


def _add(graph: Any, user_id: str, count: int, folder: str | None = None) -> list[dict[str, Any]]:
    out = []
    for i in range(count):
        body: dict[str, Any] = {"givenName": f"Extra{i:02d}", "surname": "Contact",
                                "businessPhones": [f"+49 30 {i:07d}"]}
        if folder:
            body["folder"] = folder
        out.append(graph.admin("POST", f"/users/{user_id}/contacts", json=body).json())
    return out


def test_list_pages_by_ten_and_top(caller: Any, graph: Any) -> None:
    user = _members_with_mail(graph)[1]
    _add(graph, user["id"], 20)
    first = caller.get(f"/v1.0/users/{user['id']}/contacts").json()
    assert len(first["value"]) == 10 and "$skip=10" in first["@odata.nextLink"]
    items, pages = caller.all_pages(f"/v1.0/users/{user['id']}/contacts")
    total = len(items)
    assert total >= 20 and len(pages) == -(-total // 10)
    assert len({c["id"] for c in items}) == total
    big = caller.get(f"/v1.0/users/{user['id']}/contacts?$top=1000").json()
    assert len(big["value"]) == total and "@odata.nextLink" not in big
    assert caller.get(f"/v1.0/users/{user['id']}/contacts?$top=1001").status_code == 400
    selected = caller.get(f"/v1.0/users/{user['id']}/contacts?$select=displayName,mobilePhone&$top=3").json()
    assert all(set(c) <= {"@odata.etag", "id", "displayName", "mobilePhone"} for c in selected["value"])
    bad = caller.get(f"/v1.0/users/{user['id']}/contacts?$select=nope")
    assert bad.status_code == 400


def test_contact_shape_and_upn_addressing(caller: Any, graph: Any) -> None:
    user = _members_with_mail(graph)[0]
    contact = caller.get(f"/v1.0/users/{user['userPrincipalName']}/contacts?$top=1").json()["value"][0]
    for name in ("id", "displayName", "givenName", "middleName", "surname", "companyName", "department", "jobTitle",
                 "businessPhones", "homePhones", "mobilePhone", "emailAddresses", "categories", "parentFolderId",
                 "changeKey", "createdDateTime", "lastModifiedDateTime", "fileAs", "imAddresses"):
        assert name in contact
    assert contact["@odata.etag"] == f'W/"{contact["changeKey"]}"'
    assert isinstance(contact["businessPhones"], list) and isinstance(contact["emailAddresses"], list)


def test_folders_list_only_children_of_root(caller: Any, graph: Any) -> None:
    user = _members_with_mail(graph)[0]
    _add(graph, user["id"], 1, folder="Private stuff")
    folders = caller.get(f"/v1.0/users/{user['id']}/contactFolders").json()["value"]
    names = {f["displayName"] for f in folders}
    assert {"3CX", "Private stuff"} <= names and "Contacts" not in names
    three_cx = next(f for f in folders if f["displayName"] == "3CX")
    in_folder = caller.get(f"/v1.0/users/{user['id']}/contactFolders/{three_cx['id']}/contacts").json()["value"]
    assert in_folder and all(c["parentFolderId"] == three_cx["id"] for c in in_folder)
    default = caller.get(f"/v1.0/users/{user['id']}/contacts?$top=1000").json()["value"]
    assert not {c["id"] for c in default} & {c["id"] for c in in_folder}


def test_seeded_corpus_is_messy_and_deterministic(graph: Any) -> None:
    phones: list[str] = []
    names: list[str] = []
    categories: list[str] = []
    for user in _members_with_mail(graph):
        for contact in graph.admin("GET", f"/users/{user['id']}/mailbox").json()["contacts"]:
            phones += contact["businessPhones"] + [contact["mobilePhone"] or ""]
            names.append(contact["displayName"])
            categories += contact["categories"]
    for needle in ("+1 555 0100 x23", "(425) 555-0123 ext. 7", "1-800-FLOWERS", "030 1234567", "020 7946 0958"):
        assert needle in phones
    for name in ("😀 Party Line", "محمد الأحمد", "דוד לוי"):
        assert name in names
    assert names.count("Hans Zimmermann") >= 2 and "Private" in categories
    now = graph.backend.mailboxes.now
    one = TenantBackend(42, 40, mailbox_options=MailboxOptions(now=now))
    two = TenantBackend(42, 40, mailbox_options=MailboxOptions(now=now))
    uid = _members_with_mail(graph)[0]["id"]
    dump_one, dump_two = (b.mailboxes.dump(b.mailbox_for(uid)) for b in (one, two))
    assert dump_one["contacts"] == dump_two["contacts"]
    assert [e["subject"] for e in dump_one["events"]] == [e["subject"] for e in dump_two["events"]]


def test_no_mailbox_is_404_on_every_outlook_path(caller: Any, graph: Any) -> None:
    users = graph.backend.list_users()
    no_mail = next(u for u in users if not u["mail"])
    guest = next(u for u in users if u["userType"] == "Guest")
    for user in (no_mail, guest):
        for path in ("contacts", "contacts/delta", "contactFolders", "contactFolders/x/contacts",
                     "calendarView?startDateTime=2026-01-01&endDateTime=2026-01-02", "events", "mailboxSettings",
                     "mailboxSettings/automaticRepliesSetting"):
            response = caller.get(f"/v1.0/users/{user['id']}/{path}")
            assert response.status_code == 404, path
            assert response.json()["error"]["code"] == "MailboxNotEnabledForRESTAPI"
            assert response.json()["error"]["message"] == ("The mailbox is either inactive, soft-deleted, or is "
                                                           "hosted on-premise.")


def test_delta_rounds_report_add_edit_delete_move(caller: Any, graph: Any) -> None:
    user = _members_with_mail(graph)[1]
    uid = user["id"]
    _add(graph, uid, 7)
    url = _default_delta(caller, uid)
    first = caller.get(url, headers={"Prefer": "odata.maxpagesize=4"})
    assert first.headers["Preference-Applied"] == "odata.maxpagesize=4"
    initial, pages = caller.all_pages(url, {"Prefer": "odata.maxpagesize=4"})
    assert all(len(p["value"]) == 4 for p in pages[:-1])
    listed = caller.get(f"/v1.0/users/{uid}/contacts?$top=1000").json()["value"]
    assert {c["id"] for c in initial} == {c["id"] for c in listed}
    _, delta_link = _round(caller, url)

    edited, deleted, moved = listed[0], listed[1], listed[2]
    graph.admin("PATCH", f"/users/{uid}/contacts/{edited['id']}", json={"mobilePhone": "+49 151 00000000"})
    graph.admin("DELETE", f"/users/{uid}/contacts/{deleted['id']}")
    graph.admin("POST", f"/users/{uid}/contacts/{moved['id']}/move", json={"folder": "3CX"})
    added = _add(graph, uid, 1)[0]

    changes, next_link = _round(caller, delta_link)
    by_id = {c["id"]: c for c in changes}
    assert by_id[edited["id"]]["mobilePhone"] == "+49 151 00000000"
    assert by_id[edited["id"]]["changeKey"] != edited["changeKey"]
    removed = {"@odata.type": "#microsoft.graph.contact", "@removed": {"reason": "deleted"}}
    assert by_id[deleted["id"]] == {**removed, "id": deleted["id"]}
    assert by_id[moved["id"]] == {**removed, "id": moved["id"]}
    assert by_id[added["restId"]]["givenName"] == "Extra00"
    assert len(changes) == 4
    quiet, quiet_link = _round(caller, next_link)  # nothing changed: answered from the previous snapshot
    assert quiet == []
    graph.admin("PATCH", f"/users/{uid}/contacts/{edited['id']}", json={"mobilePhone": "+49 151 00000001"})
    again, _ = _round(caller, quiet_link)
    assert [(c["id"], c["mobilePhone"]) for c in again] == [(edited["id"], "+49 151 00000001")]


def test_immutable_ids_survive_moves_rest_ids_do_not(caller: Any, graph: Any) -> None:
    uid = _members_with_mail(graph)[2]["id"]
    contact = _add(graph, uid, 1)[0]
    before_rest = caller.get(f"/v1.0/users/{uid}/contacts?$top=1000").json()["value"]
    before_imm = caller.get(f"/v1.0/users/{uid}/contacts?$top=1000", headers=IMMUTABLE)
    assert before_imm.headers["Preference-Applied"] == 'IdType="ImmutableId"'
    assert contact["id"] in {c["id"] for c in before_imm.json()["value"]}
    assert contact["restId"] in {c["id"] for c in before_rest}
    moved = graph.admin("POST", f"/users/{uid}/contacts/{contact['id']}/move", json={"folder": "Archive"}).json()
    assert moved["id"] == contact["id"] and moved["restId"] != contact["restId"]
    folder = next(f for f in caller.get(f"/v1.0/users/{uid}/contactFolders").json()["value"]
                  if f["displayName"] == "Archive")
    in_archive = caller.get(f"/v1.0/users/{uid}/contactFolders/{folder['id']}/contacts", headers=IMMUTABLE).json()
    assert [c["id"] for c in in_archive["value"]] == [contact["id"]]
    rest = caller.get(f"/v1.0/users/{uid}/contactFolders/{folder['id']}/contacts").json()["value"]
    assert [c["id"] for c in rest] == [moved["restId"]]


def test_delta_pages_keep_the_round_and_answers_share_nothing_with_the_store(caller: Any, graph: Any) -> None:
    """A round's later pages show each contact as it was when the round began (edits and moves after it
    belong to the next round), and no answer aliases stored state."""
    uid = _members_with_mail(graph)[1]["id"]
    made = _add(graph, uid, 6)
    url = _default_delta(caller, uid) + "?$select=givenName,businessPhones,emailAddresses"
    pages = {"Prefer": 'odata.maxpagesize=2, IdType="ImmutableId"'}
    first = caller.get(url, headers=pages).json()
    listed = caller.get(f"/v1.0/users/{uid}/contacts?$top=1000", headers=IMMUTABLE).json()["value"]
    late = [c for c in listed if c["id"] not in {i["id"] for i in first["value"]}]
    edited, moved = late[-1], late[-2]
    graph.admin("PATCH", f"/users/{uid}/contacts/{edited['id']}",
                json={"givenName": "Changed", "businessPhones": ["+49 30 9999999"]})
    graph.admin("POST", f"/users/{uid}/contacts/{moved['id']}/move", json={"folder": "Archive"})
    rest, _ = caller.all_pages(first["@odata.nextLink"], pages)
    by_id = {c["id"]: c for c in first["value"] + rest}
    assert len(by_id) == len(listed) and made[-1]["id"] in by_id
    assert by_id[edited["id"]]["givenName"] == edited["givenName"]
    assert by_id[edited["id"]]["businessPhones"] == edited["businessPhones"]
    assert by_id[moved["id"]] == {"@odata.etag": moved["@odata.etag"], "id": moved["id"],
                                  **{k: moved[k] for k in ("givenName", "businessPhones", "emailAddresses")}}

    from emulators.graph.mailbox import render_contact
    from emulators.graph.mailbox_routes import project

    store = graph.backend.mailboxes
    mbx = graph.backend.mailbox_for(uid)
    contact = store.find_contact(mbx, made[0]["id"])
    contact.props = {**contact.props, "emailAddresses": [{"name": "A", "address": "a@example.org"}],
                     "businessAddress": {"city": "Berlin"}}
    stored = repr(contact.props)
    for select in (None, ["emailAddresses", "businessPhones", "changeKey"], ["businessAddress"], ["id"]):
        full = render_contact(contact, immutable=True)
        shaped = render_contact(contact, immutable=False, select=select)
        assert list(shaped.items()) == list(project(render_contact(contact, immutable=False), select).items())
        for answer in (full, shaped):
            for value in answer.values():
                if isinstance(value, list):
                    value.append("x")
                    for item in value:
                        if isinstance(item, dict):
                            item["address"] = "changed"
                elif isinstance(value, dict):
                    value["city"] = "changed"
    assert repr(contact.props) == stored
    replies = store.automatic_replies(mbx)
    replies["status"] = "alwaysEnabled"
    replies["scheduledStartDateTime"]["dateTime"] = "changed"
    assert store.automatic_replies(mbx) == store.settings(mbx)["automaticRepliesSetting"] != replies


def test_folder_delta_and_moves_between_folders(caller: Any, graph: Any) -> None:
    uid = _members_with_mail(graph)[3]["id"]
    contact = _add(graph, uid, 1, folder="3CX")[0]
    folder_id = contact["parentFolderId"]
    url = f"/v1.0/users/{uid}/contactFolders/{folder_id}/contacts/delta"
    items, link = _round(caller, url, IMMUTABLE)
    assert contact["id"] in {c["id"] for c in items}
    graph.admin("POST", f"/users/{uid}/contacts/{contact['id']}/move", json={"folder": "Contacts"})
    changes, _ = _round(caller, link, IMMUTABLE)
    assert changes == [{"@odata.type": "#microsoft.graph.contact", "id": contact["id"],
                        "@removed": {"reason": "deleted"}}]


def test_expiry_answers_410_per_user_and_by_age(caller: Any, graph: Any) -> None:
    first, second = _members_with_mail(graph)[:2]
    _, link_one = _round(caller, _default_delta(caller, first["id"]))
    _, link_two = _round(caller, _default_delta(caller, second["id"]))
    graph.admin("POST", "/mailbox/expire", json={"user_id": first["id"], "kind": "contacts"})
    gone = caller.get(link_one)
    assert gone.status_code == 410
    assert gone.json()["error"]["code"] == "SyncStateNotFound"
    assert gone.json()["error"]["message"].startswith("The sync state generation is not found; generation=")
    assert caller.get(link_two).status_code == 200
    graph.admin("POST", "/mailbox/expire", json={"user_id": None, "kind": "events"})
    assert caller.get(link_two).status_code == 200
    graph.backend.mailboxes.options.token_max_age = 0
    try:
        assert caller.get(link_two).status_code == 410
    finally:
        graph.backend.mailboxes.options.token_max_age = 7 * 24 * 3600
    assert caller.get(link_one.replace("deltatoken=", "deltatoken=x")).status_code == 400


def test_default_folder_id_is_the_parent_of_listed_folders_and_contacts(caller: Any, graph: Any) -> None:
    uid = _members_with_mail(graph)[4]["id"]
    _add(graph, uid, 1)
    _add(graph, uid, 1, folder="Subfolder")
    folders = caller.get(f"/v1.0/users/{uid}/contactFolders?$select=id,displayName,parentFolderId").json()["value"]
    contact = caller.get(f"/v1.0/users/{uid}/contacts?$top=1&$select=parentFolderId").json()["value"][0]
    assert set(contact) <= {"@odata.etag", "id", "parentFolderId"}
    assert {f["parentFolderId"] for f in folders} == {contact["parentFolderId"]}
    assert contact["parentFolderId"] not in {f["id"] for f in folders}


def test_undocumented_default_folder_delta_is_refused_like_graph(caller: Any, graph: Any) -> None:
    uid = _members_with_mail(graph)[1]["id"]
    for name in ("delta", "delta()", "microsoft.graph.delta", "microsoft.graph.delta()"):
        response = caller.get(f"/v1.0/users/{uid}/contacts/{name}")
        assert response.status_code == 400, name
        assert response.json()["error"]["code"] == "BadRequest"
        assert response.json()["error"]["message"] == "Resource not found for the segment 'delta'."


@pytest.mark.parametrize("name", ["delta", "delta()", "microsoft.graph.delta", "microsoft.graph.delta()"])
def test_every_delta_spelling_graph_accepts_is_served(caller: Any, graph: Any, name: str) -> None:
    uid = _members_with_mail(graph)[1]["id"]
    folder_url = _default_delta(caller, uid).rsplit("/", 1)[0]
    items, link = _round(caller, f"{folder_url}/{name}")
    assert items and f"/contacts/{name}?" in link
    window = "startDateTime=2026-01-01T00:00:00Z&endDateTime=2026-01-08T00:00:00Z"
    _round(caller, f"/v1.0/users/{uid}/calendarView/{name}?{window}")
    _round(caller, f"/v1.0/users/{name}?$select=displayName")
