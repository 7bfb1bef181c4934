"""POST /v1.0/$batch: limits, dependsOn, per-mailbox concurrency (429 per item), counters."""

from __future__ import annotations

from typing import Any

import pytest

from emulators.graph import errors

pytestmark = pytest.mark.integration


def _members(graph: Any) -> list[dict[str, Any]]:
    return [u for u in graph.backend.list_users() if u["mail"] and u["userType"] == "Member"]


def _batch(caller: Any, body: Any) -> Any:
    return caller.session.post(f"{caller.info['graph_url']}/v1.0/$batch", json=body, timeout=10,
                               headers={"Authorization": f"Bearer {caller.token}"}, verify=caller.info["ca_bundle"])


def test_twenty_items_across_mailboxes_all_succeed_and_are_counted(caller: Any, graph: Any) -> None:
    users = _members(graph)[:5]
    requests = [{"id": str(i), "method": "GET",
                 "url": (f"/users/{users[i % 5]['id']}/contacts?$top=1" if i % 2 else
                         f"users/{users[i % 5]['id']}/mailboxSettings/automaticRepliesSetting")}
                for i in range(20)]
    response = _batch(caller, {"requests": requests})
    assert response.status_code == 200
    answers = {r["id"]: r for r in response.json()["responses"]}
    assert set(answers) == {str(i) for i in range(20)}
    assert all(r["status"] == 200 for r in answers.values()), [r["status"] for r in answers.values()]
    assert "value" in answers["1"]["body"] and "status" in answers["0"]["body"]
    counters = graph.admin("GET", "/counters").json()["requests"]
    assert counters["POST /v1.0/$batch"] == 1
    assert counters["GET /v1.0/users/{id}/contacts"] == 10
    assert counters["GET /v1.0/users/{id}/mailboxSettings/automaticRepliesSetting"] == 10


def test_limits_and_malformed_batches_are_400(caller: Any) -> None:
    item = {"method": "GET", "url": "/users"}
    too_many = _batch(caller, {"requests": [{"id": str(i), **item} for i in range(21)]})
    assert too_many.status_code == 400 and too_many.json()["error"]["code"] == "BadRequest"
    for body in ({}, {"requests": []}, {"requests": [{"id": "1", "method": "GET"}]},
                 {"requests": [{"id": "1", **item}, {"id": "1", **item}]},
                 {"requests": [{"id": "1", **item, "dependsOn": ["9"]}]}, [1, 2]):
        assert _batch(caller, body).status_code == 400, body


def test_more_than_four_items_for_one_mailbox_get_429_each(caller: Any, graph: Any) -> None:
    uid = _members(graph)[0]["id"]
    graph.admin("DELETE", "/mailbox/concurrency")
    requests = [{"id": str(i), "method": "GET", "url": f"/users/{uid}/contacts?$top=1"} for i in range(7)]
    answers = _batch(caller, {"requests": requests}).json()["responses"]
    throttled = [r for r in answers if r["status"] == 429]
    assert len(throttled) == 3 and sum(r["status"] == 200 for r in answers) == 4
    for answer in throttled:
        assert answer["headers"]["Retry-After"] == "1"
        assert answer["body"]["error"]["code"] == "ApplicationThrottled"
        assert answer["body"]["error"]["message"] == "Application is over its MailboxConcurrency limit."
    state = graph.admin("GET", "/mailbox/concurrency").json()
    assert state["peak"][uid] == 4 and state["rejected"] == 3
    assert graph.admin("GET", "/counters").json()["requests"]["GET /v1.0/users/{id}/contacts"] == 7


def test_direct_call_over_the_limit_is_429(caller: Any, graph: Any) -> None:
    uid = _members(graph)[0]["id"]
    tracker = graph.backend.mailboxes.concurrency
    for _ in range(4):
        assert tracker.try_acquire(uid)
    try:
        response = caller.get(f"/v1.0/users/{uid}/contacts")
        assert response.status_code == 429 and response.headers["Retry-After"] == "1"
        other = _members(graph)[1]["id"]
        assert caller.get(f"/v1.0/users/{other}/contacts").status_code == 200
    finally:
        for _ in range(4):
            tracker.release(uid)
    assert caller.get(f"/v1.0/users/{uid}/contacts").status_code == 200


def test_depends_on_failure_is_424_and_inner_errors_stay_inner(caller: Any, graph: Any) -> None:
    users = graph.backend.list_users()
    guest = next(u for u in users if u["userType"] == "Guest")
    member = _members(graph)[0]
    response = _batch(caller, {"requests": [
        {"id": "a", "method": "GET", "url": f"/users/{guest['id']}/contacts"},
        {"id": "b", "method": "GET", "url": f"/users/{member['id']}/contacts", "dependsOn": ["a"]},
        {"id": "c", "method": "GET", "url": f"/users/{member['id']}", "dependsOn": []},
    ]})
    assert response.status_code == 200
    answers = {r["id"]: r for r in response.json()["responses"]}
    assert answers["a"]["status"] == 404
    assert answers["a"]["body"]["error"]["code"] == "MailboxNotEnabledForRESTAPI"
    assert answers["b"]["status"] == 424
    assert answers["c"]["status"] == 200 and answers["c"]["body"]["id"] == member["id"]
    counters = graph.admin("GET", "/counters").json()["requests"]
    assert "GET /v1.0/users/{id}/contacts" in counters and counters["GET /v1.0/users/{id}"] == 1


def test_inner_requests_see_the_fault_plan(caller: Any, graph: Any) -> None:
    uid = _members(graph)[0]["id"]
    graph.admin("POST", "/faults", json={"kind": "status", "status": 503, "path": "/calendarView", "count": 1,
                                         "retry_after": 3})
    url = f"/users/{uid}/calendarView?startDateTime=2031-01-01&endDateTime=2031-01-02"
    response = _batch(caller, {"requests": [{"id": "1", "method": "GET", "url": url},
                                            {"id": "2", "method": "GET", "url": url}]})
    statuses = sorted((r["status"], r["headers"].get("Retry-After")) for r in response.json()["responses"])
    assert statuses == [(200, None), (503, "3")]
    assert graph.admin("GET", "/counters").json()["faults"]["GET /v1.0/users/{id}/calendarView"] == 1


def test_request_ids_are_not_case_sensitive_but_must_be_unique(caller: Any, graph: Any) -> None:
    uid = _members(graph)[0]["id"]
    item = {"method": "GET", "url": f"/users/{uid}/contacts?$top=1"}
    duplicate = _batch(caller, {"requests": [{"id": "a", **item}, {"id": "A", **item}]})
    assert duplicate.status_code == 400
    assert duplicate.json()["error"]["code"] == "BadRequest"
    assert "unique" in duplicate.json()["error"]["message"]
    # dependsOn names an id whatever its case; the answer keeps each id as sent
    answers = _batch(caller, {"requests": [{"id": "First", **item}, {"id": "second", "dependsOn": ["FIRST"], **item}]})
    assert answers.status_code == 200, answers.text
    assert sorted(r["id"] for r in answers.json()["responses"]) == ["First", "second"]
    assert all(r["status"] == 200 for r in answers.json()["responses"])


def _comparable(status: int, headers: Any, body: Any) -> tuple[int, dict[str, str], Any]:
    """An answer without what differs per request (request ids, the error's date)."""
    kept = {name: headers[name] for name in ("Content-Type", "Retry-After", "Location", "Preference-Applied",
                                             "WWW-Authenticate", "OData-Version", "Cache-Control") if name in headers}
    if isinstance(body, dict) and isinstance(body.get("error"), dict):
        body["error"].get("innerError", {}).pop("date", None)
        body["error"].get("innerError", {}).pop("request-id", None)
        body["error"].get("innerError", {}).pop("client-request-id", None)
    return status, kept, body


def test_inner_answers_are_the_answers_of_the_same_requests_sent_alone(caller: Any, graph: Any) -> None:
    """Plain routes, routes FastAPI's own handler runs, ids that spell route literals, unknown paths."""
    uid = _members(graph)[0]["id"]
    folder = caller.get(f"/v1.0/users/{uid}/contactFolders").json()["value"][0]["id"]
    contact = caller.get(f"/v1.0/users/{uid}/contacts?$top=1").json()["value"][0]["id"]
    urls = [f"/users/{uid}/mailboxSettings/automaticRepliesSetting", f"/users/{uid}/contactFolders",
            f"/users/{uid}/contactFolders/{folder}/contacts", f"/users/{uid}/contacts/{contact}",
            f"/users/{uid}/contacts/{contact}?folder_id=x", f"/users/{uid}", "/users?$top=2",
            f"/users/{uid}/contactFolders/delta/contacts/delta", "/users/contacts/contacts", "/users/$batch",
            f"/users/{uid}/calendarView/delta", f"/users/{uid}/contacts?$bogus=1", "/nothing/here", "/users//x"]
    for url in urls:  # one batch each: a mailbox takes 4 items of a batch at a time
        inner = _batch(caller, {"requests": [{"id": "1", "method": "GET", "url": url}]}).json()["responses"][0]
        alone = caller.get(f"/v1.0{url}")
        body = alone.json() if alone.content else None
        assert _comparable(inner["status"], inner["headers"], inner.get("body")) == \
            _comparable(alone.status_code, alone.headers, body), url


def test_batch_answer_is_written_as_graph_writes_json(caller: Any, graph: Any) -> None:
    """Inner bodies are embedded as sent; the whole answer still reads back to the same text, also with an
    inner body that escapes a lone surrogate and one that is not JSON at all."""
    uid = _members(graph)[0]["id"]
    graph.admin("POST", f"/users/{uid}/contacts", json={"displayName": "Cut \ud83d", "givenName": "A"})
    graph.admin("POST", "/faults", json={"kind": "status", "status": 503, "path": "/events", "count": 1})
    response = _batch(caller, {"requests": [
        {"id": "1", "method": "GET", "url": f"/users/{uid}/contacts?$top=999"},
        {"id": "2", "method": "GET", "url": f"/users/{uid}/mailboxSettings/automaticRepliesSetting"},
        {"id": "3", "method": "GET", "url": f"/users/{uid}/events"},
        {"id": "4", "method": "GET", "url": "/nothing/here"},
    ]})
    assert response.status_code == 200
    assert response.headers["Content-Type"] == errors.JSON_MEDIA_TYPE
    assert response.content == errors.dumps(response.json())
    assert b"Cut \\ud83d" in response.content
    statuses = {r["id"]: r["status"] for r in response.json()["responses"]}
    assert statuses == {"1": 200, "2": 200, "3": 503, "4": 400}


def test_a_revoked_token_refuses_the_inner_request_and_what_follows(caller: Any, graph: Any) -> None:
    uid = _members(graph)[0]["id"]
    graph.admin("POST", "/faults", json={"kind": "revoke_token", "path": "/automaticRepliesSetting", "count": 1})
    url = f"/users/{uid}/mailboxSettings/automaticRepliesSetting"
    response = _batch(caller, {"requests": [{"id": "1", "method": "GET", "url": url}]})
    assert response.status_code == 200
    inner = response.json()["responses"][0]
    assert inner["status"] == 401 and inner["body"]["error"]["code"] == "InvalidAuthenticationToken"
    assert inner["headers"]["WWW-Authenticate"].startswith("Bearer ")
    alone = caller.get(f"/v1.0{url}")
    assert alone.status_code == 401
    assert _comparable(401, inner["headers"], inner["body"]) == _comparable(401, alone.headers, alone.json())
    assert _batch(caller, {"requests": [{"id": "1", "method": "GET", "url": url}]}).status_code == 401
    assert graph.admin("GET", "/counters").json()["faults"] == {
        "GET /v1.0/users/{id}/mailboxSettings/automaticRepliesSetting": 1}
