from __future__ import annotations

import math
from collections import Counter
from collections.abc import Callable
from typing import Any

import pytest

from m365_3cx.errors import (
    DeltaTokenExpiredError,
    GraphAuthError,
    GraphFatalError,
    GraphRetriableError,
    MailboxUnavailableError,
)
from m365_3cx.graph.batch import (
    BatchRequest,
    BatchResponse,
    chunk_requests,
    classify_item,
    concurrent_waves,
    execute_batch,
    raise_for_item,
    relative_url,
)
from m365_3cx.http import RetryPolicy

GRAPH = "https://graph.microsoft.com"


class FakeClient:
    """A bare stand-in for GraphClient: records each $batch body and each wait."""

    def __init__(self, answer: Callable[[dict[str, Any], int], dict[str, Any]],
                 policy: RetryPolicy | None = None) -> None:
        self.answer = answer
        self.policy = policy or RetryPolicy(backoff_base=0.5, max_total_wait=60.0)
        self.batches: list[list[dict[str, Any]]] = []
        self.waits: list[float] = []
        self.sent: Counter[str] = Counter()

    def post_json(self, path: str, body: Any) -> dict[str, Any]:
        assert path == "/$batch"
        items = body["requests"]
        assert len(items) <= 20
        self.batches.append(items)
        responses = []
        for item in items:
            self.sent[item["id"]] += 1
            responses.append({"id": item["id"], **self.answer(item, self.sent[item["id"]])})
        return {"responses": responses[::-1]}  # Graph may answer in any order

    def wait(self, seconds: float) -> None:
        self.waits.append(seconds)


def ok(item: dict[str, Any], attempt: int) -> dict[str, Any]:
    return {"status": 200, "headers": {}, "body": {"value": [], "url": item["url"]}}


def reqs(n: int, mailbox: Callable[[int], str | None] = lambda i: f"m{i}") -> list[BatchRequest]:
    return [BatchRequest(id=str(i), url=f"/users/u{i}/contacts/delta", mailbox=mailbox(i)) for i in range(n)]


# ------------------------------------------------------------------------------------ relative_url


@pytest.mark.parametrize(
    ("link", "base", "expected"),
    [
        (f"{GRAPH}/v1.0/users/x/contacts/delta?$skiptoken=abc", GRAPH, "/users/x/contacts/delta?$skiptoken=abc"),
        (f"{GRAPH}/v1.0/users/x/contacts/delta?$deltatoken=d", GRAPH + "/", "/users/x/contacts/delta?$deltatoken=d"),
        ("https://GRAPH.microsoft.com/v1.0/users", GRAPH, "/users"),
        ("https://emu:8443/graph/v1.0/users/x?$a=1", "https://emu:8443/graph", "/users/x?$a=1"),
        ("/v1.0/users/x", GRAPH, "/users/x"),
        ("users/x?$top=1", GRAPH, "/users/x?$top=1"),
    ],
)
def test_relative_url(link: str, base: str, expected: str) -> None:
    assert relative_url(link, base) == expected


@pytest.mark.parametrize("link", ["https://evil.example/v1.0/users", "http://graph.microsoft.com/v1.0/users"])
def test_relative_url_refuses_other_hosts(link: str) -> None:
    with pytest.raises(GraphFatalError) as err:
        relative_url(link, GRAPH)
    assert err.value.code == "ForeignHost"


# ------------------------------------------------------------------------------------ chunking


def test_chunks_hold_at_most_20_and_keep_order() -> None:
    chunks = chunk_requests(reqs(45))
    assert [len(c) for c in chunks] == [20, 20, 5]
    assert [r.id for c in chunks for r in c] == [str(i) for i in range(45)]


def test_chunks_hold_at_most_n_per_mailbox() -> None:
    requests = reqs(12, mailbox=lambda i: "same") + reqs(3, mailbox=lambda i: None)
    requests = [BatchRequest(id=f"{r.mailbox}-{i}", url=r.url, mailbox=r.mailbox) for i, r in enumerate(requests)]
    chunks = chunk_requests(requests, max_per_mailbox=4)
    for chunk in chunks:
        assert Counter(r.mailbox for r in chunk if r.mailbox)["same"] <= 4
    assert [len(c) for c in chunks] == [7, 4, 4]  # the mailbox-less ones ride along in the first chunk


def test_two_hundred_mailboxes_fit_in_ten_batches() -> None:
    assert len(chunk_requests(reqs(200))) == math.ceil(200 / 20)


def test_chunking_rejects_duplicate_ids_and_bad_limits() -> None:
    with pytest.raises(ValueError, match="unique"):
        chunk_requests([BatchRequest("1", "/a"), BatchRequest("1", "/b")])
    with pytest.raises(ValueError):
        chunk_requests(reqs(1), max_size=21)
    with pytest.raises(ValueError):
        chunk_requests(reqs(1), max_per_mailbox=0)


# ------------------------------------------------------------------------------------ execute_batch


def test_execute_batch_returns_every_response_and_sends_headers() -> None:
    client = FakeClient(ok)
    requests = [BatchRequest("a", "/users/u/contacts/delta", headers={"Prefer": "odata.maxpagesize=100"},
                             mailbox="u"), BatchRequest("b", "/users/v/contacts/delta", mailbox="v")]
    result = execute_batch(client, requests)
    assert set(result) == {"a", "b"} and all(r.ok for r in result.values())
    assert client.batches[0][0] == {"id": "a", "method": "GET", "url": "/users/u/contacts/delta",
                                    "headers": {"Prefer": "odata.maxpagesize=100"}}
    assert "headers" not in client.batches[0][1]
    assert client.waits == []


def test_throttled_items_are_retried_after_the_longest_retry_after() -> None:
    def answer(item: dict[str, Any], attempt: int) -> dict[str, Any]:
        if item["id"] in ("1", "2") and attempt == 1:
            return {"status": 429, "headers": {"Retry-After": "2.5" if item["id"] == "1" else "1"}}
        if item["id"] == "3" and attempt <= 2:
            return {"status": 503, "headers": {}}
        return ok(item, attempt)

    client = FakeClient(answer)
    result = execute_batch(client, reqs(5))
    assert all(r.status == 200 for r in result.values())
    assert client.waits[0] == 2.5  # longest Retry-After of the throttled items
    assert 0.5 <= client.waits[1] <= 1.0  # no Retry-After: the policy's backoff for round 2
    assert [len(b) for b in client.batches] == [5, 3, 1]  # only the failed ones are re-sent
    assert client.sent["0"] == 1 and client.sent["3"] == 3


def test_gives_up_after_max_rounds_and_returns_the_last_failure() -> None:
    client = FakeClient(lambda item, attempt: {"status": 429, "headers": {"retry-after": "0"}})
    result = execute_batch(client, reqs(2), max_rounds=3)
    assert {r.status for r in result.values()} == {429}
    assert len(client.batches) == 3 and len(client.waits) == 2
    with pytest.raises(GraphRetriableError):
        raise_for_item(result["0"])


def test_stops_when_the_wait_budget_is_spent() -> None:
    client = FakeClient(lambda item, attempt: {"status": 429, "headers": {"Retry-After": "50"}},
                        policy=RetryPolicy(max_total_wait=60.0))
    execute_batch(client, reqs(1), max_rounds=6)
    assert client.waits == [50.0] and len(client.batches) == 2


def test_other_failures_are_returned_not_retried() -> None:
    client = FakeClient(lambda item, attempt: {"status": 404, "body": {"error": {"code": "ErrorItemNotFound"}}})
    result = execute_batch(client, reqs(3))
    assert len(client.batches) == 1 and {r.status for r in result.values()} == {404}


def test_an_id_missing_from_the_answer_counts_as_transient() -> None:
    calls: list[int] = []

    class Dropping(FakeClient):
        def post_json(self, path: str, body: Any) -> dict[str, Any]:
            calls.append(len(body["requests"]))
            answer = super().post_json(path, body)
            if len(calls) == 1:
                answer["responses"] = [r for r in answer["responses"] if r["id"] != "1"]
            return answer

    result = execute_batch(Dropping(ok), reqs(2))
    assert calls == [2, 1] and result["1"].status == 200


def test_mailbox_limit_holds_on_retry_rounds_too() -> None:
    client = FakeClient(lambda item, attempt: ok(item, attempt) if attempt > 1 else {"status": 429, "headers": {}})
    requests = [BatchRequest(str(i), "/x", mailbox="one") for i in range(10)]
    execute_batch(client, requests, max_per_mailbox=4)
    assert max(len(b) for b in client.batches) <= 4


def test_bad_batch_body_is_fatal() -> None:
    class Broken(FakeClient):
        def post_json(self, path: str, body: Any) -> dict[str, Any]:
            return {"nope": []}

    with pytest.raises(GraphFatalError):
        execute_batch(Broken(ok), reqs(1))


# ------------------------------------------------------------------------------------ classification


def _resp(status: int, code: str | None = None, headers: dict[str, str] | None = None) -> BatchResponse:
    body = {"error": {"code": code, "message": "m", "innerError": {"request-id": "rid"}}} if code else None
    return BatchResponse("1", status, headers or {}, body)


@pytest.mark.parametrize(
    ("status", "code", "expected"),
    [
        (410, "SyncStateNotFound", DeltaTokenExpiredError),
        (410, None, DeltaTokenExpiredError),
        (400, "syncStateNotFound", DeltaTokenExpiredError),
        (400, "resyncRequired", DeltaTokenExpiredError),
        (404, "MailboxNotEnabledForRESTAPI", MailboxUnavailableError),
        (404, "ErrorItemNotFound", GraphFatalError),
        (401, "InvalidAuthenticationToken", GraphAuthError),
        (403, "ErrorAccessDenied", GraphFatalError),
        (424, None, GraphRetriableError),
        (429, "TooManyRequests", GraphRetriableError),
        (503, None, GraphRetriableError),
        (504, None, GraphRetriableError),
        (400, "BadRequest", GraphFatalError),
    ],
)
def test_raise_for_item_maps_statuses_and_codes(status: int, code: str | None, expected: type) -> None:
    with pytest.raises(expected) as err:
        raise_for_item(_resp(status, code, {"Retry-After": "3"}))
    assert type(err.value) is expected
    assert err.value.status == status
    assert err.value.retry_after == 3.0
    if code:
        assert err.value.code == code and err.value.request_id == "rid"


def test_success_is_not_an_error() -> None:
    assert classify_item(_resp(200)) is None
    raise_for_item(_resp(204))


# ------------------------------------------------------------------------------- concurrent waves


class ConcurrentFakeClient(FakeClient):
    """A FakeClient that also takes a wave of bodies at once and records each wave."""

    def __init__(self, answer: Callable[[dict[str, Any], int], dict[str, Any]]) -> None:
        super().__init__(answer)
        self.waves: list[list[list[dict[str, Any]]]] = []

    def post_json_many(self, path: str, bodies: list[Any]) -> list[dict[str, Any]]:
        self.waves.append([body["requests"] for body in bodies])
        return [self.post_json(path, body) for body in bodies]


def _mailbox_of(items: list[dict[str, Any]], by_id: dict[str, BatchRequest]) -> Counter[str]:
    return Counter(by_id[i["id"]].mailbox for i in items if by_id[i["id"]].mailbox is not None)


def test_waves_of_distinct_mailboxes_hold_every_chunk_at_once() -> None:
    chunks = chunk_requests(reqs(95))
    waves = concurrent_waves(chunks)
    assert len(waves) == 1 and [list(c) for c in waves[0]] == chunks


@pytest.mark.parametrize("per_mailbox", [1, 2, 4])
def test_waves_never_put_more_than_the_mailbox_limit_in_flight(per_mailbox: int) -> None:
    # 3 busy mailboxes with 9 items each, among 40 one-item mailboxes
    busy = [BatchRequest(id=f"b{m}-{k}", url=f"/users/b{m}/contactFolders/f{k}/contacts/delta", mailbox=f"b{m}")
            for k in range(9) for m in range(3)]
    requests = busy + reqs(40)
    chunks = chunk_requests(requests, max_per_mailbox=per_mailbox)
    waves = concurrent_waves(chunks, max_per_mailbox=per_mailbox)
    assert [c for wave in waves for c in wave] == chunks  # every chunk once, in order
    by_id = {r.id: r for r in requests}
    for wave in waves:
        in_flight = Counter(by_id[r.id].mailbox for chunk in wave for r in chunk)
        assert max(in_flight[f"b{m}"] for m in range(3)) <= per_mailbox
    assert len(waves) >= math.ceil(9 / per_mailbox)


def test_execute_batch_posts_a_wave_at_once_and_keeps_every_answer_and_retry() -> None:
    def answer(item: dict[str, Any], attempt: int) -> dict[str, Any]:
        if item["id"] in ("3", "41") and attempt == 1:
            return {"status": 429, "headers": {"Retry-After": "2"}, "body": {}}
        return ok(item, attempt)

    client = ConcurrentFakeClient(answer)
    busy = [BatchRequest(id=f"b-{k}", url=f"/users/b/contactFolders/f{k}/contacts/delta", mailbox="b")
            for k in range(10)]
    requests = reqs(70) + busy
    result = execute_batch(client, requests)
    assert set(result) == {r.id for r in requests}
    assert all(r.status == 200 for r in result.values())
    assert client.sent["3"] == client.sent["41"] == 2 and client.waits == [2.0]
    by_id = {r.id: r for r in requests}
    assert client.waves and max(len(w) for w in client.waves) >= 4  # several chunks went at once
    for wave in client.waves:
        assert _mailbox_of([i for body in wave for i in body], by_id)["b"] <= 4
