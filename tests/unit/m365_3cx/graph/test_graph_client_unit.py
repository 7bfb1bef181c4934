"""Unit tests for GraphClient and its error classifier (HTTP faked with requests_mock)."""

from __future__ import annotations

import json
from typing import Any

import pytest
import requests
import requests_mock

from m365_3cx.errors import (
    DeltaTokenExpiredError,
    GraphAuthError,
    GraphError,
    GraphFatalError,
    GraphRetriableError,
    MailboxUnavailableError,
)
from m365_3cx.graph.auth import GraphCredentials
from m365_3cx.graph.client import GraphClient, GraphPage, classify_graph_response
from m365_3cx.http import HttpTransport, RetryPolicy

G = "https://graph.microsoft.com/v1.0"


def _response(status: int, body: Any = None, headers: dict[str, str] | None = None) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response._content = json.dumps(body).encode() if body is not None else b""
    response.headers.update(headers or {})
    return response


def _env(code: str, message: str = "msg", request_id: str | None = "rid-1") -> dict[str, Any]:
    inner = {"request-id": request_id} if request_id else {}
    return {"error": {"code": code, "message": message, "innerError": inner}}


@pytest.mark.parametrize(
    ("status", "body", "headers", "cls", "code"),
    [
        (400, _env("syncStateNotFound"), {}, DeltaTokenExpiredError, "syncStateNotFound"),
        (400, _env("SYNCSTATENOTFOUND"), {}, DeltaTokenExpiredError, "SYNCSTATENOTFOUND"),
        (400, _env("resyncRequired"), {}, DeltaTokenExpiredError, "resyncRequired"),
        (410, _env("SyncStateNotFound"), {}, DeltaTokenExpiredError, "SyncStateNotFound"),
        (410, None, {}, DeltaTokenExpiredError, None),
        (400, _env("BadRequest"), {}, GraphFatalError, "BadRequest"),
        (401, _env("InvalidAuthenticationToken"), {}, GraphAuthError, "InvalidAuthenticationToken"),
        (403, _env("Authorization_RequestDenied"), {}, GraphFatalError, "Authorization_RequestDenied"),
        (404, _env("MailboxNotEnabledForRESTAPI"), {}, MailboxUnavailableError, "MailboxNotEnabledForRESTAPI"),
        (404, _env("Request_ResourceNotFound"), {}, GraphFatalError, "Request_ResourceNotFound"),
        (429, _env("TooManyRequests"), {"Retry-After": "2.128"}, GraphRetriableError, "TooManyRequests"),
        (500, None, {}, GraphRetriableError, None),
        (503, "not an envelope", {}, GraphRetriableError, None),
        (504, _env("GatewayTimeout"), {}, GraphRetriableError, "GatewayTimeout"),
    ],
)
def test_classify_graph_response(
    status: int, body: Any, headers: dict[str, str], cls: type[GraphError], code: str | None
) -> None:
    err = classify_graph_response(_response(status, body, headers))
    assert type(err) is cls
    assert err.status == status
    assert err.code == code


def test_classify_details() -> None:
    err = classify_graph_response(_response(429, _env("TooManyRequests"), {"Retry-After": "2.128"}))
    assert err.retry_after == 2.128 and err.request_id == "rid-1"
    err = classify_graph_response(_response(500, _env("x", request_id=None), {"request-id": "hdr-rid"}))
    assert err.request_id == "hdr-rid"
    err = classify_graph_response(_response(403, _env("Authorization_RequestDenied")))
    assert "application permission" in str(err)


class FakeTokens:
    def __init__(self) -> None:
        self.issued = 0
        self.invalidated: list[str] = []
        self.current: str | None = None

    def token(self) -> str:
        if self.current is None:
            self.issued += 1
            self.current = f"tok{self.issued}"
        return self.current

    def invalidate(self, token: str) -> None:
        self.invalidated.append(token)
        if self.current == token:
            self.current = None

    def close(self) -> None:
        pass


def _client(**cred_kw: Any) -> tuple[GraphClient, FakeTokens]:
    creds = GraphCredentials("t", "c", client_secret="s", ca_bundle="/ca.pem", **cred_kw)
    tokens = FakeTokens()
    policy = RetryPolicy(max_attempts=3, backoff_base=0.0)
    transport = HttpTransport(policy, ca_bundle=creds.ca_bundle, sleep=lambda _s: None)
    return GraphClient(creds, policy, transport, token_provider=tokens), tokens  # type: ignore[arg-type]


def test_iter_pages_follows_next_links_as_is() -> None:
    client, _ = _client()
    next_url = f"{G}/users?$select=id&$top=2&$skiptoken=AAA"
    with requests_mock.Mocker() as m:
        m.get(f"{G}/users", [{"json": {"value": [{"id": "1"}, {"id": "2"}], "@odata.nextLink": next_url}}])
        m.get(next_url, json={"value": [{"id": "3"}]}, complete_qs=True)
        pages = list(client.list_users(["id"], page_size=2))
        assert pages == [[{"id": "1"}, {"id": "2"}], [{"id": "3"}]]
        first, second = m.request_history
        assert first.qs == {"$select": ["id"], "$top": ["2"]}
        assert second.url == next_url or second.qs == {"$select": ["id"], "$top": ["2"], "$skiptoken": ["aaa"]}
        for req in m.request_history:
            assert req.headers["Accept"] == "application/json"
            assert req.headers["Authorization"] == "Bearer tok1"
            assert len(req.headers["client-request-id"]) == 36
            assert req.verify == "/ca.pem"


def test_next_link_to_another_host_is_refused() -> None:
    client, _ = _client()
    with requests_mock.Mocker() as m:
        m.get(f"{G}/users", json={"value": [], "@odata.nextLink": "https://evil.test/v1.0/users?$skiptoken=x"})
        with pytest.raises(GraphFatalError) as info:
            list(client.iter_pages("/users"))
        assert info.value.code == "ForeignHost"
        assert m.call_count == 1
    with pytest.raises(GraphFatalError):
        list(client.users_delta("https://evil.test/v1.0/users/delta?$deltatoken=x", ["id"]))


def test_repeated_next_link_raises() -> None:
    client, _ = _client()
    loop = f"{G}/users?$skiptoken=L"
    with requests_mock.Mocker() as m:
        m.get(f"{G}/users", json={"value": [], "@odata.nextLink": loop})
        with pytest.raises(GraphFatalError, match="repeated"):
            list(client.iter_pages("/users"))


def test_users_delta_rounds() -> None:
    client, _ = _client()
    n1 = f"{G}/users/delta?$skiptoken=S1"
    d1 = f"{G}/users/delta?$deltatoken=D1"
    with requests_mock.Mocker() as m:
        m.get(
            f"{G}/users/delta",
            [
                {"json": {"value": [{"id": "a"}], "@odata.nextLink": n1}},
            ],
        )
        m.get(n1, json={"value": [{"id": "b"}], "@odata.deltaLink": d1})
        pages = list(client.users_delta(None, ["id", "displayName"]))
        assert pages == [GraphPage([{"id": "a"}], None, 1), GraphPage([{"id": "b"}], d1, 2)]
        assert m.request_history[0].qs == {"$select": ["id,displayname"]}
        m.get(d1, status_code=410, json=_env("SyncStateNotFound"))
        with pytest.raises(DeltaTokenExpiredError):
            list(client.users_delta(d1, ["id"]))


def test_group_member_ids() -> None:
    client, _ = _client()
    url = f"{G}/groups/g-1/transitiveMembers/microsoft.graph.user"
    with requests_mock.Mocker() as m:
        m.get(url, json={"value": [{"id": "u1"}, {"id": "u2"}]})
        assert client.group_member_ids("g-1") == {"u1", "u2"}
        assert m.request_history[0].qs == {"$select": ["id"], "$top": ["999"]}


def test_401_renews_token_once() -> None:
    client, tokens = _client()
    with requests_mock.Mocker() as m:
        m.get(
            f"{G}/users/u1",
            [
                {"status_code": 401, "json": _env("InvalidAuthenticationToken")},
                {"json": {"id": "u1"}},
            ],
        )
        assert client.get("/users/u1") == {"id": "u1"}
        assert [r.headers["Authorization"] for r in m.request_history] == ["Bearer tok1", "Bearer tok2"]
    assert tokens.invalidated == ["tok1"]


def test_401_twice_raises_auth_error() -> None:
    client, tokens = _client()
    with requests_mock.Mocker() as m:
        m.get(f"{G}/users/u1", status_code=401, json=_env("InvalidAuthenticationToken"))
        with pytest.raises(GraphAuthError):
            client.get("/users/u1")
        assert m.call_count == 2
    assert tokens.invalidated == ["tok1"]


def test_throttling_is_retried_then_succeeds() -> None:
    client, _ = _client()
    with requests_mock.Mocker() as m:
        m.get(
            f"{G}/users",
            [
                {"status_code": 429, "json": _env("TooManyRequests"), "headers": {"Retry-After": "0"}},
                {"status_code": 503, "json": _env("ServiceUnavailable")},
                {"json": {"value": [{"id": "1"}]}},
            ],
        )
        assert list(client.list_users(["id"])) == [[{"id": "1"}]]


def test_custom_graph_url() -> None:
    client, _ = _client(graph_url="https://graph.local:8443", authority_host="https://login.local:8443")
    with requests_mock.Mocker() as m:
        m.get("https://graph.local:8443/v1.0/users", json={"value": [{"id": "x"}]})
        ok, message = client.test_connection()
        assert ok, message
        assert m.request_history[0].qs == {"$top": ["1"], "$select": ["id"]}
        m.get("https://graph.local:8443/v1.0/users", status_code=403, json=_env("Authorization_RequestDenied"))
        ok, message = client.test_connection()
        assert not ok and "permission" in message


def test_repr_has_no_secret() -> None:
    client, _ = _client()
    assert "'s'" not in repr(client) and "client_secret" not in repr(client)
