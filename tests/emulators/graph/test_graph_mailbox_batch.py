"""POST /v1.0/$batch: limits, dependsOn, per-mailbox concurrency (429 per item), counters."""

from __future__ import annotations

from typing import Any

import pytest

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
