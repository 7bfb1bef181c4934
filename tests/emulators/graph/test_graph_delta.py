"""GET /users/delta: initial round, change rounds fed by the admin API, tokens and expiry."""

from __future__ import annotations

from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

pytestmark = pytest.mark.integration

SELECT = "/v1.0/users/delta?$select=displayName,givenName,surname,mail,mobilePhone,accountEnabled"


def _round(caller: Any, url: str, headers: dict[str, str] | None = None) -> tuple[list[dict[str, Any]], str]:
    items, pages = caller.all_pages(url, headers)
    for page in pages[:-1]:
        assert "@odata.nextLink" in page and "@odata.deltaLink" not in page
    assert "@odata.deltaLink" in pages[-1] and "@odata.nextLink" not in pages[-1]
    return items, pages[-1]["@odata.deltaLink"]


def test_initial_round_pages_then_delta_link(caller: Any) -> None:
    items, pages = caller.all_pages(SELECT, {"Prefer": "odata.maxpagesize=15"})
    assert [len(p["value"]) for p in pages] == [15, 15, 10]
    assert len({u["id"] for u in items}) == 40
    assert "$deltatoken=" in pages[-1]["@odata.deltaLink"]
    assert "$skiptoken=" in pages[0]["@odata.nextLink"]
    assert all(set(u) <= {"id", "displayName", "givenName", "surname", "mail", "mobilePhone", "accountEnabled"}
               for u in items)
    assert any("accountEnabled" in u for u in items)


def test_change_round_returns_exactly_the_changes(caller: Any, graph: Any) -> None:
    _, delta_link = _round(caller, SELECT, {"Prefer": "odata.maxpagesize=15"})
    users = graph.backend.list_users()
    renamed, disabled, soft, hard, untracked = users[0], users[1], users[2], users[3], users[4]
    graph.admin("PATCH", f"/users/{renamed['id']}", json={"displayName": "Renamed Person"})
    graph.admin("POST", f"/users/{disabled['id']}/disable")
    graph.admin("DELETE", f"/users/{soft['id']}")
    graph.admin("DELETE", f"/users/{hard['id']}", params={"hard": "true"})
    graph.admin("PATCH", f"/users/{untracked['id']}", json={"jobTitle": "Not Selected"})
    created = graph.admin("POST", "/users", json={
        "displayName": "Ngọc Øyvind", "givenName": "Ngọc", "surname": "Øyvind",
        "userPrincipalName": "ngoc.oyvind@contoso.example", "mail": "ngoc.oyvind@contoso.example",
        "onPremisesExtensionAttributes": {"extensionAttribute1": "299"}}).json()

    changes, next_link = _round(caller, delta_link)
    by_id = {u["id"]: u for u in changes}
    assert set(by_id) == {renamed["id"], disabled["id"], soft["id"], hard["id"], created["id"]}
    assert by_id[renamed["id"]]["displayName"] == "Renamed Person"
    assert by_id[renamed["id"]]["surname"] == renamed["surname"]
    assert by_id[disabled["id"]]["accountEnabled"] is False
    assert by_id[soft["id"]] == {"id": soft["id"], "@removed": {"reason": "changed"}}
    assert by_id[hard["id"]] == {"id": hard["id"], "@removed": {"reason": "deleted"}}
    assert by_id[created["id"]]["displayName"] == "Ngọc Øyvind"

    empty, _ = _round(caller, next_link)
    assert empty == []
    graph.admin("POST", f"/users/{soft['id']}/restore")
    restored, _ = _round(caller, next_link)
    assert [u["id"] for u in restored] == [soft["id"]] and "displayName" in restored[0]


def test_return_minimal_only_sends_changed_properties(caller: Any, graph: Any) -> None:
    _, delta_link = _round(caller, SELECT)
    user = next(u for u in graph.backend.list_users() if u["mobilePhone"])
    graph.admin("PATCH", f"/users/{user['id']}", json={"mobilePhone": None, "mail": "new@contoso.example"})
    response = caller.get(delta_link, headers={"Prefer": "return=minimal"})
    assert "return=minimal" in response.headers["Preference-Applied"]
    assert response.json()["value"] == [{"id": user["id"], "mail": "new@contoso.example", "mobilePhone": None}]


def test_expired_tokens_answer_sync_state_not_found(caller: Any, graph: Any) -> None:
    _, delta_link = _round(caller, SELECT)
    graph.admin("POST", "/delta/expire")
    response = caller.get(delta_link)
    assert response.status_code == 400
    error = response.json()["error"]
    assert error["code"] == "syncStateNotFound"
    assert error["message"].startswith("The sync state generation is not found.")

    _, fresh = _round(caller, SELECT)
    assert caller.get(fresh).status_code == 200
    graph.backend.delta_token_max_age = 0
    assert caller.get(fresh).json()["error"]["code"] == "syncStateNotFound"


def test_delta_latest_and_id_filter(caller: Any, graph: Any) -> None:
    users = graph.backend.list_users()
    page = caller.get("/v1.0/users/delta?$deltatoken=latest&$select=displayName").json()
    assert page["value"] == [] and "@odata.deltaLink" in page and "@odata.nextLink" not in page
    graph.admin("PATCH", f"/users/{users[9]['id']}", json={"displayName": "Latest Change"})
    changes, _ = _round(caller, page["@odata.deltaLink"])
    assert [(u["id"], u["displayName"]) for u in changes] == [(users[9]["id"], "Latest Change")]

    ids = f"id eq '{users[0]['id']}' or id eq '{users[1]['id']}'"
    filtered, _ = _round(caller, f"/v1.0/users/delta?$filter={ids}")
    assert {u["id"] for u in filtered} == {users[0]["id"], users[1]["id"]}
    assert caller.get("/v1.0/users/delta?$filter=accountEnabled eq true").status_code == 400
    token = parse_qs(urlsplit(page["@odata.deltaLink"]).query)["$deltatoken"][0]
    assert caller.get(f"/v1.0/users/delta?$deltatoken={token[:-6]}zzzzzz").status_code == 400
