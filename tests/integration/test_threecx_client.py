"""ThreeCXClient against the 3CX XAPI emulator over real HTTPS."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from typing import Any

import pytest

from m365_3cx.errors import ThreeCXAuthError, ThreeCXFatalError
from m365_3cx.http import RetryPolicy
from m365_3cx.threecx.client import ThreeCXClient, ThreeCXCredentials, clear_token_cache, odata_quote

pytestmark = pytest.mark.integration

FAST = RetryPolicy(max_attempts=8, backoff_base=0.01, backoff_cap=0.05, max_total_wait=20,
                   connect_timeout=5, read_timeout=10)


def _credentials(info: dict[str, Any], secret: str | None = None) -> ThreeCXCredentials:
    return ThreeCXCredentials(info["base_url"], info["client_id"], secret or info["client_secret"],
                              ca_bundle=info["ca_bundle"])


@pytest.fixture
def pbx(threecx_emulator: Any) -> Iterator[ThreeCXClient]:
    clear_token_cache()  # the emulator's reset forgets issued tokens
    client = ThreeCXClient(_credentials(threecx_emulator.info), FAST)
    yield client
    client.close()
    clear_token_cache()


def _state(handle: Any) -> dict[str, Any]:
    return handle.admin("GET", "state").json()


def _token_posts(handle: Any) -> int:
    requests = handle.admin("GET", "counters").json()["requests"]
    return sum(n for key, n in requests.items() if "connect/token" in key)


def _create(client: ThreeCXClient, n: int) -> list[dict[str, Any]]:
    created = []
    for i in range(n):
        number = client.first_available_number()
        created.append(client.create_user({"Number": number, "FirstName": "Test", "LastName": f"User{i}",
                                           "EmailAddress": f"test.user{i}@example.org"}))
    return created


def test_connection_and_status(pbx: ThreeCXClient) -> None:
    ok, message = pbx.test_connection()
    assert ok and message.startswith("Connected to 3CX 20.")
    assert pbx.default_group() is not None


def test_wrong_secret(threecx_emulator: Any) -> None:
    clear_token_cache()
    client = ThreeCXClient(_credentials(threecx_emulator.info, secret="wrong-secret"), FAST)
    try:
        with pytest.raises(ThreeCXAuthError) as exc:
            client.system_status()
        assert "wrong-secret" not in str(exc.value)
    finally:
        client.close()
        clear_token_cache()


def test_paging_over_more_than_100_users(pbx: ThreeCXClient, threecx_emulator: Any) -> None:
    existing = len(_state(threecx_emulator)["users"])
    created = _create(pbx, max(0, 101 - existing) + 5)
    assert all(isinstance(u["Id"], int) for u in created)
    pages = list(pbx.list_users())
    ids = [u["Id"] for page in pages for u in page]
    backend = _state(threecx_emulator)["users"]
    assert len(ids) == len(set(ids)) == len(backend) > 100
    assert len(pages) == (len(backend) + 99) // 100
    assert ids == sorted(ids)
    number = created[0]["Number"]
    found = [u for p in pbx.list_users(filter=f"Number eq {odata_quote(number)}") for u in p]
    assert [u["Id"] for u in found] == [created[0]["Id"]]


@pytest.mark.parametrize("read_concurrency", [2, 4, 16])
def test_pages_read_ahead_are_the_same_pages_in_order_with_at_most_a_window_of_extra_reads(
        read_concurrency: int, pbx: ThreeCXClient, threecx_emulator: Any) -> None:
    if len(_state(threecx_emulator)["users"]) < 30:
        _create(pbx, 30)
    sequential = list(pbx.iter_collection("Users", select=["Id", "Number"], page_size=7))
    assert len(sequential) >= 4
    threecx_emulator.admin("DELETE", "counters")
    with ThreeCXClient(_credentials(threecx_emulator.info), FAST, read_concurrency=read_concurrency) as ahead:
        pages = list(ahead.iter_collection("Users", select=["Id", "Number"], page_size=7))
        single = list(ahead.iter_collection("Users", select=["Id"], filter=f"Id eq {sequential[0][0]['Id']}"))
    assert pages == sequential
    assert [[u["Id"] for u in p] for p in single] == [[sequential[0][0]["Id"]]]
    reads = threecx_emulator.admin("GET", "counters").json()["requests"]["GET /xapi/v1/Users"]
    needed = len(sequential) + (1 if sum(map(len, sequential)) % 7 == 0 else 0)  # + the empty last page
    assert needed + 1 <= reads <= needed + 1 + read_concurrency - 1  # + the filtered read: 1 request


def test_filtered_reads_go_several_at_once_and_come_back_in_order(pbx: ThreeCXClient, threecx_emulator: Any) -> None:
    if len(_state(threecx_emulator)["users"]) < 16:
        _create(pbx, 16)
    ids = sorted(u["Id"] for u in _state(threecx_emulator)["users"])[:16]
    filters = [f"Id eq {ids[i]} or Id eq {ids[i + 1]}" for i in range(0, 16, 2)] + ["Id eq -1"]
    sequential = list(pbx.read_filtered("Users", filters, select=["Id", "Number"]))
    assert [[u["Id"] for u in found] for found in sequential] == [ids[i:i + 2] for i in range(0, 16, 2)] + [[]]
    threecx_emulator.admin("POST", "faults", json={"kind": "latency", "latency": 0.3, "path": "/xapi/v1/Users$"})
    try:
        with ThreeCXClient(_credentials(threecx_emulator.info), FAST, read_concurrency=4) as ahead:
            started = time.monotonic()
            concurrent = list(ahead.read_filtered("Users", filters, select=["Id", "Number"]))
            elapsed = time.monotonic() - started
    finally:
        threecx_emulator.admin("DELETE", "faults")
    assert concurrent == sequential
    assert elapsed < 0.3 * len(filters) / 2  # one after the other would take 9 x 0.3 s


def test_read_concurrency_must_be_positive(threecx_emulator: Any) -> None:
    with pytest.raises(ValueError, match="read_concurrency"):
        ThreeCXClient(_credentials(threecx_emulator.info), FAST, read_concurrency=0)


def test_crud_round_trip(pbx: ThreeCXClient) -> None:
    user = _create(pbx, 1)[0]
    pbx.update_user(user["Id"], {"FirstName": "Changed"})
    assert pbx.get_user(user["Id"], select=["Id", "FirstName"])["FirstName"] == "Changed"
    pbx.delete_user(user["Id"])
    with pytest.raises(ThreeCXFatalError) as exc:
        pbx.delete_user(user["Id"])
    assert exc.value.code == "NOT_FOUND"
    a, b = _create(pbx, 2)
    errors = pbx.batch_delete_users([a["Id"], b["Id"]])
    assert errors == [] or all(not e.get("Error") for e in errors)


def test_already_in_use(pbx: ThreeCXClient, threecx_emulator: Any) -> None:
    taken = _state(threecx_emulator)["users"][0]["Number"]
    with pytest.raises(ThreeCXFatalError) as exc:
        pbx.create_user({"Number": taken, "FirstName": "Dup", "LastName": "User"})
    assert exc.value.code == "WARNINGS.XAPI.ALREADY_IN_USE"
    assert exc.value.target == "Number"
    assert exc.value.status == 400


def test_token_revocation_is_transparent(pbx: ThreeCXClient, threecx_emulator: Any) -> None:
    pbx.system_status()
    threecx_emulator.admin("POST", "tokens/revoke")
    assert pbx.system_status()
    assert _token_posts(threecx_emulator) == 2
    threecx_emulator.admin("POST", "faults", json={"kind": "revoke_token", "path": "SystemStatus", "count": 1})
    assert pbx.system_status()
    assert _token_posts(threecx_emulator) <= 3


def test_transient_errors_are_retried(pbx: ThreeCXClient, threecx_emulator: Any) -> None:
    _create(pbx, 5)
    baseline = [u["Id"] for p in pbx.list_users() for u in p]
    threecx_emulator.admin("POST", "faults", json={"kind": "status", "status": 503, "path": "/xapi/v1/Users",
                                                   "method": "GET", "rate": 0.3})
    threecx_emulator.admin("POST", "faults", json={"kind": "drop", "path": "/xapi/v1/Users", "method": "GET",
                                                   "count": 1})
    assert [u["Id"] for p in pbx.list_users() for u in p] == baseline


@pytest.mark.parametrize("shared", [True, False], ids=["one-client", "two-clients"])
def test_threads_do_not_revoke_each_other(shared: bool, threecx_emulator: Any) -> None:
    clear_token_cache()
    first = ThreeCXClient(_credentials(threecx_emulator.info), FAST)
    second = first if shared else ThreeCXClient(_credentials(threecx_emulator.info), FAST)
    failures: list[BaseException] = []
    start = threading.Barrier(2)

    def work(client: ThreeCXClient) -> None:
        try:
            start.wait()
            for _ in range(15):
                client.system_status()
                assert list(client.list_users())
        except BaseException as exc:
            failures.append(exc)

    threads = [threading.Thread(target=work, args=(c,)) for c in (first, second)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    first.close()
    second.close()
    clear_token_cache()
    assert failures == []
    assert _token_posts(threecx_emulator) == 1
    assert _state(threecx_emulator)["tokens"]["issued"] == 1
