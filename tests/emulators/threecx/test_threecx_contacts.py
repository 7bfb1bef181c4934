"""Company phonebook (/Contacts) of the 3CX emulator, and status profiles as the presence sync sees them."""

from __future__ import annotations

from typing import Any

import pytest


def _detail(response: Any) -> tuple[str, str | None]:
    detail = response.json()["error"]["details"][0]
    return detail["message"], detail["target"]


def test_seeded_contacts_and_query_options(xapi: Any) -> None:
    body = xapi.get("/Contacts", **{"$count": "true", "$orderby": "Id"}).json()
    assert body["@odata.count"] == 5 and "@odata.nextLink" not in body
    types = [c["ContactType"] for c in body["value"]]
    assert types.count("M365") == 2 and types.count("3CX") == 3
    assert all(c["Tag"] == "" for c in body["value"])
    m365 = xapi.get("/Contacts", **{"$filter": "ContactType eq 'M365'", "$select": "Id,LastName"}).json()["value"]
    assert sorted(c["LastName"] for c in m365) == ["Bowen", "Wilber"] and set(m365[0]) == {"Id", "LastName"}
    pizza = xapi.get("/Contacts", **{"$filter": "contains(CompanyName,'Roma') or startswith(LastName,'Help')"})
    assert len(pizza.json()["value"]) == 2
    assert xapi.get("/Contacts", **{"$select": "Mobile"}).status_code == 400


def test_crud_and_counters(xapi: Any, threecx_emulator: Any) -> None:
    created = xapi.call("POST", "/Contacts", json={"FirstName": "Hans", "LastName": "Zimmermann",
                                                   "PhoneNumber": "+49 89 12345678", "Tag": "m365:abc",
                                                   "ContactType": "3CX", "Email": "hans@example.org"})
    assert created.status_code == 201
    contact = created.json()
    assert contact["Id"] > 0 and created.headers["Location"].endswith(f"/Contacts({contact['Id']})")
    assert contact["Mobile2"] == "" and contact["CompanyName"] == ""
    assert xapi.call("PATCH", f"/Contacts({contact['Id']})", json={"Mobile2": "0151-1234567"}).status_code == 204
    fetched = xapi.get(f"/Contacts({contact['Id']})").json()
    assert fetched["Mobile2"] == "0151-1234567" and fetched["PhoneNumber"] == "+49 89 12345678"
    assert fetched["@odata.context"].endswith("#Contacts/$entity")
    tagged = xapi.get("/Contacts", **{"$filter": "Tag eq 'm365:abc'"}).json()["value"]
    assert [c["Id"] for c in tagged] == [contact["Id"]]
    assert xapi.call("DELETE", f"/Contacts({contact['Id']})").status_code == 204
    assert xapi.get(f"/Contacts({contact['Id']})").status_code == 404
    assert xapi.call("DELETE", f"/Contacts({contact['Id']})").status_code == 404
    counters = xapi.counters()
    requests = counters["requests"]
    assert requests["POST /xapi/v1/Contacts"] == 1 and requests["PATCH /xapi/v1/Contacts({Id})"] == 1
    assert requests["DELETE /xapi/v1/Contacts({Id})"] == 2 and requests["GET /xapi/v1/Contacts({Id})"] == 2
    assert counters["writes"] == 4


@pytest.mark.parametrize(("body", "key", "target"), [
    ({"FirstName": "A", "Mobile": "+49 1"}, "WARNINGS.XAPI.UNKNOWN_PROPERTY", "Mobile"),
    ({"FirstName": "A" * 51}, "WARNINGS.XAPI.TOO_LONG", "FirstName"),
    ({"CompanyName": "C" * 101}, "WARNINGS.XAPI.TOO_LONG", "CompanyName"),
    ({"FirstName": "A", "Tag": "t" * 256}, "WARNINGS.XAPI.TOO_LONG", "Tag"),
    ({"FirstName": "A", "PhoneNumber": "4" * 41}, "WARNINGS.XAPI.TOO_LONG", "PhoneNumber"),
    ({"Email": "a@b.example"}, "WARNINGS.XAPI.REQUIRED", "FirstName"),
    ({"FirstName": "A", "PhoneNumber": "+1 555 0100 x23"}, "WARNINGS.XAPI.INVALID_PHONE_NUMBER", "PhoneNumber"),
    ({"FirstName": "A", "Business": "1-800-FLOWERS"}, "WARNINGS.XAPI.INVALID_PHONE_NUMBER", "Business"),
    ({"FirstName": "A", "Home": "(425) 555-0123"}, "WARNINGS.XAPI.INVALID_PHONE_NUMBER", "Home"),
    ({"FirstName": "A", "Email": "not-an-address"}, "WARNINGS.XAPI.INVALID_EMAIL", "Email"),
    ({"FirstName": "A", "ContactType": "Outlook"}, "WARNINGS.XAPI.INVALID_VALUE", "ContactType"),
    ({"FirstName": 5}, "WARNINGS.XAPI.INVALID_VALUE", "FirstName"),
])
def test_validation_errors_name_the_property(xapi: Any, body: dict[str, Any], key: str, target: str) -> None:
    response = xapi.call("POST", "/Contacts", json=body)
    assert response.status_code == 400
    assert _detail(response) == (key, target)
    assert response.json()["error"]["message"] == f"{target}:\n{key}"


def test_patch_is_atomic_and_validated(xapi: Any) -> None:
    contact = xapi.call("POST", "/Contacts", json={"CompanyName": "Solo GmbH"}).json()
    response = xapi.call("PATCH", f"/Contacts({contact['Id']})", json={"LastName": "X", "Pager": "abc"})
    assert response.status_code == 400 and _detail(response) == ("WARNINGS.XAPI.INVALID_PHONE_NUMBER", "Pager")
    assert xapi.get(f"/Contacts({contact['Id']})").json()["LastName"] == ""
    cleared = xapi.call("PATCH", f"/Contacts({contact['Id']})", json={"CompanyName": ""})
    assert cleared.status_code == 400 and _detail(cleared) == ("WARNINGS.XAPI.REQUIRED", "FirstName")


def test_paging_top_cap_and_skip(xapi: Any, threecx_emulator: Any) -> None:
    for i in range(130):
        threecx_emulator.backend.create_contact({"FirstName": f"Bulk{i:03d}", "PhoneNumber": f"+49 30 {i:07d}"})
    first = xapi.get("/Contacts", **{"$top": "500", "$count": "true"}).json()
    assert len(first["value"]) == 100 and first["@odata.count"] == 135 and "@odata.nextLink" not in first
    second = xapi.get("/Contacts", **{"$top": "100", "$skip": "100"}).json()
    assert len(second["value"]) == 35
    assert len({c["Id"] for c in first["value"] + second["value"]}) == 135


def test_delete_contacts_by_id_and_admin_api(xapi: Any, threecx_emulator: Any) -> None:
    ids = [xapi.call("POST", "/Contacts", json={"FirstName": f"Del{i}"}).json()["Id"] for i in range(3)]
    response = xapi.call("POST", "/Contacts/Pbx.DeleteContactsById", json={"ids": [*ids[:2], 99999]})
    assert response.status_code == 204
    remaining = {c["Id"] for c in xapi.get("/Contacts", **{"$top": "100"}).json()["value"]}
    assert ids[2] in remaining and not set(ids[:2]) & remaining
    assert xapi.call("POST", "/Contacts/Pbx.DeleteContactsById", json={"ids": ["x"]}).status_code == 400
    assert xapi.counters()["requests"]["POST /xapi/v1/Contacts/Pbx.DeleteContactsById"] == 2

    made = threecx_emulator.admin("POST", "contacts", json={"FirstName": "Console", "ContactType": "CRM"}).json()
    edited = threecx_emulator.admin("PATCH", f"contacts/{made['Id']}", json={"Title": "Dr."}).json()
    assert edited["Title"] == "Dr." and edited["ContactType"] == "CRM"
    state = threecx_emulator.admin("GET", "state").json()
    assert any(c["Id"] == made["Id"] for c in state["contacts"])
    threecx_emulator.admin("DELETE", f"contacts/{made['Id']}")
    assert xapi.get(f"/Contacts({made['Id']})").status_code == 404


def test_status_profiles_as_presence_sync_sees_them(xapi: Any, threecx_emulator: Any) -> None:
    user = threecx_emulator.backend.create_user({"Number": "150", "FirstName": "Pres", "LastName": "Ence"})
    listed = xapi.get("/Users", **{"$select": "Id,Number,CurrentProfileName",
                                   "$filter": "Number eq '150'"}).json()["value"]
    assert listed == [{"Id": user["Id"], "Number": "150", "CurrentProfileName": "Available"}]
    threecx_emulator.admin("PATCH", f"users/{user['Id']}", json={"CurrentProfileName": "Custom 1"})
    after = xapi.get(f"/Users({user['Id']})", **{"$select": "CurrentProfileName"}).json()
    assert after["CurrentProfileName"] == "Custom 1"
    expanded = xapi.get(f"/Users({user['Id']})", **{"$expand": "ForwardingProfiles", "$select": "Id"}).json()
    assert [p["Name"] for p in expanded["ForwardingProfiles"]] == ["Available", "Away", "Out of office", "Custom 1",
                                                                   "Custom 2"]
    bad = xapi.call("PATCH", f"/Users({user['Id']})", json={"CurrentProfileName": "Do Not Disturb"})
    assert bad.status_code == 400 and _detail(bad) == ("WARNINGS.XAPI.NOT_FOUND", "CurrentProfileName")


def test_filter_by_ids_uses_the_index_and_keeps_filter_semantics(xapi: Any) -> None:
    from emulators.threecx.odata import id_filter_keys

    assert id_filter_keys("Id eq 3 or Id eq 12") == [3, 12]
    assert id_filter_keys("Id eq 3 and Id eq 12") is None and id_filter_keys("Tag eq 'x'") is None
    ids = [c["Id"] for c in xapi.get("/Contacts", **{"$orderby": "Id"}).json()["value"]]
    picked = xapi.get("/Contacts", **{"$filter": f"Id eq {ids[3]} or Id eq {ids[1]} or Id eq 99999",
                                      "$select": "Id,LastName", "$orderby": "Id"}).json()["value"]
    assert [c["Id"] for c in picked] == [ids[1], ids[3]] and set(picked[0]) == {"Id", "LastName"}
    descending = xapi.get("/Contacts", **{"$orderby": "Id desc"}).json()["value"]
    assert [c["Id"] for c in descending] == sorted(ids, reverse=True)


def test_eq_filter_values_only_for_a_disjunction_of_one_property() -> None:
    from emulators.threecx.odata import eq_filter_values

    assert eq_filter_values("Tag eq 'a' or Tag eq 'O''Brien'", "Tag") == ["a", "O'Brien"]
    assert eq_filter_values("  Tag eq ''  ", "Tag") == [""]
    for other in ("Tag eq 'a' and Tag eq 'b'", "(Tag eq 'a') or Tag eq 'b'", "Tag eq 'a' or FirstName eq 'b'",
                  "Tag ne 'a'", "Tag eq 3", "not Tag eq 'a'", "Tag eq 'a' or", "Tag eq 'a' Tag eq 'b'",
                  "tolower(Tag) eq 'a'", "Tag eq 'a", None, ""):
        assert eq_filter_values(other, "Tag") is None, other


def test_tag_filter_uses_the_index_and_follows_every_change(xapi: Any, threecx_emulator: Any) -> None:
    """``Tag eq .. or ..`` reads come from a Tag index; the same filter in brackets tests every record:
    both must answer the same after creates, tag edits and deletes."""
    backend = threecx_emulator.backend
    made = [backend.create_contact({"FirstName": f"Tagged{i}", "PhoneNumber": f"+49 30 {i:07d}",
                                    "Tag": f"m365:t{i % 4}"})["Id"] for i in range(12)]
    tags = ["m365:t1", "m365:t3", "m365:none", ""]

    def both(params: dict[str, str]) -> list[dict[str, Any]]:
        indexed = " or ".join(f"Tag eq '{t}'" for t in tags)
        scanned = f"({indexed.split(' or ')[0]}) or " + " or ".join(indexed.split(" or ")[1:])
        one = xapi.get("/Contacts", **{"$filter": indexed, "$orderby": "Id", **params}).json()
        other = xapi.get("/Contacts", **{"$filter": scanned, "$orderby": "Id", **params}).json()
        assert one["value"] == other["value"] and one.get("@odata.count") == other.get("@odata.count")
        return one["value"]

    assert [c["Id"] for c in both({"$select": "Id,Tag"}) if c["Tag"]] == [m for i, m in enumerate(made) if i % 2]
    assert len([c for c in both({"$top": "100"}) if not c["Tag"]]) == 5  # the seeded contacts have no Tag
    xapi.call("PATCH", f"/Contacts({made[1]})", json={"Tag": "m365:t0"})
    xapi.call("PATCH", f"/Contacts({made[2]})", json={"Tag": "m365:t3"})
    xapi.call("PATCH", f"/Contacts({made[4]})", json={"Title": "Same tag"})
    assert xapi.call("DELETE", f"/Contacts({made[3]})").status_code == 204
    xapi.call("POST", "/Contacts/Pbx.DeleteContactsById", json={"ids": [made[5], made[7], 99999]})
    late = backend.create_contact({"FirstName": "Late", "PhoneNumber": "+49 30 7654321", "Tag": "m365:t1"})["Id"]
    got = [c["Id"] for c in both({"$select": "Id,Tag", "$count": "true"}) if c["Tag"]]
    assert got == [made[2], made[9], made[11], late]
    assert [c["Id"] for c in both({"$select": "Id", "$skip": "6", "$top": "2"})] == [made[9], made[11]]
    assert xapi.get("/Contacts", **{"$filter": "Tag eq 'm365:t0' or Tag eq 1"}).status_code == 400


def test_pages_follow_creates_edits_and_deletes_in_id_order(xapi: Any, threecx_emulator: Any) -> None:
    """Unfiltered pages are sliced from the store's id order: it must follow every change."""
    backend = threecx_emulator.backend
    made = [backend.create_contact({"FirstName": f"Order{i:03d}", "PhoneNumber": f"+49 30 {i:07d}"})["Id"]
            for i in range(150)]
    xapi.call("POST", "/Contacts/Pbx.DeleteContactsById", json={"ids": made[10:20]})
    assert xapi.call("DELETE", f"/Contacts({made[0]})").status_code == 204
    xapi.call("PATCH", f"/Contacts({made[30]})", json={"Title": "Edited"})
    late = backend.create_contact({"FirstName": "Late", "PhoneNumber": "+49 30 7654321"})["Id"]

    def pages() -> list[dict[str, Any]]:
        out: list[dict[str, Any]] = []
        for skip in range(0, 300, 100):
            out += xapi.get("/Contacts", **{"$orderby": "Id", "$top": "100", "$skip": str(skip),
                                            "$select": "Id,Title"}).json()["value"]
        return out

    seen = pages()
    expected = sorted(c["Id"] for c in backend.list_contacts())
    assert [c["Id"] for c in seen] == expected and late == expected[-1]
    assert made[0] not in expected and not set(made[10:20]) & set(expected)
    assert next(c for c in seen if c["Id"] == made[30])["Title"] == "Edited"
    count = xapi.get("/Contacts", **{"$count": "true", "$top": "1"}).json()["@odata.count"]
    assert count == len(expected)


def test_synthetic_seed_adds_valid_extensions_and_entries() -> None:
    """``--extra-users`` / ``--extra-contacts`` (benchmarks) go through the backend's own validation."""
    from emulators.threecx.seed import seed_synthetic
    from emulators.threecx.state import PbxBackend

    backend = PbxBackend(seed=7)
    users, contacts = len(backend.list_users()), len(backend.list_contacts())
    seed_synthetic(backend, users=30, contacts=250)
    added = backend.list_users()[users:]
    assert len(added) == 30 and len({u["Number"] for u in added}) == 30
    assert all(u["EmailAddress"].endswith("@contoso.example") for u in added)
    entries = backend.list_contacts()[contacts:]
    assert len(entries) == 250 and len({c["Tag"] for c in entries}) == 250
    assert {c["ContactType"] for c in entries} == {"M365"}
