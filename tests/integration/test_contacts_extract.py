"""Contacts extraction against the Graph emulator over real HTTPS, staging in PostgreSQL.

200 users' contacts are read with ``$batch``: at most ceil(items / 20) batches per page round
(10 for one request per user), never more than 4 concurrent requests per mailbox; an expired
delta link of one user falls back to a full round for that user only.
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa

from m365_3cx.graph.auth import GraphCredentials
from m365_3cx.graph.client import GraphClient
from m365_3cx.http import RetryPolicy
from m365_3cx.pipeline import contacts as pipeline
from m365_3cx.pipeline.users import extract_users
from m365_3cx.settings import Settings
from m365_3cx.staging.db import make_engine
from m365_3cx.staging.schema import create_schema

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

USERS = 200
FAST = RetryPolicy(max_attempts=6, backoff_base=0.01, backoff_cap=0.05, max_total_wait=30,
                   connect_timeout=5, read_timeout=30)
SETTINGS = Settings.from_mapping({"contacts": {"personal_contacts": "all", "shard_size": 200}})


@pytest.fixture(scope="module")
def graph200(tls_dir: Path) -> Iterator[Any]:
    from emulators.graph import start

    handle = start(tls_dir, seed=4242, users=USERS, contacts_per_user=3)
    yield handle
    handle.stop()


@pytest.fixture
def env(graph200: Any, pg_database: str) -> Iterator[dict[str, Any]]:
    graph200.admin("DELETE", "faults")
    graph200.admin("POST", "reset")
    info = graph200.info
    authority_host = str(info["authority"]).rstrip("/").rsplit("/", 1)[0]
    client = GraphClient(GraphCredentials(
        tenant_id=info["tenant_id"], client_id=info["client_id"], client_secret=info["client_secret"],
        authority_host=authority_host, graph_url=info["graph_url"], ca_bundle=info["ca_bundle"]), FAST,
        batch_concurrency=4)  # as the DAG tasks run it: the per-mailbox peak below must still hold
    engine = make_engine(pg_database)
    create_schema(engine)
    extract_users(engine, client, SETTINGS, "t/users", "full", datetime.now(UTC))
    graph200.admin("DELETE", "counters")
    graph200.admin("DELETE", "mailbox/concurrency")
    yield {"graph": graph200, "client": client, "engine": engine}
    client.close()
    engine.dispose()


@pytest.fixture
def rounds(monkeypatch: pytest.MonkeyPatch) -> list[dict[str, int]]:
    """Record, per execute_batch call (one page round), how many items went in and how many
    ``$batch`` POSTs it made. The real function runs unchanged."""
    calls: list[dict[str, int]] = []
    real = pipeline.execute_batch

    def recording(client: Any, requests: Any, **kw: Any) -> Any:
        before = getattr(client, "posts", 0)
        result = real(client, requests, **kw)
        calls.append({"items": len(requests), "batches": getattr(client, "posts", 0) - before})
        return result

    monkeypatch.setattr(pipeline, "execute_batch", recording)
    return calls


class CountingClient:
    """The real GraphClient, counting its ``$batch`` POSTs."""

    def __init__(self, inner: GraphClient) -> None:
        self._inner = inner
        self.posts = 0

    def post_json(self, path: str, body: Any) -> dict[str, Any]:
        self.posts += 1
        return self._inner.post_json(path, body)

    def post_json_many(self, path: str, bodies: list[Any]) -> list[dict[str, Any]]:
        self.posts += len(bodies)
        return self._inner.post_json_many(path, bodies)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._inner, name)


def _run(env: dict[str, Any], mode: str, client: Any = None) -> list[dict[str, Any]]:
    with env["engine"].connect():
        shards = pipeline.contact_shards(env["engine"], SETTINGS)
    return [pipeline.extract_contacts(env["engine"], client or env["client"], SETTINGS, f"t/{mode}", mode, shard,
                                      datetime.now(UTC)) for shard in shards]


def _batch_posts(env: dict[str, Any]) -> int:
    return int(env["graph"].admin("GET", "counters").json()["requests"].get("POST /v1.0/$batch", 0))


def _staged(env: dict[str, Any]) -> dict[tuple[str, str], dict[str, Any]]:
    with env["engine"].connect() as conn:
        rows = conn.execute(sa.text("SELECT * FROM stg_contacts")).mappings().all()
    return {(r["owner_id"], r["contact_id"]): dict(r) for r in rows}


def test_200_users_are_read_in_batches_with_at_most_4_per_mailbox(env: dict[str, Any],
                                                                  rounds: list[dict[str, int]]) -> None:
    client = CountingClient(env["client"])
    (counts,) = _run(env, "full", client)
    assert counts["users"] > 150
    concurrency = env["graph"].admin("GET", "mailbox/concurrency").json()
    assert concurrency["rejected"] == 0
    assert max(concurrency["peak"].values()) <= 4
    for call in rounds:
        assert call["batches"] == math.ceil(call["items"] / 20), call
    assert rounds[0]["items"] == counts["users"]  # the folder listing: one item per user
    assert rounds[0]["batches"] <= math.ceil(USERS / 20)
    assert _batch_posts(env) == client.posts == sum(c["batches"] for c in rounds)
    staged = _staged(env)
    assert counts["inserted"] == len(staged) > 0
    assert counts["skipped_users"] == 0  # guests (no mailbox) are not eligible by default
    # the "Private" category is never staged
    assert not any("private" in [c.lower() for c in (r["categories"] or [])] for r in staged.values())
    assert counts["excluded"] > 0
    print(f"\nfull extract: {counts['users']} users, {counts['streams']} streams, {counts['page_rounds']} page "
          f"rounds, batches per round {[c['batches'] for c in rounds]}, items {[c['items'] for c in rounds]}, "
          f"peak per mailbox {max(concurrency['peak'].values())}")

    # the default folder is read per folder id (documented route): its id came from the subfolders'
    # parentFolderId, else one batched contacts?$top=1 lookup per user without subfolders
    lookups = rounds[1]["items"]
    delta_items = rounds[2]["items"]
    assert lookups < counts["users"] and delta_items <= counts["streams"]

    env["graph"].admin("DELETE", "counters")
    again = _run(env, "delta", client)[0]
    assert again["inserted"] == again["updated"] == again["deleted"] == again["expired"] == 0
    assert _batch_posts(env) <= 2 * math.ceil(again["streams"] / 20) + math.ceil(again["users"] / 20)

    # a later full run takes the default folder's id from its stored link: lookups only where the
    # default folder was empty (no link), each replacing the delta request such a stream would make
    rounds.clear()
    _run(env, "full", client)
    empty = counts["streams"] - delta_items
    assert [r["items"] for r in rounds] == [counts["users"], empty, delta_items]
    routes = env["graph"].admin("GET", "counters").json()["requests"]
    assert "GET /v1.0/users/{id}/contacts/delta" not in routes


def test_expired_delta_link_of_one_user_falls_back_to_a_full_round_for_that_user_only(
        env: dict[str, Any]) -> None:
    _run(env, "full")
    before = _staged(env)
    owners = sorted({owner for owner, _ in before})
    victim, other = owners[0], owners[1]
    env["graph"].admin("POST", "mailbox/expire", json={"kind": "contacts", "user_id": victim})
    body = {"givenName": "New", "surname": "Person", "mobilePhone": "+49 170 5550101"}
    created = env["graph"].admin("POST", f"users/{other}/contacts", json=body).json()

    counts = _run(env, "delta")[0]
    with env["engine"].connect() as conn:
        streams = conn.execute(sa.text("SELECT count(*) FROM delta_state WHERE resource LIKE :p"),
                               {"p": f"contacts:{victim}:%"}).scalar_one()
    assert counts["expired"] == streams >= 1  # every stream of the victim, nobody else's
    assert counts["inserted"] == 1 and counts["deleted"] == 0 and counts["updated"] == 0
    after = _staged(env)
    assert (other, created["id"]) in after
    assert {k for k, r in after.items() if not r["deleted"]} == {k for k, r in before.items() if not r["deleted"]} | {
        (other, created["id"])}


def test_added_edited_deleted_and_privatised_contacts_reach_staging(env: dict[str, Any]) -> None:
    _run(env, "full")
    owner = sorted({o for o, _ in _staged(env)})[2]
    graph = env["graph"]
    added = graph.admin("POST", f"users/{owner}/contacts",
                        json={"givenName": "Ada", "surname": "Added", "businessPhones": ["+1 206 555 0199"],
                              "folder": "3CX"}).json()
    victim = next(cid for (o, cid), r in _staged(env).items() if o == owner and not r["deleted"])
    graph.admin("PATCH", f"users/{owner}/contacts/{victim}", json={"jobTitle": "Edited"})
    counts = _run(env, "delta")[0]
    staged = _staged(env)
    assert staged[(owner, added["id"])]["given_name"] == "Ada"
    assert staged[(owner, victim)]["job_title"] == "Edited"
    assert counts["inserted"] == 1 and counts["updated"] == 1

    graph.admin("PATCH", f"users/{owner}/contacts/{victim}", json={"categories": ["private"]})
    graph.admin("DELETE", f"users/{owner}/contacts/{added['id']}")
    counts = _run(env, "delta")[0]
    staged = _staged(env)
    assert (owner, victim) not in staged  # purged: nothing of a private contact is kept
    assert staged[(owner, added["id"])]["deleted"] is True
    assert counts["excluded"] == 1 and counts["deleted"] == 1


def test_mailbox_without_exchange_is_skipped_with_a_note(env: dict[str, Any]) -> None:
    settings = Settings.from_mapping({"contacts": {"personal_contacts": "all"}, "scope": {"include_guests": True}})
    shards = pipeline.contact_shards(env["engine"], settings)
    counts = [pipeline.extract_contacts(env["engine"], env["client"], settings, "t/g", "full", s, datetime.now(UTC))
              for s in shards]
    skipped = sum(c["skipped_users"] for c in counts)
    assert skipped > 0 and sum(c["inserted"] for c in counts) > 0
    with env["engine"].connect() as conn:
        notes = conn.execute(sa.text("SELECT count(*) FROM sync_notes WHERE field = 'mailbox'")).scalar_one()
    assert notes == skipped
