"""On-demand user extraction against the Graph emulator over HTTPS, staging in PostgreSQL.

Entries resolve by extension number, Graph id or UPN (case-insensitive), a user created in Graph
after the last sync is read by UPN, a staged user Graph no longer has is marked deleted, unknown
entries are named and an all-unknown list raises. The named users are read with ``$batch``.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
import sqlalchemy as sa

from m365_3cx.graph.auth import GraphCredentials
from m365_3cx.graph.client import GraphClient
from m365_3cx.http import RetryPolicy
from m365_3cx.pipeline.ondemand import UnknownUsersError, extract_on_demand, parse_entries
from m365_3cx.pipeline.users import extract_users
from m365_3cx.settings import Settings
from m365_3cx.staging.db import make_engine
from m365_3cx.staging.numbers import assign_numbers
from m365_3cx.staging.schema import create_schema, stg_users, sync_trace

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

FAST = RetryPolicy(max_attempts=3, backoff_base=0.01, backoff_cap=0.05, max_total_wait=10,
                   connect_timeout=5, read_timeout=30)
SETTINGS = Settings()
NOW = datetime(2026, 12, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def env(graph_emulator: Any, pg_database: str) -> Iterator[dict[str, Any]]:
    info = graph_emulator.info
    client = GraphClient(GraphCredentials(
        tenant_id=info["tenant_id"], client_id=info["client_id"], client_secret=info["client_secret"],
        authority_host=str(info["authority"]).rstrip("/").rsplit("/", 1)[0], graph_url=info["graph_url"],
        ca_bundle=info["ca_bundle"]), FAST)
    engine = make_engine(pg_database)
    create_schema(engine)
    extract_users(engine, client, SETTINGS, "t/full", "full", NOW)
    graph_emulator.admin("DELETE", "counters")
    yield {"graph": graph_emulator, "client": client, "engine": engine}
    client.close()
    engine.dispose()


def _trace(engine: sa.Engine, run_key: str) -> list[dict[str, Any]]:
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(sa.select(sync_trace).where(sync_trace.c.run_key == run_key)
                                              .order_by(sync_trace.c.seq, sync_trace.c.id)).mappings()]


def test_parse_entries_strips_and_dedupes() -> None:
    assert parse_entries([" a@x ", "A@X", "", "101", None, "b"]) == ["a@x", "101", "b"]
    assert parse_entries(None) == []


def test_resolves_by_number_id_and_upn_reads_new_users_and_names_unknowns(
        env: dict[str, Any], caplog: pytest.LogCaptureFixture) -> None:
    engine, graph = env["engine"], env["graph"]
    with engine.connect() as conn:
        staged = conn.execute(sa.select(stg_users.c.user_id, stg_users.c.user_principal_name)
                              .where(stg_users.c.deleted.is_(False)).order_by(stg_users.c.user_id)).all()
    (a_id, _), (b_id, _), (c_id, c_upn), (d_id, d_upn) = staged[:4]
    with engine.begin() as conn:
        assign_numbers(conn, [{"user_id": a_id, "number": "555"}], NOW)
    graph.admin("DELETE", f"users/{d_id}")  # staged, gone from Graph
    new = graph.admin("POST", "users", json={"userPrincipalName": "late.comer@contoso.example",
                                             "displayName": "Late Comer"}).json()
    entries = ["555", b_id.upper(), c_upn.upper(), d_upn, "late.comer@contoso.example", "nobody@x.example", "777"]
    counts = extract_on_demand(engine, env["client"], SETTINGS, "t/od", entries, NOW)
    assert counts["entries"] == 7 and counts["found"] == 5 and counts["unknown"] == 2
    assert counts["read"] == 4 and counts["not_found"] == 1 and counts["inserted"] == 1 and counts["deleted"] == 1
    assert "nobody@x.example, 777" in caplog.text

    trace = _trace(engine, "t/od")
    resolve = {(t["detail"]["entry"], t["outcome"], t["detail"].get("matched_by")) for t in trace
               if t["step"] == "resolve"}
    assert resolve == {("555", "found", "extension"), (b_id.upper(), "found", "id"), (c_upn.upper(), "found", "upn"),
                       (d_upn, "found", "upn"), ("late.comer@contoso.example", "found", "upn"),
                       ("nobody@x.example", "unknown", None), ("777", "unknown", None)}
    read = {t["user_id"]: t for t in trace if t["step"] == "read"}
    assert set(read) == {a_id, b_id, c_id, d_id, new["id"]}
    assert read[d_id]["outcome"] == "not_found" and read[d_id]["detail"]["deleted"] is True
    assert read[new["id"]]["outcome"] == "found" and read[new["id"]]["detail"]["displayName"] == "Late Comer"
    with engine.connect() as conn:
        assert conn.execute(sa.select(stg_users.c.deleted).where(stg_users.c.user_id == d_id)).scalar_one() is True
    counters = graph.admin("GET", "counters").json()["requests"]
    assert counters.get("POST /v1.0/$batch") == 1, counters


def test_only_unknown_entries_raise_naming_them(env: dict[str, Any]) -> None:
    with pytest.raises(UnknownUsersError, match=r"none of the 2 entries .*: nobody@x\.example, 4242"):
        extract_on_demand(env["engine"], env["client"], SETTINGS, "t/none", ["nobody@x.example", "4242"], NOW)
    assert [t["upn"] for t in _trace(env["engine"], "t/none")] == ["nobody@x.example", "4242"]
