"""Teams presence on the Graph emulator over HTTPS: ``getPresencesByUserId``, its documented limits
(650 ids per request, 1,500 requests per 30 s), the permission check and the admin API."""

from __future__ import annotations

from typing import Any

import pytest
import requests

from emulators.common.handle import EmulatorHandle

PATH = "/v1.0/communications/getPresencesByUserId"


def post(caller: Any, body: Any) -> requests.Response:
    return caller.session.post(f"{caller.info['graph_url']}{PATH}", json=body, verify=caller.info["ca_bundle"],
                               headers={"Authorization": f"Bearer {caller.token}"}, timeout=10)


def user_ids(graph: EmulatorHandle) -> list[str]:
    return [u["id"] for u in graph.admin("GET", "state").json()["users"]]


def test_presence_defaults_to_offline_and_follows_the_admin_api(graph: EmulatorHandle, caller: Any) -> None:
    first, second, third = user_ids(graph)[:3]
    response = graph.admin("PUT", f"users/{first}/presence", json={"availability": "Busy", "activity": "InACall"})
    assert response.status_code == 200, response.text
    answer = post(caller, {"ids": [first, second, "00000000-0000-0000-0000-000000000000", first]})
    assert answer.status_code == 200, answer.text
    assert answer.json()["value"] == [
        {"id": first, "availability": "Busy", "activity": "InACall"},
        {"id": second, "availability": "Offline", "activity": "Offline"},
    ]  # unknown ids are left out, repeated ids answered once
    graph.admin("DELETE", f"users/{third}")
    assert post(caller, {"ids": [third]}).json()["value"] == []  # soft-deleted users have no presence


@pytest.mark.parametrize("body", [None, {}, {"ids": []}, {"ids": "x"}, {"ids": [1]}, {"ids": ["a"] * 651}])
def test_malformed_or_oversized_requests_are_refused(graph: EmulatorHandle, caller: Any, body: Any) -> None:
    response = post(caller, body)
    assert response.status_code == 400
    assert response.json()["error"]["code"] == "BadRequest"
    if body and isinstance(body.get("ids"), list) and len(body["ids"]) == 651:
        assert "650" in response.json()["error"]["message"]


def test_650_ids_are_accepted(graph: EmulatorHandle, caller: Any) -> None:
    ids = user_ids(graph)
    response = post(caller, {"ids": ids + [f"not-a-user-{i}" for i in range(650 - len(ids))]})
    assert response.status_code == 200
    assert len(response.json()["value"]) == len(ids)


def test_without_presence_permission_the_request_is_forbidden(graph: EmulatorHandle, caller: Any) -> None:
    granted = graph.admin("GET", "permissions").json()["granted"]
    assert "Presence.Read.All" in granted
    graph.admin("PUT", "permissions", json={"granted": [g for g in granted if g != "Presence.Read.All"]})
    response = post(caller, {"ids": user_ids(graph)[:1]})
    assert response.status_code == 403
    assert "Presence.Read.All" in response.json()["error"]["message"]
    with pytest.raises(requests.HTTPError, match="400"):
        graph.admin("PUT", "permissions", json={"granted": ["Nope.All"]})
    graph.admin("POST", "reset")
    assert post(caller, {"ids": user_ids(graph)[:1]}).status_code == 200  # a reset grants everything again


def test_over_the_rate_limit_answers_429_with_retry_after(graph: EmulatorHandle, caller: Any) -> None:
    assert graph.admin("GET", "presence/limits").json()["limit"] == 1500
    graph.admin("PUT", "presence/limits", json={"requests": 2, "window_seconds": 30})
    ids = user_ids(graph)[:2]
    assert [post(caller, {"ids": ids}).status_code for _ in range(2)] == [200, 200]
    throttled = post(caller, {"ids": ids})
    assert throttled.status_code == 429
    assert throttled.json()["error"]["code"] == "TooManyRequests"
    assert 1 <= int(throttled.headers["Retry-After"]) <= 30
    assert graph.admin("GET", "presence/limits").json()["peak_in_window"] == 2


def test_admin_api_refuses_undocumented_values_and_unknown_users(graph: EmulatorHandle) -> None:
    uid = user_ids(graph)[0]
    for key, body, status in ((uid, {"availability": "Lunch", "activity": "Away"}, "400"),
                              (uid, {"availability": "Away", "activity": "Napping"}, "400"),
                              ("nobody", {"availability": "Away", "activity": "Away"}, "404")):
        with pytest.raises(requests.HTTPError, match=status):
            graph.admin("PUT", f"users/{key}/presence", json=body)
