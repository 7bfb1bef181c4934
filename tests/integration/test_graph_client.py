"""GraphClient against the Graph + identity emulator over real HTTPS (msal unchanged)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from m365_3cx.errors import DeltaTokenExpiredError, GraphAuthError, GraphFatalError
from m365_3cx.graph.auth import GraphCredentials
from m365_3cx.graph.batch import BatchRequest, execute_batch
from m365_3cx.graph.client import GraphClient
from m365_3cx.http import RetryPolicy

pytestmark = pytest.mark.integration

FAST = RetryPolicy(max_attempts=8, backoff_base=0.01, backoff_cap=0.05, max_total_wait=20,
                   connect_timeout=5, read_timeout=10)
SELECT = ("id", "displayName", "userPrincipalName", "accountEnabled", "mobilePhone")


def _credentials(info: dict[str, Any], *, certificate: bool = False) -> GraphCredentials:
    authority_host, tenant = str(info["authority"]).rstrip("/").rsplit("/", 1)
    assert tenant == info["tenant_id"]
    common = {
        "tenant_id": info["tenant_id"], "client_id": info["client_id"], "authority_host": authority_host,
        "graph_url": info["graph_url"], "ca_bundle": info["ca_bundle"],
    }
    if certificate:
        return GraphCredentials(certificate_pem=info["certificate_pem"], private_key_pem=info["private_key_pem"],
                                **common)
    return GraphCredentials(client_secret=info["client_secret"], **common)


@pytest.fixture
def graph(graph_emulator: Any) -> Iterator[GraphClient]:
    client = GraphClient(_credentials(graph_emulator.info), FAST)
    yield client
    client.close()


def _backend_user_ids(handle: Any) -> set[str]:
    return {u["id"] for u in handle.admin("GET", "state").json()["users"]}


def test_secret_credentials_list_users_pages(graph: GraphClient, graph_emulator: Any) -> None:
    pages = list(graph.list_users(SELECT, page_size=7))
    ids = [u["id"] for page in pages for u in page]
    expected = _backend_user_ids(graph_emulator)
    assert len(ids) == len(expected) == 40
    assert set(ids) == expected
    assert len(pages) == 6
    assert all(set(u) <= set(SELECT) | {"@odata.type"} for page in pages for u in page)


def test_certificate_credentials(graph_emulator: Any) -> None:
    client = GraphClient(_credentials(graph_emulator.info, certificate=True), FAST)
    try:
        assert client.test_connection() == (True, "Connected to Microsoft Graph")
        assert sum(len(p) for p in client.list_users(["id"])) == 40
    finally:
        client.close()


def test_wrong_secret_is_auth_error(graph_emulator: Any) -> None:
    info = {**graph_emulator.info, "client_secret": "not-the-secret"}
    client = GraphClient(_credentials(info), FAST)
    try:
        with pytest.raises(GraphAuthError) as exc:
            list(client.list_users(["id"]))
        assert "not-the-secret" not in str(exc.value)
        ok, message = client.test_connection()
        assert not ok and "invalid_client" in message
    finally:
        client.close()


def test_group_member_ids(graph: GraphClient, graph_emulator: Any) -> None:
    state = graph_emulator.admin("GET", "state").json()
    group = state["groups"][0]
    members = sorted(_backend_user_ids(graph_emulator))[:5]
    graph_emulator.admin("PUT", f"groups/{group['id']}/members", json={"members": members})
    assert graph.group_member_ids(group["id"]) == set(members)


def test_delta_initial_changes_and_tombstones(graph: GraphClient, graph_emulator: Any) -> None:
    pages = list(graph.users_delta(None, SELECT))
    assert [p.page_number for p in pages] == list(range(1, len(pages) + 1))
    assert all(p.delta_link is None for p in pages[:-1])
    delta_link = pages[-1].delta_link
    assert delta_link and delta_link.startswith(graph_emulator.info["graph_url"])
    initial = {u["id"] for p in pages for u in p.items}
    assert initial == _backend_user_ids(graph_emulator)

    changed, deleted = sorted(initial)[:2]
    graph_emulator.admin("PATCH", f"users/{changed}", json={"displayName": "Renamed Person"})
    graph_emulator.admin("DELETE", f"users/{deleted}")

    round2 = list(graph.users_delta(delta_link, SELECT))
    items = {u["id"]: u for p in round2 for u in p.items}
    assert items[changed]["displayName"] == "Renamed Person"
    assert items[deleted]["@removed"]["reason"] in ("changed", "deleted")
    assert round2[-1].delta_link and round2[-1].delta_link != delta_link

    round3 = list(graph.users_delta(round2[-1].delta_link, SELECT))
    assert sum(len(p.items) for p in round3) == 0


def test_expired_delta_link(graph: GraphClient, graph_emulator: Any) -> None:
    delta_link = list(graph.users_delta(None, ["id"]))[-1].delta_link
    assert delta_link
    graph_emulator.admin("POST", "delta/expire")
    with pytest.raises(DeltaTokenExpiredError) as exc:
        list(graph.users_delta(delta_link, ["id"]))
    assert exc.value.status in (400, 410)


def test_delta_link_to_foreign_host_refused(graph: GraphClient) -> None:
    with pytest.raises(GraphFatalError):
        list(graph.users_delta("https://example.invalid/v1.0/users/delta?$deltatoken=x", ["id"]))


def test_throttling_and_errors_give_the_same_result(graph: GraphClient, graph_emulator: Any) -> None:
    baseline = sorted(u["id"] for p in graph.list_users(["id"], page_size=5) for u in p)
    graph_emulator.admin("DELETE", "counters")
    graph_emulator.admin("POST", "faults", json={"kind": "status", "status": 429, "retry_after": 0.2,
                                                 "path": "^/v1.0/users", "count": 2})
    graph_emulator.admin("POST", "faults", json={"kind": "status", "status": 503, "path": "^/v1.0/users",
                                                 "rate": 0.2})
    graph_emulator.admin("POST", "faults", json={"kind": "drop", "path": "^/v1.0/users", "count": 1})
    result = sorted(u["id"] for p in graph.list_users(["id"], page_size=5) for u in p)
    assert result == baseline
    counters = graph_emulator.admin("GET", "counters").json()
    faulted = sum(counters["faults"].values())
    assert faulted >= 3
    user_requests = sum(n for key, n in counters["requests"].items() if "/users" in key)
    assert user_requests == 8 + faulted


def test_revoked_token_is_renewed(graph: GraphClient, graph_emulator: Any) -> None:
    assert graph.get("/users", params={"$top": 1, "$select": "id"})["value"]
    graph_emulator.admin("POST", "tokens/revoke")
    assert graph.get("/users", params={"$top": 1, "$select": "id"})["value"]


def _batched_under_latency(graph_emulator: Any, boxes: int, per_box: int,
                           slow_path: str) -> tuple[list[BatchRequest], dict[str, Any], dict[str, int]]:
    """``per_box`` automatic-replies items for each of ``boxes`` mailboxes, sent by a fresh client
    with batch concurrency 4 while requests to ``slow_path`` take 0.3 s; the requests, the answers
    and the emulator's counters."""
    state = graph_emulator.admin("GET", "state").json()
    users = [u["id"] for u in state["users"] if u.get("mail") and u.get("userType", "Member") == "Member"][:boxes]
    assert len(users) == boxes
    requests = [BatchRequest(id=f"{n}-{k}", url=f"/users/{user}/mailboxSettings/automaticRepliesSetting",
                             mailbox=user) for n, user in enumerate(users) for k in range(per_box)]
    graph_emulator.admin("DELETE", "counters")
    graph_emulator.admin("POST", "faults", json={"kind": "latency", "latency": 0.3, "path": slow_path})
    client = GraphClient(_credentials(graph_emulator.info), FAST, batch_concurrency=4)
    try:
        result = execute_batch(client, requests)
    finally:
        client.close()
        graph_emulator.admin("DELETE", "faults")
    return requests, result, graph_emulator.admin("GET", "counters").json()["requests"]


def test_concurrent_batches_stay_within_each_mailboxs_four_slots(graph_emulator: Any) -> None:
    """4 batches in flight at once, 6 items per mailbox: the emulator's per-mailbox slots
    (4 at once, else 429) never refuse one, so no item is sent twice."""
    # every item holds its mailbox slot for 0.3 s, so batches posted together overlap in the emulator
    requests, result, counted = _batched_under_latency(graph_emulator, 12, 6, "automaticReplies")
    assert {rid: r.status for rid, r in result.items()} == {r.id: 200 for r in requests}
    inner = sum(v for k, v in counted.items() if "automaticRepliesSetting" in k)
    assert inner == len(requests)  # none refused with 429 and re-sent
    assert counted["POST /v1.0/$batch"] == 5  # 72 items, 4 per mailbox per batch: 20+20+20+8+4


def test_batches_in_flight_together_share_one_token_request(graph_emulator: Any) -> None:
    # 4 batches, one wave: 4 threads need a token at once while the token endpoint is slow
    _requests, result, counted = _batched_under_latency(graph_emulator, 20, 4, "oauth2/v2.0/token")
    assert all(r.status == 200 for r in result.values()) and len(result) == 80
    assert counted["POST /v1.0/$batch"] == 4
    assert counted["POST /{tenant}/oauth2/v2.0/token"] == 1


def test_batch_concurrency_must_be_positive(graph_emulator: Any) -> None:
    with pytest.raises(ValueError, match="batch_concurrency"):
        GraphClient(_credentials(graph_emulator.info), FAST, batch_concurrency=0)
