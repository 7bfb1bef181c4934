"""Console queries over staging, on PostgreSQL and SQLite, with rows written by the staging repository."""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from pathlib import Path

import pytest
from sqlalchemy import Engine

from m365_3cx.console import queries as q
from m365_3cx.staging.bulk import upsert
from m365_3cx.staging.db import make_engine
from m365_3cx.staging.numbers import assign_numbers
from m365_3cx.staging.runs import add_audit, add_notes, finish_run, record_run_error, save_plan, start_run
from m365_3cx.staging.schema import create_schema, phonebook_map, stg_users

NOW = dt.datetime(2026, 12, 2, 12, 0, tzinfo=dt.UTC)


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def engine(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Engine]:
    url = f"sqlite:///{tmp_path / 'staging.db'}" if request.param == "sqlite" else request.getfixturevalue(
        "pg_database")
    eng = make_engine(url)
    create_schema(eng)
    yield eng
    eng.dispose()


def _run(conn, dag_id: str, run_id: str, started: dt.datetime, *, status: str = "success", dry: bool = False,
         error: str | None = None) -> str:
    key = f"{dag_id}/{run_id}"
    start_run(conn, key, dag_id, run_id, "delta", dry, started)
    if status == "success":
        finish_run(conn, key, "success", {"apply": {"created": 1}}, started + dt.timedelta(minutes=2))
    elif status == "failed":
        record_run_error(conn, key, error or "apply_extensions: boom", started + dt.timedelta(minutes=1))
    return key


def _seed(engine: Engine) -> dict[str, str]:
    """A live install (writes switched on, when this version has the switch) with a few runs."""
    with engine.begin() as conn:
        if "sync_control" in q.schema.metadata.tables:
            from m365_3cx.staging import control

            control.set_writes_enabled(conn, True, changed_by="ops", now=NOW - dt.timedelta(days=3))
        upsert(conn, stg_users, [
            {"user_id": "u1", "user_principal_name": "Ada@Contoso.example", "display_name": "Ada", "row_hash": "h",
             "first_seen_at": NOW, "updated_at": NOW, "in_scope": True, "deleted": False},
            {"user_id": "u2", "user_principal_name": "bob@contoso.example", "display_name": "Bob", "row_hash": "h",
             "first_seen_at": NOW, "updated_at": NOW, "in_scope": True, "deleted": False},
        ], ["user_id"])
        assign_numbers(conn, [{"user_id": "u1", "number": "201", "threecx_id": 7},
                              {"user_id": "u2", "number": "202", "threecx_id": 8}], NOW)
        full = _run(conn, "m365_3cx_full_sync", "scheduled__1", NOW - dt.timedelta(hours=30))
        save_plan(conn, full, [
            {"action": "create", "object_key": "u1", "number": "201", "changes": {"FirstName": [None, "Ada"]},
             "reason": "new user", "status": "applied"},
            {"action": "create", "object_key": "u2", "number": "202", "changes": {"FirstName": [None, "Bob"]},
             "reason": "new user", "status": "applied"}])
        save_plan(conn, full + "#contacts", [
            {"action": "create", "object_type": "contact", "object_key": "k1",
             "changes": {"FirstName": [None, "Carol"], "LastName": [None, "Contact"]}, "status": "applied"},
            {"action": "delete", "object_type": "contact", "object_key": "k2", "status": "applied"}])
        upsert(conn, phonebook_map, [{"contact_key": "k2", "tag": "m365-sync:k2", "threecx_id": 5,
                                      "status": "active", "present": True, "created_at": NOW,
                                      "updated_at": NOW, "current": {"CompanyName": "Gone Ltd"}}],
                    ["contact_key"])
        add_audit(conn, [
            {"run_key": full, "at": NOW - dt.timedelta(hours=30), "action": "create", "object_type": "extension",
             "object_key": "u1", "number": "201", "threecx_id": 7, "field": "FirstName", "before": None,
             "after": "Ada", "result": "ok", "error": None},
            {"run_key": full, "at": NOW - dt.timedelta(hours=30), "action": "create", "object_type": "extension",
             "object_key": "u2", "number": "202", "threecx_id": 8, "field": "FirstName", "before": None,
             "after": "Bob", "result": "failed", "error": "3cx: 400"}])
        add_notes(conn, full, [
            {"object_type": "contact", "object_key": "u1/c1", "record_label": "Ada@Contoso.example",
             "field": "mobilePhone", "severity": "info", "message": "contact c1 of Ada: has no phone number"},
            {"object_type": "user", "object_key": "u2", "record_label": "bob@contoso.example", "field": "number",
             "severity": "error", "message": "user bob: extension 202 is held by an unmanaged extension"},
            {"object_type": "user", "object_key": "u1", "record_label": "Ada@Contoso.example", "field": "mobile",
             "severity": "warning", "message": "user Ada: mobilePhone not a number"}], step="transform", now=NOW)
        hourly = _run(conn, "m365_3cx_hourly", "scheduled__2", NOW - dt.timedelta(minutes=50))
        save_plan(conn, hourly + "#presence", [
            {"action": "set_profile", "object_type": "presence", "object_key": "u1", "number": "201",
             "changes": {"CurrentProfileName": ["Available", "Away"]}, "reason": "calendar: busy",
             "status": "applied"}])
        add_audit(conn, [{"run_key": hourly, "at": NOW - dt.timedelta(minutes=49), "action": "set_profile",
                          "object_type": "presence", "object_key": "u1", "number": "201", "threecx_id": 7,
                          "field": "CurrentProfileName", "before": "Available", "after": "Away",
                          "result": "ok", "error": None}])
        _run(conn, "m365_3cx_delta", "scheduled__3", NOW - dt.timedelta(hours=2), status="failed")
        dry = _run(conn, "m365_3cx_delta", "manual__4", NOW - dt.timedelta(minutes=10), dry=True)
        save_plan(conn, dry, [{"action": "update", "object_key": "u1", "number": "201",
                               "changes": {"LastName": ["Lovelace", "King"]}, "reason": "fields changed",
                               "status": "dry_run"}])
    return {"full": full, "hourly": hourly, "dry": dry}


def test_health_per_feature(engine: Engine) -> None:
    _seed(engine)
    with engine.connect() as conn:
        health = q.health(conn, NOW, {"users": 60, "phonebook": 0, "statuses": 180})
    users, phonebook, statuses = health["features"]
    assert users["last_success"]["dag_id"] == "m365_3cx_full_sync"  # the dry delta does not count
    assert users["stale"] and users["failures_24h"] == 1 and users["last_run"]["dry_run"]
    assert not phonebook["stale"]  # threshold 0: never stale
    assert statuses["last_success"]["dag_id"] == "m365_3cx_hourly" and not statuses["stale"]
    assert 47 * 60 < statuses["age_seconds"] < 49 * 60
    assert health["writes"]["available"] in (True, False)


def test_runs_paginate_and_filter(engine: Engine) -> None:
    keys = _seed(engine)
    with engine.connect() as conn:
        first = q.runs(conn, q.Page(1, 2))
        second = q.runs(conn, q.Page(2, 2))
        dry = q.runs(conn, q.Page(1, 10), dry=True)
        failed = q.runs(conn, q.Page(1, 10), status="failed")
    assert [r["run_key"] for r in first["items"]] == [keys["dry"], keys["hourly"]] and first["has_next"]
    assert len(second["items"]) == 2 and not second["has_next"]
    assert second["items"][1]["planned"] == {"applied": 4}  # extension and phonebook plans together
    assert [r["run_key"] for r in dry["items"]] == [keys["dry"]]
    assert [r["dag_id"] for r in failed["items"]] == ["m365_3cx_delta"]


def test_change_set_spans_the_three_plans_with_filters(engine: Engine) -> None:
    keys = _seed(engine)
    with engine.connect() as conn:
        every = q.change_set(conn, keys["full"], q.Page())
        contacts = q.change_set(conn, keys["full"], q.Page(), object_type="contact")
        by_upn = q.change_set(conn, keys["full"], q.Page(), q="ada@contoso.EXAMPLE")
        by_number = q.change_set(conn, keys["full"], q.Page(), q="202")
        writes = q.writes(conn, keys["full"], q.Page(), result="failed")
        detail = q.run_detail(conn, keys["full"])
    assert len(every["items"]) == 4
    assert [c["label"] for c in contacts["items"]] == ["Carol Contact", "Gone Ltd"]
    assert [c["label"] for c in by_upn["items"]] == ["Ada@Contoso.example"]
    assert by_upn["items"][0]["fields"] == [{"field": "FirstName", "before": None, "after": "Ada"}]
    assert [c["object_key"] for c in by_number["items"]] == ["u2"]
    assert [(w["label"], w["error"]) for w in writes["items"]] == [("bob@contoso.example", "3cx: 400")]
    assert detail["plan_summary"] == {"extension": {"create": {"applied": 2}},
                                      "contact": {"create": {"applied": 1}, "delete": {"applied": 1}}}
    assert detail["write_results"] == {"ok": 1, "failed": 1}
    assert detail["note_counts"] == {"info": 1, "error": 1, "warning": 1}


def test_user_history_has_every_plan_row_write_and_note(engine: Engine) -> None:
    keys = _seed(engine)
    with engine.connect() as conn:
        assert [u["user_id"] for u in q.find_users(conn, "ADA@contoso.example")] == ["u1"]
        assert [u["user_id"] for u in q.find_users(conn, "202")] == ["u2"]
        assert [u["user_id"] for u in q.find_users(conn, "contoso")] == ["u1", "u2"]
        assert q.find_users(conn, "nobody") == []
        history = q.user_history(conn, "u1", q.Page())
    plan = history["plan"]["items"]
    assert [(p["action"], p["run_key"]) for p in plan] == [
        ("update", keys["dry"]), ("set_profile", keys["hourly"]), ("create", keys["full"])]
    assert plan[0]["dry_run"] and plan[1]["started_at"] is not None  # the #presence plan found its run
    assert [(w["action"], w["after"]) for w in history["writes"]["items"]] == [("set_profile", "Away"),
                                                                               ("create", "Ada")]
    assert {n["kind"] for n in history["notes"]["items"]} == {"user", "contact"}  # incl. notes on her contacts
    assert history["extension"]["number"] == "201"


def test_notes_most_severe_first_with_counts_and_filters(engine: Engine) -> None:
    keys = _seed(engine)
    with engine.connect() as conn:
        latest = q.notes(conn, q.Page())  # the latest run of each DAG
        full = q.notes(conn, q.Page(), run_key=keys["full"])
        info = q.notes(conn, q.Page(), run_key=keys["full"], severity="info")
        users = q.notes(conn, q.Page(), run_key=keys["full"], kind="user", q="UNMANAGED")
    assert len(latest["items"]) == 3 and set(latest["run_keys"]) == {keys["full"], keys["hourly"], keys["dry"]}
    assert [n["severity"] for n in full["items"]] == ["error", "warning", "info"]
    assert full["counts"] == {"error": {"user": 1}, "warning": {"user": 1}, "info": {"contact": 1}}
    assert [n["object_key"] for n in info["items"]] == ["u1/c1"]
    assert [n["object_key"] for n in users["items"]] == ["u2"]


def test_pending_plan_is_the_latest_dry_run(engine: Engine) -> None:
    keys = _seed(engine)
    with engine.connect() as conn:
        pending = q.pending_plan(conn, q.Page())
    assert pending["run"]["run_key"] == keys["dry"] and pending["superseded_by"] is None
    assert [c["fields"] for c in pending["changes"]["items"]] == [[{"field": "LastName", "before": "Lovelace",
                                                                     "after": "King"}]]


def test_changes_per_day_lists_every_day(engine: Engine) -> None:
    _seed(engine)
    with engine.connect() as conn:
        days = q.changes_per_day(conn, NOW, days=3)
    assert [d["day"] for d in days] == ["2026-11-30", "2026-12-01", "2026-12-02"]
    assert days[1] == {"day": "2026-12-01", "ok": 1, "failed": 1, "other": 0}
    assert days[2]["ok"] == 1 and days[0]["ok"] == 0


def test_page_of_untrusted_parameters() -> None:
    assert q.Page.of("x", "9999") == q.Page(1, 500) and q.Page.of("3", "0") == q.Page(3, 1)


def test_changes_per_day_counts_complete_days_once(engine: Engine) -> None:
    _seed(engine)
    cache: dict[str, dict[str, int]] = {}
    with engine.connect() as conn:
        first = q.changes_per_day(conn, NOW, days=3, cache=cache)
    assert set(cache) == {"2026-11-30", "2026-12-01"}  # today is always counted afresh
    cache["2026-12-01"] = {"ok": 99, "failed": 0, "other": 0}  # a cached day is not read again
    with engine.connect() as conn:
        second = q.changes_per_day(conn, NOW, days=3, cache=cache)
    assert second[1]["ok"] == 99 and second[2] == first[2]
    with engine.connect() as conn:
        later = q.changes_per_day(conn, NOW + dt.timedelta(days=1), days=3, cache=cache)
    assert [d["day"] for d in later] == ["2026-12-01", "2026-12-02", "2026-12-03"] and "2026-11-30" not in cache
    assert later[1]["ok"] == 1  # yesterday's count came from the database once it was complete


def test_on_demand_trace_per_user_and_per_run(engine: Engine) -> None:
    from m365_3cx.staging import trace as strace

    keys = _seed(engine)
    older = keys["full"]
    newer = keys["dry"]
    with engine.begin() as conn:
        for key, when in ((older, NOW - dt.timedelta(hours=30)), (newer, NOW - dt.timedelta(minutes=10))):
            for step in ("plan", "resolve"):  # written out of order: the console shows step order
                entries = [{"user_id": "u1", "upn": "Ada@Contoso.example", "outcome": "ok", "detail": {"n": 1}}]
                if step == "resolve" and key == newer:
                    entries.append({"user_id": None, "upn": "ghost@contoso.example", "outcome": "unknown",
                                    "detail": None})
                strace.replace_trace(conn, key, step, strace.trace_rows(key, step, entries, when))
    with engine.connect() as conn:
        by_user = q.trace(conn, q.Page(), user_id="u1")
        by_run = q.trace(conn, q.Page(), run_key=newer)
        unknown = q.trace(conn, q.Page(), upn="ghost@contoso.example")
    assert [(t["run_key"], t["step"]) for t in by_user["items"]] == [
        (newer, "resolve"), (newer, "plan"), (older, "resolve"), (older, "plan")]
    assert [(t["upn"], t["step"]) for t in by_run["items"]] == [
        ("Ada@Contoso.example", "resolve"), ("Ada@Contoso.example", "plan"), ("ghost@contoso.example", "resolve")]
    assert [t["outcome"] for t in unknown["items"]] == ["unknown"]


def test_not_live_means_no_stale_banner_but_the_last_dry_run(engine: Engine) -> None:
    """Before go-live every run is dry: the header shows the last dry run instead of a staleness alarm."""
    if "sync_control" not in q.schema.metadata.tables:
        pytest.skip("this version of the sync has no go-live switch")
    from m365_3cx.staging import control

    keys = _seed(engine)
    with engine.begin() as conn:
        conn.execute(q.schema.metadata.tables["sync_control"].delete())
    with engine.connect() as conn:
        fresh = q.health(conn, NOW, {"users": 60})  # a fresh install: no switch row, not live
    assert not fresh["writes"]["enabled"] and not fresh["features"][0]["stale"]
    with engine.begin() as conn:
        control.set_writes_enabled(conn, True, changed_by="ops", now=NOW)
    with engine.connect() as conn:
        live = q.health(conn, NOW, {"users": 60})
    users = live["features"][0]
    assert live["writes"]["enabled"] and users["stale"] and users["last_dry_run"]["run_key"] == keys["dry"]
    with engine.begin() as conn:
        control.set_writes_enabled(conn, False, changed_by="ops", now=NOW)
    with engine.connect() as conn:
        off = q.health(conn, NOW, {"users": 60})
    assert not off["writes"]["enabled"] and not off["features"][0]["stale"]


def test_scope_explanation_and_protected_users(engine: Engine) -> None:
    from m365_3cx.console import pages
    from m365_3cx.staging.schema import tgt_extensions
    from m365_3cx.transform.scope import ProtectionParams, ScopeParams

    _seed(engine)
    with engine.begin() as conn:
        upsert(conn, stg_users, [
            {"user_id": "u3", "user_principal_name": "cleo@contoso.example", "display_name": "Cleo", "row_hash": "h",
             "first_seen_at": NOW, "updated_at": NOW, "in_scope": False, "scope_miss": "group", "deleted": False,
             "account_enabled": False, "extension_attributes": {"extensionAttribute5": "no-3cx-sync"}}], ["user_id"])
        upsert(conn, tgt_extensions, [
            {"user_id": "u1", "number": "201", "state": "active", "removal_reason": None, "protection": None},
            {"user_id": "u3", "number": None, "state": "removed", "removal_reason": "out_of_scope",
             "protection": "opted_out"}], ["user_id"])
    params = ScopeParams(group_id="g-phones", protection=ProtectionParams(opt_out_attribute="extensionAttribute5"))
    ctx = pages.Context(now=NOW, scope=params)
    with engine.connect() as conn:
        cleo = q.user_scope(conn, "u3", params)
        ada = pages.build("users", conn, {"id": "u1"}, ctx)
        listing = pages.build("users", conn, {}, ctx)
        assert q.user_scope(conn, "nobody", params) is None
    assert cleo is not None and cleo["verdict"] == "protected" and cleo["protection"] == "opted_out"
    assert [r["code"] for r in cleo["reasons"]] == ["not_in_group", "disabled", "opted_out", "no_mail"]
    assert "g-phones" in cleo["reasons"][0]["message"]
    assert ada["history"]["scope"]["verdict"] == "in_scope" and ada["protected"] is None
    assert ada["history"]["scope"]["desired_state"] == "active"
    assert [(u["upn"], u["protection"]) for u in listing["protected"]["items"]] == [
        ("cleo@contoso.example", "opted_out")]
