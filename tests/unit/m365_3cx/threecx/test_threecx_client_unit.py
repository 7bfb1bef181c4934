"""Unit tests for ThreeCXClient: tokens, 401 handling, paging and error classification."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from typing import Any

import pytest
import requests
import requests_mock

from m365_3cx.errors import ConfigError, ThreeCXAuthError, ThreeCXError, ThreeCXFatalError, ThreeCXRetriableError
from m365_3cx.http import HttpTransport, RetryPolicy
from m365_3cx.threecx.client import (
    USER_SELECT,
    ThreeCXClient,
    ThreeCXCredentials,
    classify_token_response,
    classify_xapi_response,
    clear_token_cache,
    odata_quote,
    token_lifetime,
)

BASE = "https://pbx.test:5001"
API = f"{BASE}/xapi/v1"
TOKEN = f"{BASE}/connect/token"
SECRET = "PBX-API-KEY-123"


def _response(status: int, body: Any = None) -> requests.Response:
    response = requests.Response()
    response.status_code = status
    response._content = json.dumps(body).encode() if body is not None else b""
    return response


def _odata(message: str, target: str | None = None) -> dict[str, Any]:
    detail = {"code": "", "message": message, "target": target}
    return {"error": {"code": "", "message": f"{target}:\n{message}", "details": [detail]}}


@pytest.mark.parametrize(
    ("status", "body", "cls", "code", "target"),
    [
        (
            400,
            _odata("WARNINGS.XAPI.ALREADY_IN_USE", "Number"),
            ThreeCXFatalError,
            "WARNINGS.XAPI.ALREADY_IN_USE",
            "Number",
        ),
        (400, {"error": {"code": "BadRequest", "message": "bad"}}, ThreeCXFatalError, "BadRequest", None),
        (404, None, ThreeCXFatalError, "NOT_FOUND", None),
        (404, _odata("WARNINGS.XAPI.NOT_FOUND"), ThreeCXFatalError, "WARNINGS.XAPI.NOT_FOUND", None),
        (403, None, ThreeCXFatalError, None, None),
        (401, None, ThreeCXAuthError, None, None),
        (429, None, ThreeCXRetriableError, None, None),
        (500, _odata("boom"), ThreeCXRetriableError, "boom", None),
        (503, None, ThreeCXRetriableError, None, None),
    ],
)
def test_classify_xapi_response(
    status: int, body: Any, cls: type[ThreeCXError], code: str | None, target: str | None
) -> None:
    err = classify_xapi_response(_response(status, body))
    assert type(err) is cls
    assert (err.status, err.code, err.target) == (status, code, target)


@pytest.mark.parametrize(
    ("status", "cls"),
    [
        (400, ThreeCXAuthError),
        (401, ThreeCXAuthError),
        (404, ThreeCXAuthError),
        (429, ThreeCXRetriableError),
        (502, ThreeCXRetriableError),
    ],
)
def test_classify_token_response(status: int, cls: type[ThreeCXError]) -> None:
    body = {"error": "unauthorized", "error_description": "The request requires valid user authentication."}
    assert type(classify_token_response(_response(status, body))) is cls


@pytest.mark.parametrize(
    ("expires_in", "seconds"),
    [(60, 3600.0), (120, 7200.0), (121, 121.0), (3600, 3600.0), ("3600", 3600.0), (None, 3600.0), (0, 3600.0)],
)
def test_token_lifetime(expires_in: Any, seconds: float) -> None:
    assert token_lifetime(expires_in) == seconds


@pytest.mark.parametrize(
    ("value", "quoted"), [("101", "'101'"), ("O'Brien", "'O''Brien'"), ("''", "''''''"), ("", "''")]
)
def test_odata_quote(value: str, quoted: str) -> None:
    assert odata_quote(value) == quoted


@pytest.mark.parametrize(
    "kwargs",
    [{"base_url": "http://pbx"}, {"client_id": ""}, {"client_secret": ""}],
)
def test_credentials_validation(kwargs: dict[str, Any]) -> None:
    base = {"base_url": BASE, "client_id": "900", "client_secret": SECRET}
    base.update(kwargs)
    with pytest.raises(ConfigError):
        ThreeCXCredentials(**base)


@pytest.fixture(autouse=True)
def _clean_cache() -> Iterator[None]:
    clear_token_cache()
    yield
    clear_token_cache()


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def _client(clock: Clock | None = None) -> ThreeCXClient:
    creds = ThreeCXCredentials(BASE + "/", "900", SECRET, ca_bundle="/pbx-ca.pem")
    policy = RetryPolicy(max_attempts=3, backoff_base=0.0)
    transport = HttpTransport(policy, ca_bundle=creds.ca_bundle, sleep=lambda _s: None)
    return ThreeCXClient(creds, policy, transport, clock=clock or Clock())


def _tokens(m: requests_mock.Mocker, *values: str, expires_in: int = 3600) -> None:
    m.post(TOKEN, [{"json": {"token_type": "Bearer", "expires_in": expires_in, "access_token": v}} for v in values])


def test_token_request_form_and_sharing() -> None:
    with requests_mock.Mocker() as m:
        _tokens(m, "T1")
        m.get(f"{API}/SystemStatus", json={"Version": "20.0.10"})
        a, b = _client(), _client()
        assert a.test_connection() == (True, "Connected to 3CX 20.0.10")
        assert b.system_status()["Version"] == "20.0.10"
        posts = [r for r in m.request_history if r.method == "POST"]
        assert len(posts) == 1
        assert posts[0].text is not None
        form = dict(p.split("=") for p in posts[0].text.split("&"))
        assert form == {"client_id": "900", "client_secret": SECRET, "grant_type": "client_credentials"}
        assert all(r.verify == "/pbx-ca.pem" for r in m.request_history)
        assert m.request_history[-1].headers["Authorization"] == "Bearer T1"


@pytest.mark.parametrize(
    ("expires_in", "advance", "renewed"),
    [(60, 3600 - 61, False), (60, 3600 - 59, True), (3600, 3539, False), (3600, 3541, True)],
)
def test_token_refresh_margin(expires_in: int, advance: float, renewed: bool) -> None:
    clock = Clock()
    client = _client(clock)
    with requests_mock.Mocker() as m:
        _tokens(m, "T1", "T2", expires_in=expires_in)
        assert client.token() == "T1"
        clock.now += advance
        assert client.token() == ("T2" if renewed else "T1")


def test_bad_secret_is_auth_error_without_secret(caplog: pytest.LogCaptureFixture) -> None:
    client = _client()
    with requests_mock.Mocker() as m, caplog.at_level(logging.DEBUG):
        m.post(TOKEN, status_code=401, json={"error": "unauthorized", "error_description": "nope"})
        ok, message = client.test_connection()
    assert not ok and "nope" in message
    assert SECRET not in message and SECRET not in repr(client) and SECRET not in repr(client.credentials)
    assert all(SECRET not in r.getMessage() for r in caplog.records)


def test_401_reauthenticates_once() -> None:
    client = _client()
    with requests_mock.Mocker() as m:
        _tokens(m, "T1", "T2")
        m.get(f"{API}/Users(5)", [{"status_code": 401}, {"json": {"Id": 5}}])
        assert client.get_user(5) == {"Id": 5}
        auths = [r.headers.get("Authorization") for r in m.request_history if r.method == "GET"]
        assert auths == ["Bearer T1", "Bearer T2"]


def test_401_twice_raises() -> None:
    client = _client()
    with requests_mock.Mocker() as m:
        _tokens(m, "T1", "T2", "T3")
        m.get(f"{API}/Users(5)", status_code=401)
        with pytest.raises(ThreeCXAuthError):
            client.get_user(5)
        assert len([r for r in m.request_history if r.method == "POST"]) == 2


def test_401_does_not_renew_when_another_thread_already_did() -> None:
    client, other = _client(), _client()
    with requests_mock.Mocker() as m:
        _tokens(m, "T1", "T2", "T3")

        def answer(request: Any, context: Any) -> dict[str, Any]:
            if request.headers["Authorization"] == "Bearer T1":
                other._renew_after_401("T1")  # another caller renews while our request is in flight
                context.status_code = 401
                return {}
            return {"Id": 5}

        m.get(f"{API}/Users(5)", json=answer)
        assert client.get_user(5) == {"Id": 5}
        assert len([r for r in m.request_history if r.method == "POST"]) == 2  # T1, then T2 only


def test_iter_collection_pages_until_short_page() -> None:
    client = _client()
    with requests_mock.Mocker() as m:
        _tokens(m, "T1")
        m.get(
            f"{API}/Users",
            [
                {"json": {"value": [{"Id": i} for i in range(1, 101)]}},
                {"json": {"value": [{"Id": i} for i in range(101, 201)]}},
                {"json": {"value": [{"Id": 201}]}},
            ],
        )
        pages = list(client.list_users(filter=f"Number eq {odata_quote('101')}"))
        assert [len(p) for p in pages] == [100, 100, 1]
        gets = [r for r in m.request_history if r.method == "GET"]
        assert [r.qs["$skip"] for r in gets] == [["0"], ["100"], ["200"]]
        assert gets[0].qs["$top"] == ["100"] and gets[0].qs["$orderby"] == ["id"]
        assert gets[0].qs["$select"] == [",".join(USER_SELECT).lower()]
        assert gets[0].qs["$filter"] == ["number eq '101'"]


def test_iter_collection_refuses_to_loop() -> None:
    client = _client()
    with requests_mock.Mocker() as m:
        _tokens(m, "T1")
        m.get(f"{API}/Users", json={"value": [{"Id": i} for i in range(1, 101)]})
        with pytest.raises(ThreeCXFatalError, match="repeats"):
            list(client.list_users())


def test_write_operations() -> None:
    client = _client()
    with requests_mock.Mocker() as m:
        _tokens(m, "T1")
        m.post(f"{API}/Users", status_code=201, json={"Id": 9, "Number": "105"})
        assert client.create_user({"Number": "105"}) == {"Id": 9, "Number": "105"}
        m.patch(f"{API}/Users(9)", status_code=204)
        client.update_user(9, {"FirstName": "A"})
        assert m.last_request.json() == {"FirstName": "A"}
        m.delete(f"{API}/Users(9)", status_code=204)
        client.delete_user(9)
        m.delete(f"{API}/Users(10)", status_code=404, json=_odata("WARNINGS.XAPI.NOT_FOUND"))
        with pytest.raises(ThreeCXFatalError) as info:
            client.delete_user(10)
        assert info.value.code == "NOT_FOUND" and info.value.status == 404
        m.post(f"{API}/Users/Pbx.BatchDelete", json={"value": [{"ExtensionNumber": "1", "Error": "x"}]})
        assert client.batch_delete_users([1, 2]) == [{"ExtensionNumber": "1", "Error": "x"}]
        assert m.last_request.json() == {"ids": [1, 2]}
        m.get(f"{API}/Users/Pbx.GetFirstAvailableExtensionNumber()", json={"Number": "106"})
        assert client.first_available_number() == "106"
        m.get(f"{API}/Groups", json={"value": [{"Id": 1, "IsDefault": True}]})
        assert client.default_group() == {"Id": 1, "IsDefault": True}
        assert m.last_request.qs["$filter"] == ["isdefault eq true"]
        m.get(f"{API}/Groups", json={"value": []})
        assert client.default_group() is None


def test_create_conflict_and_no_retry_on_500() -> None:
    client = _client()
    with requests_mock.Mocker() as m:
        _tokens(m, "T1")
        m.post(f"{API}/Users", status_code=400, json=_odata("WARNINGS.XAPI.ALREADY_IN_USE", "Number"))
        with pytest.raises(ThreeCXFatalError) as info:
            client.create_user({"Number": "100"})
        assert info.value.target == "Number" and info.value.code == "WARNINGS.XAPI.ALREADY_IN_USE"
        m.post(f"{API}/Users", status_code=500)
        with pytest.raises(ThreeCXRetriableError):
            client.create_user({"Number": "100"})
        assert len([r for r in m.request_history if r.url == f"{API}/Users"]) == 2
