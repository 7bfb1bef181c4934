"""Unit tests for m365_3cx.http: policy, Retry-After, URL masking and the retrying transport."""

from __future__ import annotations

import logging
from datetime import UTC, datetime
from pathlib import Path

import pytest
import requests
import requests_mock

from m365_3cx.errors import RetriableServiceError, ServiceError
from m365_3cx.http import HttpTransport, RetryPolicy, mask_url, parse_retry_after

URL = "https://svc.test/v1/items"
NOW = datetime(2026, 1, 1, 12, 0, 0, tzinfo=UTC)


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (None, None),
        ("", None),
        ("   ", None),
        ("5", 5.0),
        ("2.128", 2.128),
        (" 7 ", 7.0),
        ("0", 0.0),
        ("-3", 0.0),
        ("nan", None),
        ("inf", None),
        ("soon", None),
        ("Thu, 01 Jan 2026 12:00:30 GMT", 30.0),
        ("Thu, 01 Jan 2026 11:59:00 GMT", 0.0),
    ],
)
def test_parse_retry_after(value: str | None, expected: float | None) -> None:
    assert parse_retry_after(value, now=NOW) == expected


@pytest.mark.parametrize(
    ("url", "expected"),
    [
        ("https://g.test/v1.0/users?$select=id,mail&$top=999", "https://g.test/v1.0/users?$select=id,mail&$top=999"),
        ("https://g.test/v1.0/users?$skiptoken=abc", "https://g.test/v1.0/users?$skiptoken=***"),
        (
            "https://g.test/v1.0/users/delta?$deltatoken=xyz&$select=id",
            "https://g.test/v1.0/users/delta?$deltatoken=***&$select=id",
        ),
        ("https://g.test/v1.0/users?%24skiptoken=abc", "https://g.test/v1.0/users?%24skiptoken=***"),
        (
            "https://p.test/connect/token?client_secret=s3cr3t&client_id=7",
            "https://p.test/connect/token?client_secret=***&client_id=7",
        ),
        ("https://p.test/cb?code=abc&state=1", "https://p.test/cb?code=***&state=1"),
        ("https://p.test/x?access_token=abc", "https://p.test/x?access_token=***"),
        ("https://p.test/x?my_refresh_token=abc", "https://p.test/x?my_refresh_token=***"),
        ("https://p.test/x?blob=" + "A" * 40, "https://p.test/x?blob=***"),
        ("https://p.test/x?n=" + "1" * 40, "https://p.test/x?n=" + "1" * 40),
        ("https://user:pw@p.test/x", "https://***@p.test/x"),
        ("https://p.test/x#frag", "https://p.test/x"),
        ("/relative?$skiptoken=a", "/relative?$skiptoken=***"),
    ],
)
def test_mask_url(url: str, expected: str) -> None:
    assert mask_url(url) == expected


@pytest.mark.parametrize(
    ("retry", "rand", "expected"),
    [
        (1, 0.0, 0.5),
        (1, 0.999999, 1.0),
        (2, 0.0, 1.0),
        (3, 1.0, 4.0),
        (10, 0.0, 30.0),
        (10, 1.0, 60.0),
        (200, 0.5, 45.0),
    ],
)
def test_backoff_bounds(retry: int, rand: float, expected: float) -> None:
    assert RetryPolicy().backoff(retry, rand) == pytest.approx(expected, abs=1e-4)


def test_policy_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        RetryPolicy(max_attempts=0)


class Sleeps:
    """Fake sleep recording the waits."""

    def __init__(self) -> None:
        self.waits: list[float] = []

    def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)


class Boom(RetriableServiceError):
    pass


def _classify(response: requests.Response) -> ServiceError:
    return Boom(f"HTTP {response.status_code}", status=response.status_code)


def _transport(policy: RetryPolicy | None = None, *, rand: float = 0.5) -> tuple[HttpTransport, Sleeps]:
    sleeps = Sleeps()
    transport = HttpTransport(
        policy or RetryPolicy(), ca_bundle="/ca.pem", classify=_classify, sleep=sleeps, rand=lambda: rand
    )
    return transport, sleeps


def test_success_passes_verify_and_timeout_per_request() -> None:
    transport, sleeps = _transport()
    with requests_mock.Mocker() as m:
        m.get(URL, json={"ok": True})
        response = transport.send("GET", URL, params={"a": "1"}, auth=lambda: "tok")
        assert response.json() == {"ok": True}
        req = m.request_history[0]
        assert req.verify == "/ca.pem"
        assert req.timeout == (10.0, 60.0)
        assert req.headers["Authorization"] == "Bearer tok"
        assert req.qs == {"a": ["1"]}
    assert sleeps.waits == []


def test_verify_defaults_to_true(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    transport = HttpTransport()
    with requests_mock.Mocker() as m:
        m.get(URL, json={})
        transport.send("GET", URL)
        assert m.request_history[0].verify is True


def test_retry_after_is_honoured() -> None:
    transport, sleeps = _transport()
    with requests_mock.Mocker() as m:
        m.get(
            URL,
            [
                {"status_code": 429, "headers": {"Retry-After": "2.5"}},
                {"status_code": 503, "headers": {"Retry-After": "7"}},
                {"status_code": 200, "json": {"n": 1}},
            ],
        )
        assert transport.send("GET", URL).json() == {"n": 1}
        assert m.call_count == 3
    assert sleeps.waits == [2.5, 7.0]


def test_exponential_backoff_with_jitter_and_cap() -> None:
    policy = RetryPolicy(max_attempts=6, backoff_base=1.0, backoff_cap=4.0, max_total_wait=1000)
    transport, sleeps = _transport(policy, rand=0.999)
    with requests_mock.Mocker() as m:
        m.get(URL, [{"status_code": 500}] * 5 + [{"status_code": 200, "json": {}}])
        transport.send("GET", URL)
    ceilings = [1.0, 2.0, 4.0, 4.0, 4.0]
    assert len(sleeps.waits) == 5
    for wait, ceiling in zip(sleeps.waits, ceilings, strict=True):
        assert ceiling / 2 <= wait <= ceiling


def test_max_attempts_then_classified_error() -> None:
    transport, sleeps = _transport(RetryPolicy(max_attempts=3, backoff_base=0.01))
    with requests_mock.Mocker() as m:
        m.get(URL, status_code=502)
        with pytest.raises(Boom) as info:
            transport.send("GET", URL)
        assert m.call_count == 3
    assert info.value.status == 502
    assert len(sleeps.waits) == 2


def test_max_total_wait_stops_early() -> None:
    transport, sleeps = _transport(RetryPolicy(max_total_wait=10))
    with requests_mock.Mocker() as m:
        m.get(URL, status_code=429, headers={"Retry-After": "6"})
        with pytest.raises(Boom):
            transport.send("GET", URL)
        assert m.call_count == 2
    assert sleeps.waits == [6.0]


@pytest.mark.parametrize(
    "exc",
    [requests.ConnectionError, requests.ConnectTimeout, requests.ReadTimeout, requests.exceptions.ChunkedEncodingError],
)
def test_connection_failures_are_retried(exc: type[Exception]) -> None:
    transport, sleeps = _transport()
    with requests_mock.Mocker() as m:
        m.get(URL, [{"exc": exc}, {"status_code": 200, "json": {}}])
        transport.send("GET", URL)
        assert m.call_count == 2
    assert len(sleeps.waits) == 1


def test_connection_failure_exhausted_raises_transport_error() -> None:
    transport, _ = _transport(RetryPolicy(max_attempts=2, backoff_base=0.01))
    with requests_mock.Mocker() as m:
        m.get(URL + "?$skiptoken=SECRETPAGE", exc=requests.ConnectionError("boom /x?$skiptoken=SECRETPAGE"))
        with pytest.raises(RetriableServiceError) as info:
            transport.send("GET", URL + "?$skiptoken=SECRETPAGE")
    assert "SECRETPAGE" not in str(info.value)
    assert info.value.__cause__ is None


def test_fatal_status_is_not_retried() -> None:
    transport, sleeps = _transport()
    with requests_mock.Mocker() as m:
        m.get(URL, status_code=400)
        with pytest.raises(Boom):
            transport.send("GET", URL)
        assert m.call_count == 1
    assert sleeps.waits == []


def test_raise_for_status_false_returns_response() -> None:
    transport, _ = _transport(RetryPolicy(max_attempts=2, backoff_base=0.01))
    with requests_mock.Mocker() as m:
        m.post(URL, status_code=401, json={"error": "invalid_client"})
        assert transport.send("POST", URL, raise_for_status=False).status_code == 401
        m.post(URL, status_code=500)
        assert transport.send("POST", URL, raise_for_status=False, idempotent=True).status_code == 500
        assert m.call_count == 3


@pytest.mark.parametrize(
    ("status", "calls"),
    [(500, 1), (502, 1), (503, 2), (429, 2)],
)
def test_post_retries_only_safe_statuses(status: int, calls: int) -> None:
    transport, _ = _transport(RetryPolicy(max_attempts=2, backoff_base=0.01))
    with requests_mock.Mocker() as m:
        m.post(URL, status_code=status)
        with pytest.raises(Boom):
            transport.send("POST", URL, json={})
        assert m.call_count == calls


def test_post_read_timeout_not_retried_but_connect_timeout_is() -> None:
    transport, _ = _transport(RetryPolicy(max_attempts=3, backoff_base=0.01))
    with requests_mock.Mocker() as m:
        m.post(URL, exc=requests.ReadTimeout)
        with pytest.raises(RetriableServiceError):
            transport.send("POST", URL)
        assert m.call_count == 1
        m.post(URL, [{"exc": requests.ConnectTimeout}, {"status_code": 201, "json": {}}])
        assert transport.send("POST", URL).status_code == 201


def test_auth_called_before_each_attempt() -> None:
    tokens = iter(["t1", "t2"])
    transport, _ = _transport()
    with requests_mock.Mocker() as m:
        m.get(URL, [{"status_code": 503}, {"status_code": 200, "json": {}}])
        transport.send("GET", URL, auth=lambda: next(tokens))
        assert [r.headers["Authorization"] for r in m.request_history] == ["Bearer t1", "Bearer t2"]


def test_backoff_logged_masked_without_secrets(caplog: pytest.LogCaptureFixture) -> None:
    transport, _ = _transport()
    url = "https://svc.test/v1/users?$skiptoken=PAGETOKEN&client_secret=HUNTER2"
    with requests_mock.Mocker() as m, caplog.at_level(logging.DEBUG, logger="m365_3cx"):
        m.get(url, [{"status_code": 429, "headers": {"Retry-After": "1"}}, {"status_code": 200, "json": {}}])
        transport.send("GET", url, auth=lambda: "BEARERTOKEN", headers={"X-Secret": "HDR"}, json={"b": "BODY"})
    records = [r for r in caplog.records if r.name == "m365_3cx.http"]
    assert len(records) == 1
    assert records[0].levelno == logging.WARNING
    text = records[0].getMessage()
    assert "429" in text and "1.00s" in text and "$skiptoken=***" in text
    for secret in ("PAGETOKEN", "HUNTER2", "BEARERTOKEN", "HDR", "BODY"):
        assert secret not in text
    assert isinstance(records[0].args, tuple)  # %-style arguments


def test_sessions_are_per_thread_and_closed() -> None:
    import threading

    transport = HttpTransport()
    seen: list[requests.Session] = []

    def grab() -> None:
        seen.append(transport.session())
        seen.append(transport.session())

    threads = [threading.Thread(target=grab) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen[0] is seen[1] and seen[2] is seen[3] and seen[0] is not seen[2]
    transport.close()
    assert transport.session() is not seen[0]


def test_call_pool_keeps_order_runs_at_once_and_cancels_what_an_early_stop_leaves() -> None:
    import threading

    from m365_3cx.http import CallPool

    pool = CallPool(3, "reads")
    started: list[int] = []
    gate = threading.Barrier(3, timeout=5)  # only passes when 3 calls run at the same time

    def call(n: int) -> int:
        started.append(n)
        if n < 3:
            gate.wait()
        return n * 10

    try:
        assert list(pool.map(call, range(6))) == [0, 10, 20, 30, 40, 50]
        started.clear()
        release = threading.Event()

        def slow(n: int) -> int:
            started.append(n)
            if n:
                release.wait(5)
            return n

        results = pool.map(slow, range(30))
        assert next(results) == 0
        results.close()  # the caller stops early: calls not started yet never run
        release.set()
    finally:
        pool.close()
    assert len(started) < 30
    assert list(CallPool(1, "reads").map(lambda n: threading.current_thread().name, [1, 2])) == \
        [threading.current_thread().name] * 2
    with pytest.raises(ValueError, match="reads must be at least 1"):
        CallPool(0, "reads")


def test_the_environment_ca_bundle_is_used_when_none_is_configured(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/env-ca.pem")
    with requests_mock.Mocker() as m:
        m.get(URL, json={})
        HttpTransport().send("GET", URL)
        HttpTransport(ca_bundle="/configured.pem").send("GET", URL)
        assert [r.verify for r in m.request_history] == ["/env-ca.pem", "/configured.pem"]


def test_environment_proxies_apply_per_host_and_no_proxy_bypasses(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.corp:3128")
    monkeypatch.setenv("NO_PROXY", "pbx.internal")
    transport = HttpTransport()
    with requests_mock.Mocker() as m:
        m.get(URL, json={})
        m.get("https://pbx.internal/xapi/v1/Users", json={})
        transport.send("GET", URL)
        transport.send("GET", "https://pbx.internal/xapi/v1/Users")
        proxied, direct = m.request_history
        assert proxied.proxies.get("https") == "http://proxy.corp:3128"
        assert "https" not in direct.proxies
    assert transport.proxies(URL) is transport.proxies(URL + "?again=1")  # looked up once per host


def test_a_netrc_entry_never_replaces_the_bearer_token(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    host = URL.split("/")[2].split(":")[0]
    netrc = tmp_path / "netrc"
    netrc.write_text(f"machine {host} login someone password hunter2\n")
    netrc.chmod(0o600)
    monkeypatch.setenv("NETRC", str(netrc))
    with requests_mock.Mocker() as m:
        m.get(URL, json={})
        HttpTransport().send("GET", URL, auth=lambda: "tok")
        assert m.request_history[0].headers["Authorization"] == "Bearer tok"
