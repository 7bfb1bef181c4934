"""Users, Groups and SystemStatus of the 3CX emulator over real HTTPS."""

from __future__ import annotations

from typing import Any

import pytest

SEEDED_NUMBERS = ["100", "101", "102", "999"]


def _add_users(handle: Any, count: int, start: int = 200) -> None:
    for i in range(count):
        handle.backend.create_user({"Number": str(start + i), "FirstName": f"User{i:03d}", "LastName": "Test",
                                    "EmailAddress": f"user{i:03d}@contoso.example"})


def _error_target(response: Any) -> tuple[str, str | None]:
    detail = response.json()["error"]["details"][0]
    return detail["message"], detail["target"]


# ---------------------------------------------------------------- reads, paging, query options


def test_seeded_unmanaged_extensions(xapi: Any) -> None:
    body = xapi.get("/Users", **{"$select": "Number,DisplayName,EmailAddress,Tags", "$orderby": "Number"}).json()
    assert [u["Number"] for u in body["value"]] == SEEDED_NUMBERS
    by_number = {u["Number"]: u for u in body["value"]}
    assert by_number["100"]["EmailAddress"] == "reception@contoso.example"
    assert by_number["999"]["Tags"] == ["FaxServer"]
    assert by_number["102"]["Tags"] == ["MS"]
    assert body["@odata.context"].endswith("/xapi/v1/$metadata#Users(Number,DisplayName,EmailAddress,Tags)")


def test_paging_top_skip_without_next_link_and_top_cap(xapi: Any, threecx_emulator: Any) -> None:
    _add_users(threecx_emulator, 250)
    seen: list[int] = []
    skip = 0
    while True:
        body = xapi.get("/Users", **{"$top": 100, "$skip": skip, "$orderby": "Id", "$select": "Id",
                                     "$count": "true"}).json()
        assert "@odata.nextLink" not in body
        assert body["@odata.count"] == 254
        seen += [u["Id"] for u in body["value"]]
        if len(body["value"]) < 100:
            break
        skip += 100
    assert len(seen) == 254 and seen == sorted(seen) and len(set(seen)) == 254

    capped = xapi.get("/Users", **{"$top": 500}).json()
    assert len(capped["value"]) == 100 and "@odata.nextLink" not in capped
    assert len(xapi.get("/Users").json()["value"]) == 100
    assert "@odata.count" not in capped


def test_count_reflects_filter_before_paging(xapi: Any, threecx_emulator: Any) -> None:
    _add_users(threecx_emulator, 30)
    body = xapi.get("/Users", **{"$filter": "LastName eq 'Test'", "$count": "true", "$top": 5}).json()
    assert body["@odata.count"] == 30 and len(body["value"]) == 5
    assert xapi.get("/Users", **{"$count": "maybe"}).status_code == 400


@pytest.mark.parametrize(("expression", "numbers"), [
    ("Number eq '101'", ["101"]),
    ("Number ne '101'", ["100", "102", "999"]),
    ("contains(FirstName,'fer') or Number eq '999'", ["101", "999"]),
    ("startswith(EmailAddress,'reception@')", ["100"]),
    ("endswith(LastName,'Room')", ["101"]),
    ("Enabled eq true and not (Number eq '100')", ["101", "102", "999"]),
    ("Enabled eq false", []),
    ("Id eq 4", ["101"]),
    ("Id ge 5", ["102", "999"]),
    ("EmailAddress eq ''", ["101", "999"]),
    ("tolower(EmailAddress) eq 'meganb@contoso.example'", ["102"]),
    ("FirstName eq 'O''Brien'", []),
    ("(Number eq '100' or Number eq '101') and FirstName eq 'Conference'", ["101"]),
])
def test_filter_variants(xapi: Any, expression: str, numbers: list[str]) -> None:
    response = xapi.get("/Users", **{"$filter": expression, "$select": "Number", "$orderby": "Number"})
    assert response.status_code == 200, response.text
    assert [u["Number"] for u in response.json()["value"]] == numbers


def test_filter_by_ids_joined_with_or(xapi: Any, threecx_emulator: Any) -> None:
    _add_users(threecx_emulator, 150)
    ids = sorted(u["Id"] for u in threecx_emulator.backend.list_users(expand=()))
    wanted = [ids[0], ids[77], ids[-1], 999_999]  # an unknown id is simply not returned
    expression = " or ".join(f"Id eq {i}" for i in wanted)
    body = xapi.get("/Users", **{"$filter": expression, "$select": "Id,CurrentProfileName", "$top": 100,
                                 "$skip": 0, "$count": "true"}).json()
    assert [u["Id"] for u in body["value"]] == wanted[:3] and body["@odata.count"] == 3
    assert all(set(u) == {"Id", "CurrentProfileName"} for u in body["value"])
    mixed = f"Id eq {ids[0]} or Id eq {ids[1]} and Number eq 'nope'"  # not a plain id list: filtered as usual
    assert [u["Id"] for u in xapi.get("/Users", **{"$filter": mixed, "$select": "Id"}).json()["value"]] == ids[:1]


def test_filter_string_literal_escaping(xapi: Any, threecx_emulator: Any) -> None:
    threecx_emulator.backend.create_user({"Number": "300", "FirstName": "Sean", "LastName": "O'Brien"})
    body = xapi.get("/Users", **{"$filter": "LastName eq 'O''Brien'", "$select": "Number"}).json()
    assert body["value"] == [{"Number": "300"}]


@pytest.mark.parametrize("expression", [
    "Number eq", "Number eq '101", "Nope eq 1", "Number eq 101", "Enabled eq 'yes'", "foo(Number,'1')",
    "Number eq '1' and", "(Number eq '1'",
])
def test_invalid_filter_is_400_odata_error(xapi: Any, expression: str) -> None:
    response = xapi.get("/Users", **{"$filter": expression})
    assert response.status_code == 400
    assert set(response.json()["error"]) >= {"code", "message"}


def test_select_returns_exactly_the_selected_properties(xapi: Any) -> None:
    users = xapi.get("/Users", **{"$select": "Number,FirstName"}).json()["value"]
    assert all(set(u) == {"Number", "FirstName"} for u in users)
    full = xapi.get("/Users").json()["value"][0]
    assert {"Id", "Number", "CurrentProfileName", "Require2FA", "Tags", "PrimaryGroupId"} <= set(full)
    assert not {"Groups", "ForwardingProfiles", "Phones"} & set(full)  # navigation properties
    assert xapi.get("/Users", **{"$select": "Number,Bogus"}).status_code == 400


def test_expand_groups_and_forwarding_profiles(xapi: Any) -> None:
    body = xapi.get("/Users", **{"$select": "Id,Number", "$filter": "Number eq '100'",
                                 "$expand": "Groups($expand=Rights),ForwardingProfiles"}).json()
    user = body["value"][0]
    assert set(user) == {"Id", "Number", "Groups", "ForwardingProfiles"}
    assert user["Groups"][0]["Name"] == "DEFAULT" and user["Groups"][0]["Rights"]["RoleName"] == "users"
    assert "GroupRights" not in user["Groups"][0]
    profiles = user["ForwardingProfiles"]
    assert [p["Name"] for p in profiles] == ["Available", "Away", "Out of office", "Custom 1", "Custom 2"]
    assert {"Id", "CustomName", "CustomMessage", "AvailableRoute", "AwayRoute", "NoAnswerTimeout", "RingMyMobile",
            "AcceptMultipleCalls", "BlockPushCalls", "DisableRingGroupCalls",
            "OfficeHoursAutoQueueLogOut"} <= set(profiles[0])
    plain = xapi.get("/Users", **{"$expand": "Groups"}).json()["value"][0]["Groups"][0]
    assert "Rights" not in plain
    assert xapi.get("/Users", **{"$expand": "Nope"}).status_code == 400


def test_orderby_desc_and_multiple_keys(xapi: Any) -> None:
    numbers = [u["Number"] for u in xapi.get("/Users", **{"$orderby": "Number desc"}).json()["value"]]
    assert numbers == sorted(SEEDED_NUMBERS, reverse=True)
    body = xapi.get("/Users", **{"$orderby": "Enabled, LastName desc", "$select": "LastName"}).json()
    assert [u["LastName"] for u in body["value"]] == ["Server", "Room", "Bowen", ""]
    assert xapi.get("/Users", **{"$orderby": "Number sideways"}).status_code == 400


def test_get_by_id_and_alternate_key(xapi: Any) -> None:
    user_id = xapi.get("/Users", **{"$filter": "Number eq '101'"}).json()["value"][0]["Id"]
    by_id = xapi.get(f"/Users({user_id})", **{"$select": "Number", "$expand": "Groups"}).json()
    assert by_id["Number"] == "101" and set(by_id) == {"@odata.context", "Number", "Groups"}
    assert by_id["@odata.context"].endswith("/$entity")
    assert xapi.get("/Users(Number='101')").json()["Id"] == user_id
    missing = xapi.get("/Users(99999)")
    assert missing.status_code == 404 and "error" in missing.json()
    assert xapi.get("/Users(Number='555')").status_code == 404


# ---------------------------------------------------------------- writes


def test_create_user_defaults(xapi: Any) -> None:
    response = xapi.call("POST", "/Users", json={"Number": "201", "FirstName": "Adele", "LastName": "Vance",
                                                 "EmailAddress": "AdeleV@contoso.example", "Mobile": "+15551234"})
    assert response.status_code == 201, response.text
    user = response.json()
    assert user["DisplayName"] == "Adele Vance" and user["Enabled"] is True
    assert user["CurrentProfileName"] == "Available" and user["Tags"] == [] and user["IsRegistered"] is False
    assert user["QueueStatus"] == "LoggedOut" and user["VMEnabled"] is True and user["HideInPhonebook"] is False
    assert user["Id"] > 0 and user["PrimaryGroupId"] > 0
    assert response.headers["Location"].endswith(f"/xapi/v1/Users({user['Id']})")
    next_user = xapi.call("POST", "/Users", json={"Number": "202"}).json()
    assert next_user["Id"] == user["Id"] + 1


def test_create_without_number_takes_first_available(xapi: Any) -> None:
    first = xapi.get("/Users/Pbx.GetFirstAvailableExtensionNumber()").json()
    assert first["Number"] == "103" and "@odata.context" in first
    created = xapi.call("POST", "/Users", json={"FirstName": "Auto"}).json()
    assert created["Number"] == "103"
    assert xapi.get("/Users/Pbx.GetFirstAvailableExtensionNumber()").json()["Number"] == "104"


@pytest.mark.parametrize(("body", "key", "target"), [
    ({"Number": "100"}, "WARNINGS.XAPI.ALREADY_IN_USE", "Number"),
    ({"Number": "1"}, "WARNINGS.XAPI.INVALID_NUMBER", "Number"),
    ({"Number": "12345678"}, "WARNINGS.XAPI.INVALID_NUMBER", "Number"),
    ({"Number": "12a"}, "WARNINGS.XAPI.INVALID_NUMBER", "Number"),
    ({"Number": "301", "EmailAddress": "not-an-email"}, "WARNINGS.XAPI.INVALID_EMAIL", "EmailAddress"),
    ({"Number": "301", "FirstName": "x" * 51}, "WARNINGS.XAPI.TOO_LONG", "FirstName"),
    ({"Number": "301", "Shoe": 42}, "WARNINGS.XAPI.UNKNOWN_PROPERTY", "Shoe"),
    ({"Number": "301", "Enabled": "yes"}, "WARNINGS.XAPI.INVALID_VALUE", "Enabled"),
    ({"Number": "301", "Mobile": "call me"}, "WARNINGS.XAPI.INVALID_PHONE_NUMBER", "Mobile"),
    ({"Number": "301", "Groups": [{"GroupId": 9999, "Rights": {"RoleName": "users"}}]},
     "WARNINGS.XAPI.NOT_FOUND", "Groups"),
    ({"Number": "301", "CurrentProfileName": "Lunch"}, "WARNINGS.XAPI.NOT_FOUND", "CurrentProfileName"),
])
def test_create_validation_errors(xapi: Any, body: dict[str, Any], key: str, target: str) -> None:
    response = xapi.call("POST", "/Users", json=body)
    assert response.status_code == 400, response.text
    assert _error_target(response) == (key, target)
    assert response.json()["error"]["message"] == f"{target}:\n{key}"
    assert response.json()["error"]["code"] == ""


def test_duplicate_number_envelope_is_exact(xapi: Any) -> None:
    response = xapi.call("POST", "/Users", json={"Number": "101"})
    assert response.json() == {"error": {"code": "", "message": "Number:\nWARNINGS.XAPI.ALREADY_IN_USE",
                                         "details": [{"code": "", "message": "WARNINGS.XAPI.ALREADY_IN_USE",
                                                      "target": "Number"}]}}


def test_create_with_groups_and_primary_group(xapi: Any) -> None:
    groups = xapi.get("/Groups", **{"$filter": "Name eq 'Sales'"}).json()["value"]
    sales = groups[0]["Id"]
    created = xapi.call("POST", "/Users", json={"Number": "310", "PrimaryGroupId": sales,
                                                "Groups": [{"GroupId": sales, "Rights": {"RoleName": "users"}}]})
    assert created.status_code == 201
    user = xapi.get(f"/Users({created.json()['Id']})", **{"$expand": "Groups"}).json()
    assert user["PrimaryGroupId"] == sales and [g["GroupId"] for g in user["Groups"]] == [sales]
    default = xapi.get("/Groups", **{"$filter": "IsDefault eq true"}).json()["value"][0]["Id"]
    bad = xapi.call("POST", "/Users", json={"Number": "311", "PrimaryGroupId": default,
                                            "Groups": [{"GroupId": sales}]})
    assert bad.status_code == 400 and _error_target(bad)[1] == "PrimaryGroupId"


def test_patch_user(xapi: Any) -> None:
    user = xapi.call("POST", "/Users", json={"Number": "320", "FirstName": "Old"}).json()
    path = f"/Users({user['Id']})"
    response = xapi.call("PATCH", path, json={"FirstName": "New", "LastName": "Name", "Enabled": False,
                                             "CurrentProfileName": "Out of office"})
    assert response.status_code == 204 and response.content == b""
    after = xapi.get(path).json()
    assert (after["FirstName"], after["DisplayName"], after["Enabled"]) == ("New", "New Name", False)
    assert after["CurrentProfileName"] == "Out of office" and after["EmailAddress"] == ""

    same_number = xapi.call("PATCH", path, json={"Number": "320"})
    assert same_number.status_code == 204
    changed = xapi.call("PATCH", path, json={"Number": "321"})
    assert changed.status_code == 400 and _error_target(changed) == ("WARNINGS.XAPI.NOT_ALLOWED", "Number")
    profile = xapi.call("PATCH", path, json={"CurrentProfileName": "Do Not Disturb"})
    assert profile.status_code == 400 and _error_target(profile)[1] == "CurrentProfileName"
    email = xapi.call("PATCH", path, json={"EmailAddress": "bad@"})
    assert email.status_code == 400 and _error_target(email)[1] == "EmailAddress"
    assert xapi.get(path).json()["FirstName"] == "New"  # failed patches change nothing
    assert xapi.call("PATCH", "/Users(99999)", json={"FirstName": "x"}).status_code == 404


def test_patch_is_atomic(xapi: Any) -> None:
    user = xapi.call("POST", "/Users", json={"Number": "330", "FirstName": "Keep"}).json()
    response = xapi.call("PATCH", f"/Users({user['Id']})", json={"FirstName": "Changed", "EmailAddress": "nope"})
    assert response.status_code == 400
    assert xapi.get(f"/Users({user['Id']})").json()["FirstName"] == "Keep"


def test_delete_and_batch_delete(xapi: Any, threecx_emulator: Any) -> None:
    a = xapi.call("POST", "/Users", json={"Number": "340"}).json()["Id"]
    b = xapi.call("POST", "/Users", json={"Number": "341"}).json()["Id"]
    c = xapi.call("POST", "/Users", json={"Number": "342"}).json()["Id"]
    assert xapi.call("DELETE", f"/Users({a})").status_code == 204
    assert xapi.call("DELETE", f"/Users({a})").status_code == 404

    fax = xapi.get("/Users(Number='999')").json()["Id"]
    response = xapi.call("POST", "/Users/Pbx.BatchDelete", json={"ids": [b, c, 99999, fax]})
    assert response.status_code == 200
    body = response.json()
    assert "@odata.context" in body
    assert body["value"] == [{"ExtensionNumber": "", "Error": "WARNINGS.XAPI.NOT_FOUND"},
                             {"ExtensionNumber": "999", "Error": "WARNINGS.XAPI.CANNOT_DELETE"}]
    remaining = [u["Number"] for u in xapi.get("/Users", **{"$select": "Number"}).json()["value"]]
    assert "341" not in remaining and "342" not in remaining and "999" in remaining
    assert xapi.call("POST", "/Users/Pbx.BatchDelete", json={"userIds": [b]}).status_code == 400


# ---------------------------------------------------------------- groups, system status, admin


def test_groups(xapi: Any) -> None:
    body = xapi.get("/Groups", **{"$select": "Id,Name,IsDefault", "$orderby": "Id"}).json()
    assert [(g["Name"], g["IsDefault"]) for g in body["value"]] == [("DEFAULT", True), ("Sales", False)]
    default_id = body["value"][0]["Id"]
    group = xapi.get(f"/Groups({default_id})", **{"$expand": "Members"}).json()
    assert sorted(m["Number"] for m in group["Members"]) == SEEDED_NUMBERS
    assert "Members" not in xapi.get(f"/Groups({default_id})").json()
    assert xapi.get("/Groups(99999)").status_code == 404


def test_system_status(xapi: Any) -> None:
    status = xapi.get("/SystemStatus").json()
    assert status["Version"].startswith("20.0.10.") and status["LicenseActive"] is True
    assert {"ProductCode", "MaxSimCalls", "FQDN"} <= set(status)
    selected = xapi.get("/SystemStatus", **{"$select": "Version,LicenseActive"}).json()
    assert set(selected) == {"@odata.context", "Version", "LicenseActive"}


def test_admin_console_edits(xapi: Any, threecx_emulator: Any) -> None:
    made = threecx_emulator.admin("POST", "users", json={"Number": "450", "FirstName": "Hand", "LastName": "Made",
                                                         "Tags": ["Teams"]}).json()
    assert made["Number"] == "450" and made["Groups"] and len(made["ForwardingProfiles"]) == 5
    threecx_emulator.admin("PATCH", f"users/{made['Id']}", json={"CurrentProfileName": "Away",
                                                                 "IsRegistered": True})
    user = xapi.get(f"/Users({made['Id']})").json()
    assert user["CurrentProfileName"] == "Away" and user["IsRegistered"] is True
    import requests

    with pytest.raises(requests.HTTPError) as caught:
        threecx_emulator.admin("PATCH", f"users/{made['Id']}", json={"Number": "451"})
    assert caught.value.response.status_code == 400
    state = threecx_emulator.admin("GET", "state").json()
    assert any(u["Number"] == "450" for u in state["users"])
    assert "client_secret" not in str(state) and xapi.token not in str(state)
    assert state["tokens"]["live"] == 1
    threecx_emulator.admin("DELETE", f"users/{made['Id']}")
    assert xapi.get(f"/Users({made['Id']})").status_code == 404
    assert xapi.counters()["writes"] == 0  # admin edits are not XAPI writes


def test_unfiltered_page_builds_only_its_own_views(xapi: Any, threecx_emulator: Any,
                                                   monkeypatch: pytest.MonkeyPatch) -> None:
    """A ``$top``/``$skip`` page costs O(page) user views, not O(PBX); filters still see every user."""
    _add_users(threecx_emulator, 300)
    backend = threecx_emulator.backend
    built: list[int] = []
    original = backend._user_view

    def counting(rec: Any, *args: Any, **kwargs: Any) -> dict[str, Any]:
        built.append(rec.props["Id"])
        return original(rec, *args, **kwargs)

    monkeypatch.setattr(backend, "_user_view", counting)
    page = xapi.get("/Users", **{"$top": 100, "$skip": 200, "$orderby": "Id", "$expand": "Groups",
                                 "$count": "true"}).json()
    assert len(built) == 100 and page["@odata.count"] == 304
    first = page["value"][0]
    assert first["Groups"] == xapi.get(f"/Users({first['Id']})", **{"$expand": "Groups"}).json()["Groups"]
    built.clear()
    found = xapi.get("/Users", **{"$filter": "FirstName eq 'User299'", "$select": "Number"}).json()["value"]
    assert found == [{"Number": "499"}] and len(built) == 304


def test_number_lookups_use_the_index_and_follow_creates_and_deletes(xapi: Any) -> None:
    """``Number eq .. or ..`` reads, ``/Users(Number=..)``, free-number checks and the Id order come from
    indexes: they must answer as a scan would after creates and deletes."""
    made = [xapi.call("POST", "/Users", json={"Number": str(700 + i), "FirstName": f"Idx{i}"}).json()["Id"]
            for i in range(4)]

    def both(numbers: list[str]) -> list[dict[str, Any]]:
        indexed = " or ".join(f"Number eq '{n}'" for n in numbers)
        scanned = f"(Number eq '{numbers[0]}') or " + " or ".join(f"Number eq '{n}'" for n in numbers[1:])
        params = {"$select": "Id,Number", "$orderby": "Id", "$count": "true"}
        one = xapi.get("/Users", **{"$filter": indexed, **params}).json()
        other = xapi.get("/Users", **{"$filter": scanned, **params}).json()
        assert one == other
        return one["value"]

    assert [u["Number"] for u in both(["703", "100", "701", "nope"])] == ["100", "701", "703"]
    assert xapi.call("DELETE", f"/Users({made[1]})").status_code == 204
    xapi.call("POST", "/Users/Pbx.BatchDelete", json={"ids": [made[3]]})
    assert [u["Number"] for u in both(["703", "701", "700"])] == ["700"]
    assert xapi.get("/Users(Number='701')").status_code == 404
    again = xapi.call("POST", "/Users", json={"Number": "701", "FirstName": "Again"}).json()["Id"]
    assert xapi.get("/Users(Number='701')").json()["Id"] == again
    assert xapi.call("POST", "/Users", json={"Number": "700", "FirstName": "Dup"}).status_code == 400
    ids = [u["Id"] for u in xapi.get("/Users", **{"$select": "Id", "$orderby": "Id"}).json()["value"]]
    assert ids == sorted(ids) and again == ids[-1] and made[1] not in ids and made[3] not in ids
