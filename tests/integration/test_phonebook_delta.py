"""A delta run's phonebook work is proportional to the change (emulators over HTTPS, PostgreSQL staging).

After a full sync, six Outlook contacts are edited. The delta run does not page through the
3CX phonebook: it verifies the entries it is about to update by id (one filtered read), re-creates
one an operator deleted meanwhile, leaves alone one an operator already set to the new values, and
patches the others: 3CX writes equal the changes really needed.

A full run (nightly reconciliation) re-reads every contact but recomputes only the phonebook
entries its changes touch, still diffing the whole phonebook: after an edit, a delete, an owner
moving country, a contact folder removed and a contact getting the exclusion category, its
targets are exactly what the full path computes; with no change it recomputes nothing; and once
the last full recompute is older than the bound it recomputes everything.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
import sqlalchemy as sa

from m365_3cx.graph.auth import GraphCredentials
from m365_3cx.graph.client import GraphClient
from m365_3cx.http import RetryPolicy
from m365_3cx.pipeline import contacts as pipeline
from m365_3cx.pipeline import users as users_pipeline
from m365_3cx.pipeline.phonebook_delta import FULL_RECOMPUTE_AGE
from m365_3cx.pipeline.users import extract_users
from m365_3cx.settings import Settings
from m365_3cx.staging.control import set_writes_enabled
from m365_3cx.staging.db import make_engine
from m365_3cx.staging.runs import load_plan
from m365_3cx.staging.schema import (
    create_schema,
    phonebook_map,
    sync_audit,
    tgt_phonebook,
    tgt_phonebook_sources,
    transform_state,
)
from m365_3cx.threecx.client import ThreeCXClient, ThreeCXCredentials, clear_token_cache

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

FAST = RetryPolicy(max_attempts=4, backoff_base=0.01, backoff_cap=0.05, max_total_wait=10,
                   connect_timeout=5, read_timeout=30)
SETTINGS = Settings.from_mapping({"contacts": {"personal_contacts": "all", "shard_size": 200},
                                  "threecx": {"write_concurrency": 3}})


@pytest.fixture
def env(graph_emulator: Any, threecx_emulator: Any, pg_database: str) -> Iterator[dict[str, Any]]:
    g, p = graph_emulator.info, threecx_emulator.info
    graph = GraphClient(GraphCredentials(
        tenant_id=g["tenant_id"], client_id=g["client_id"], client_secret=g["client_secret"],
        authority_host=str(g["authority"]).rstrip("/").rsplit("/", 1)[0], graph_url=g["graph_url"],
        ca_bundle=g["ca_bundle"]), FAST)
    clear_token_cache()
    pbx = ThreeCXClient(ThreeCXCredentials(p["base_url"], p["client_id"], p["client_secret"], p["ca_bundle"]), FAST)
    engine = make_engine(pg_database)
    create_schema(engine)
    with engine.begin() as conn:  # live, through the go-live DAG's repository call
        set_writes_enabled(conn, True, changed_by="tests/integration", now=datetime.now(UTC))
    yield {"graph": graph, "pbx": pbx, "engine": engine, "g": graph_emulator, "p": threecx_emulator}
    graph.close()
    pbx.close()
    engine.dispose()


def _run(env: dict[str, Any], mode: str, run_key: str, *, before_apply: Any = None) -> dict[str, Any]:
    engine, graph, pbx = env["engine"], env["graph"], env["pbx"]
    now = datetime.now(UTC)
    extract_users(engine, graph, SETTINGS, run_key, mode, now)
    for shard in pipeline.contact_shards(engine, SETTINGS):
        pipeline.extract_contacts(engine, graph, SETTINGS, run_key, mode, shard, now)
    snapshot = pipeline.snapshot_phonebook(engine, pbx, SETTINGS, run_key, now, mode=mode)
    pipeline.transform_phonebook(engine, SETTINGS, run_key, now)
    plan = pipeline.plan_phonebook(engine, run_key)
    if before_apply is not None:
        before_apply()
    applied = pipeline.apply_phonebook(engine, pbx, SETTINGS, run_key, now, dry_run=False, allow_mass_removal=True,
                                       mode=mode)
    return {"snapshot": snapshot, "plan": plan, "applied": applied}


def test_delta_reads_only_the_entries_it_updates_and_writes_only_real_changes(env: dict[str, Any]) -> None:
    g, p, engine = env["g"], env["p"], env["engine"]
    full = _run(env, "full", "t/full")
    assert full["applied"]["created"] > 10 and full["applied"]["failed"] == 0
    assert _run(env, "full", "t/full2")["plan"] == {**full["plan"], "create": 0, "update": 0, "delete": 0,
                                                   "managed": full["applied"]["created"]}

    # Edit six contacts of different mailboxes (job title -> the entry's Title).
    edited = 0
    for user in g.admin("GET", "state").json()["users"]:
        if edited == 6 or not user.get("mail"):
            continue
        try:
            box = g.admin("GET", f"users/{user['id']}/mailbox").json()
        except Exception:
            continue
        contact = next((c for c in box["contacts"] if c.get("givenName") and c.get("businessPhones")), None)
        if contact is None:
            continue
        g.admin("PATCH", f"users/{user['id']}/contacts/{contact['id']}", json={"jobTitle": f"Bench title {edited}"})
        edited += 1
    assert edited == 6

    chosen: dict[str, Any] = {}

    def operator_meddles() -> None:
        with engine.connect() as conn:
            rows = load_plan(conn, pipeline.contact_plan_key("t/delta"))
        updates = [r for r in rows if r["action"] == "update"]
        assert len(updates) >= 3, rows
        gone, same, patched = updates[:3]
        chosen.update(gone=gone, same=same, patched=patched)
        p.admin("DELETE", f"contacts/{gone['threecx_id']}")
        p.admin("PATCH", f"contacts/{same['threecx_id']}", json={f: pair[1] for f, pair in same["changes"].items()})
        p.admin("DELETE", "counters")

    delta = _run(env, "delta", "t/delta", before_apply=operator_meddles)
    assert delta["snapshot"]["read"] == 0  # the phonebook was not paged through
    counters = p.admin("GET", "counters").json()["requests"]
    reads = {k: v for k, v in counters.items() if k.startswith("GET ")}
    # one filtered read by id verified every planned update; the entry deleted by hand became a create,
    # and creates first look for our own tag (one filtered read per 20 creates: idempotent creates)
    assert sum(reads.values()) == 2, reads
    assert delta["applied"]["created"] == 1 and delta["applied"]["verified"] == 1
    assert delta["applied"]["updated"] == delta["plan"]["update"] - 2
    writes = sum(v for k, v in counters.items()
                 if k.startswith(("POST ", "PATCH ", "DELETE ")) and "/connect/" not in k)
    assert writes == delta["applied"]["created"] + delta["applied"]["updated"] + delta["applied"]["deleted"]

    with engine.connect() as conn:
        entries = {r.contact_key: r for r in conn.execute(sa.select(phonebook_map))}
        audit = conn.execute(sa.select(sync_audit.c.object_key, sync_audit.c.action, sync_audit.c.result)
                             .where(sync_audit.c.run_key == "t/delta")).all()
    recreated = entries[chosen["gone"]["object_key"]]
    assert recreated.present and recreated.threecx_id != chosen["gone"]["threecx_id"]
    assert {(a.action, a.result) for a in audit if a.object_key == chosen["same"]["object_key"]} == {
        ("update", "skipped")}
    patched = entries[chosen["patched"]["object_key"]]
    assert patched.current["Title"] == chosen["patched"]["changes"]["Title"][1]

    # The next delta run finds nothing left to do, and a full run agrees.
    again = _run(env, "delta", "t/delta2")
    assert again["plan"]["create"] == again["plan"]["update"] == again["plan"]["delete"] == 0
    final = _run(env, "full", "t/full3")
    assert final["plan"]["create"] == final["plan"]["update"] == final["plan"]["delete"] == 0


def _recorded_full_run(env: dict[str, Any], name: str) -> dict[str, Any]:
    """A whole full run as the full DAG records it (``sync_runs``), with the transform's counts."""
    engine, graph, pbx = env["engine"], env["graph"], env["pbx"]
    run = users_pipeline.RunInfo.create("m365_3cx_full_sync", name, "full")
    now = datetime.now(UTC)
    users_pipeline.start_run(engine, run, now)
    extract_users(engine, graph, SETTINGS, run.run_key, "full", now)
    for shard in pipeline.contact_shards(engine, SETTINGS):
        pipeline.extract_contacts(engine, graph, SETTINGS, run.run_key, "full", shard, now)
    pipeline.snapshot_phonebook(engine, pbx, SETTINGS, run.run_key, now, mode="full")
    transform = pipeline.transform_phonebook(engine, SETTINGS, run.run_key, now, mode="full")
    plan = pipeline.plan_phonebook(engine, run.run_key, now=now, mode="full")
    applied = pipeline.apply_phonebook(engine, pbx, SETTINGS, run.run_key, now, dry_run=False,
                                       allow_mass_removal=True, mode="full")
    users_pipeline.finish_run(engine, run.run_key, "success", {}, datetime.now(UTC))
    return {"run_key": run.run_key, "now": now, "transform": transform, "plan": plan, "applied": applied}


def _phonebook_targets(engine: Any) -> tuple[dict[str, tuple[Any, ...]], set[tuple[Any, ...]]]:
    """Active ``tgt_phonebook`` rows (without run stamps) and ``tgt_phonebook_sources``."""
    cols = [c for c in tgt_phonebook.c if c.name not in ("run_key", "computed_at", "state")]
    s = tgt_phonebook_sources
    with engine.connect() as conn:
        rows = conn.execute(sa.select(*cols).where(tgt_phonebook.c.state == "active")).all()
        sources = {tuple(r) for r in conn.execute(sa.select(s.c.owner_id, s.c.contact_id, s.c.contact_key))}
    return {r[0]: tuple(r[1:]) for r in rows}, sources


def _phoned(contacts: list[dict[str, Any]], folder: str | None = None) -> list[dict[str, Any]]:
    return [c for c in contacts if (c.get("businessPhones") or c.get("mobilePhone")) and "Private" not in
            (c.get("categories") or []) and (folder is None or c["folder"] == folder)]


def test_a_full_run_recomputes_only_the_entries_its_changes_touch(env: dict[str, Any]) -> None:
    g, engine = env["g"], env["engine"]
    first = _recorded_full_run(env, "f1")
    assert "incremental" not in first["transform"]  # nothing recorded yet: every entry
    assert first["applied"]["created"] > 10 and first["applied"]["failed"] == 0
    entries = first["transform"]["entries"]

    quiet = _recorded_full_run(env, "f2")  # every contact re-read, none changed
    assert quiet["transform"]["incremental"] == 1
    assert (quiet["transform"]["dirty"], quiet["transform"]["entries"], quiet["transform"]["removed"]) == (0, 0, 0)
    assert quiet["plan"] == {**quiet["plan"], "create": 0, "update": 0, "delete": 0}
    assert quiet["plan"]["managed"] == first["applied"]["created"]  # the whole phonebook was still diffed

    # Five mailboxes, five kinds of change.
    boxes = []
    for user in g.admin("GET", "state").json()["users"]:
        try:
            box = g.admin("GET", f"users/{user['id']}/mailbox").json()
        except Exception:
            continue
        if len(_phoned(box["contacts"], "Contacts")) >= 2:
            boxes.append((user, box))
    with_folder = next((u, b) for u, b in boxes if _phoned(b["contacts"], "3CX"))
    others = [(u, b) for u, b in boxes if u["id"] != with_folder[0]["id"]]
    (edited, e_box), (deleted, d_box), (moved, _), (private, p_box) = others[:4]
    target = _phoned(e_box["contacts"], "Contacts")[0]
    g.admin("PATCH", f"users/{edited['id']}/contacts/{target['id']}", json={"jobTitle": "Night auditor"})
    g.admin("DELETE", f"users/{deleted['id']}/contacts/{_phoned(d_box['contacts'], 'Contacts')[0]['id']}")
    g.admin("PATCH", f"users/{moved['id']}", json={"usageLocation": "DE" if moved.get("usageLocation") != "DE"
                                                   else "GB"})
    victim = _phoned(p_box["contacts"], "Contacts")[0]
    g.admin("PATCH", f"users/{private['id']}/contacts/{victim['id']}",
            json={"categories": [*(victim.get("categories") or []), "Private"]})
    owner, box = with_folder  # the folder is removed (its contacts with it): a stream gone
    folder_id = next(f["id"] for f in box["folders"] if f["displayName"] == "3CX")
    for contact in box["contacts"]:
        if contact["folder"] == "3CX":
            g.admin("DELETE", f"users/{owner['id']}/contacts/{contact['id']}")
    del g.backend.mailbox_for(owner["id"]).folders[folder_id]

    changed = _recorded_full_run(env, "f3")
    counts = changed["transform"]
    assert counts["incremental"] == 1 and 0 < counts["dirty"] < entries // 4 and counts["entries"] > 0
    assert changed["plan"]["update"] >= 1 and changed["plan"]["delete"] >= 1
    assert changed["applied"]["failed"] == 0
    incremental = _phonebook_targets(engine)
    assert "incremental" not in pipeline.transform_phonebook(engine, SETTINGS, "check", changed["now"],
                                                             mode="full", recompute_all=True)
    assert incremental == _phonebook_targets(engine)  # exactly what the full path computes

    again = _recorded_full_run(env, "f4")  # nothing left to do
    assert again["plan"]["create"] == again["plan"]["update"] == again["plan"]["delete"] == 0

    with engine.begin() as conn:  # the last full recompute ages past the bound
        conn.execute(sa.update(transform_state).where(transform_state.c.feature == "phonebook").values(
            full_at=datetime.now(UTC) - FULL_RECOMPUTE_AGE - timedelta(minutes=1)))
    aged = _recorded_full_run(env, "f5")
    assert "incremental" not in aged["transform"] and aged["transform"]["entries"] == len(incremental[0])
    assert aged["plan"]["create"] == aged["plan"]["update"] == aged["plan"]["delete"] == 0
    with engine.connect() as conn:
        assert conn.execute(sa.select(transform_state.c.full_at)).scalar_one() == aged["now"]
