"""Teams presence poll against the Graph emulator over HTTPS, staged in a throwaway PostgreSQL database.

Presence is read in batches, staged per request, users Graph no longer answers for lose theirs,
a 429 is waited out per its Retry-After, a missing permission fails with a clear message, and
only fresh presence counts when the status is decided.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from m365_3cx.errors import GraphFatalError
from m365_3cx.graph.auth import GraphCredentials
from m365_3cx.graph.client import GraphClient
from m365_3cx.graph.presence import RequestBudget, read_presences
from m365_3cx.http import RetryPolicy
from m365_3cx.pipeline import presence as pipeline
from m365_3cx.pipeline.users import extract_users
from m365_3cx.settings import Settings
from m365_3cx.staging import presence as stage
from m365_3cx.staging.db import make_engine
from m365_3cx.staging.numbers import assign_numbers
from m365_3cx.staging.schema import create_schema

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

FAST = RetryPolicy(max_attempts=4, backoff_base=0.01, backoff_cap=0.05, max_total_wait=20, connect_timeout=5,
                   read_timeout=10)
SETTINGS = Settings.from_mapping({"presence": {"enabled": True, "teams": {"enabled": True}}})


@pytest.fixture
def env(graph_emulator: Any, pg_database: str) -> Iterator[dict[str, Any]]:
    info = graph_emulator.info
    authority_host = str(info["authority"]).rstrip("/").rsplit("/", 1)[0]
    client = GraphClient(GraphCredentials(
        tenant_id=info["tenant_id"], client_id=info["client_id"], client_secret=info["client_secret"],
        authority_host=authority_host, graph_url=info["graph_url"], ca_bundle=info["ca_bundle"]), FAST)
    engine = make_engine(pg_database)
    create_schema(engine)
    now = dt.datetime.now(dt.UTC)
    extract_users(engine, client, SETTINGS, "seed/users", "full", now)
    with engine.begin() as conn:  # every user with mail gets a managed extension (as the users slice would)
        mails = conn.execute(sa.text("SELECT user_id FROM stg_users WHERE mail IS NOT NULL ORDER BY user_id")).all()
        assign_numbers(conn, [{"user_id": uid, "number": str(500 + i), "threecx_id": 1000 + i}
                              for i, (uid,) in enumerate(mails)], now)
    yield {"graph": graph_emulator, "client": client, "engine": engine, "ids": [uid for (uid,) in mails]}
    client.close()
    engine.dispose()


def staged(env: dict[str, Any]) -> dict[str, tuple[str | None, str | None]]:
    with env["engine"].connect() as conn:
        return stage.load_teams_presence(conn, dt.datetime(2000, 1, 1, tzinfo=dt.UTC))


def test_poll_stages_every_managed_users_presence_and_drops_users_graph_no_longer_answers(
        env: dict[str, Any]) -> None:
    graph, ids = env["graph"], env["ids"]
    graph.admin("PUT", f"users/{ids[0]}/presence", json={"availability": "Busy", "activity": "InACall"})
    counts = pipeline.extract_teams_presence(env["engine"], env["client"], SETTINGS, "delta/1",
                                             dt.datetime.now(dt.UTC))
    assert (counts["users"], counts["requests"], counts["staged"]) == (len(ids), 1, len(ids))
    rows = staged(env)
    assert rows[ids[0]] == ("Busy", "InACall") and rows[ids[1]] == ("Offline", "Offline")

    graph.admin("DELETE", f"users/{ids[1]}")  # still managed in staging, but Graph has no presence for them
    counts = pipeline.extract_teams_presence(env["engine"], env["client"], SETTINGS, "delta/2",
                                             dt.datetime.now(dt.UTC))
    assert counts["dropped"] == 1 and ids[1] not in staged(env)
    requests = graph.admin("GET", "counters").json()["requests"]
    assert requests["POST /v1.0/communications/getPresencesByUserId"] == 2


def test_batches_stay_within_the_size_and_the_budget(env: dict[str, Any]) -> None:
    waits: list[float] = []
    budget = RequestBudget(2, 30.0, sleep=waits.append)
    batches = list(read_presences(env["client"], env["ids"], budget, batch_size=7))
    assert [len(asked) for asked, _ in batches] == [len(env["ids"][i:i + 7]) for i in range(0, len(env["ids"]), 7)]
    assert all({p.user_id for p in presences} == set(asked) for asked, presences in batches)
    assert len(waits) == len(batches) - 2  # every request past the 2nd waited for the window


def test_a_429_is_waited_out_and_a_missing_permission_fails_clearly(env: dict[str, Any]) -> None:
    graph = env["graph"]
    graph.admin("POST", "faults", json={"kind": "status", "status": 429, "retry_after": 1, "count": 1,
                                        "path": "getPresencesByUserId"})
    counts = pipeline.extract_teams_presence(env["engine"], env["client"], SETTINGS, "delta/1",
                                             dt.datetime.now(dt.UTC))
    assert counts["staged"] == len(env["ids"])
    assert graph.admin("GET", "counters").json()["requests"]["POST /v1.0/communications/getPresencesByUserId"] == 2

    granted = graph.admin("GET", "permissions").json()["granted"]
    graph.admin("PUT", "permissions", json={"granted": [g for g in granted if g != "Presence.Read.All"]})
    with pytest.raises(GraphFatalError, match=r"Presence\.Read\.All"):
        pipeline.extract_teams_presence(env["engine"], env["client"], SETTINGS, "delta/2", dt.datetime.now(dt.UTC))
    assert len(staged(env)) == len(env["ids"])  # what the last good poll read stays (until it ages out)


def test_only_fresh_presence_counts_and_disabled_polls_nothing(env: dict[str, Any]) -> None:
    now = dt.datetime.now(dt.UTC)
    with env["engine"].begin() as conn:
        stage.save_teams_presence(conn, [{"user_id": env["ids"][0], "availability": "Busy", "activity": "Bad\x07"}],
                                  "delta/old", now - dt.timedelta(minutes=20), polled=env["ids"][:1])
        stage.save_teams_presence(conn, [{"user_id": env["ids"][1], "availability": "Away", "activity": None}],
                                  "delta/new", now, polled=env["ids"][1:2])
        fresh = stage.load_teams_presence(conn, now - dt.timedelta(minutes=15))
    assert fresh == {env["ids"][1]: ("Away", None)}
    assert staged(env)[env["ids"][0]] == ("Busy", "Bad")  # control characters never reach staging

    off = Settings.from_mapping({"presence": {"enabled": True}})
    env["graph"].admin("DELETE", "counters")
    assert pipeline.extract_teams_presence(env["engine"], env["client"], off, "delta/3", now) == {"enabled": False}
    assert env["graph"].admin("GET", "counters").json()["requests"] == {}
