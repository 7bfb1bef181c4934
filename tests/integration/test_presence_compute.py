"""compute_presence against the 3CX emulator over HTTPS, PostgreSQL staging: a delta reads only what it needs.

Managed users come from the Graph emulator (the users extract), each gets a real 3CX user, and
more 3CX users than one page pad the PBX. A delta run (``incremental``) with no change reads no
``CurrentProfileName`` at all; with a few changed calendars it reads just those users by id. At every
step of a random sequence of calendar changes, skipped applies (the sync's state lags behind
its plan) and hand edits of changed users, the delta plans exactly what a whole read would give.
A status changed by hand in 3CX for a user with no calendar change is left to the hourly run.
"""

from __future__ import annotations

import datetime as dt
import math
import random
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from m365_3cx.graph.auth import GraphCredentials
from m365_3cx.graph.calendar import CalendarEvent, UserCalendar
from m365_3cx.graph.client import GraphClient
from m365_3cx.http import RetryPolicy
from m365_3cx.pipeline import presence as pipeline
from m365_3cx.pipeline.users import extract_users
from m365_3cx.reconcile.presence import DesiredProfile, PresencePlan, plan_switches
from m365_3cx.settings import Settings
from m365_3cx.staging import presence as stage
from m365_3cx.staging.control import set_writes_enabled
from m365_3cx.staging.db import make_engine
from m365_3cx.staging.numbers import assign_numbers
from m365_3cx.staging.runs import load_plan
from m365_3cx.staging.schema import create_schema
from m365_3cx.threecx.client import ThreeCXClient, ThreeCXCredentials, clear_token_cache

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

FAST = RetryPolicy(max_attempts=4, backoff_base=0.01, backoff_cap=0.05, max_total_wait=10, connect_timeout=5,
                   read_timeout=30)
MAPPING = {"busy": "Away", "oof": "Out of office", "tentative": "Custom 1", "default": "Available"}
PADDING = 150
"""3CX users beyond the managed ones: the whole read takes more than one page."""
T0 = dt.datetime(2026, 5, 4, 9, 0, tzinfo=dt.UTC)
USERS_READ = "GET /xapi/v1/Users"


def _settings(mode: str) -> Settings:
    return Settings.from_mapping({"presence": {"enabled": True, "mode": mode, "mapping": MAPPING}})


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
    extract_users(engine, graph, _settings("respect"), "seed/users", "full", T0)
    with engine.connect() as conn:
        mails = [uid for (uid,) in conn.execute(
            sa.text("SELECT user_id FROM stg_users WHERE mail IS NOT NULL ORDER BY user_id"))]
    rows = []
    for i, uid in enumerate(mails):  # every user with mail gets a real 3CX extension (as the users slice would)
        created = threecx_emulator.admin("POST", "users", json={
            "Number": str(500 + i), "FirstName": f"Managed{i}", "LastName": "User",
            "EmailAddress": f"managed{i}@contoso.example"}).json()
        rows.append({"user_id": uid, "number": str(500 + i), "threecx_id": int(created["Id"])})
    for i in range(PADDING):
        threecx_emulator.admin("POST", "users", json={"Number": str(3000 + i), "FirstName": f"Pad{i}",
                                                      "LastName": "User"})
    with engine.begin() as conn:
        assign_numbers(conn, rows, T0)
        set_writes_enabled(conn, True, changed_by="tests/integration", now=T0)
    yield {"engine": engine, "pbx": pbx, "p": threecx_emulator, "users": rows}
    graph.close()
    pbx.close()
    engine.dispose()


def _event(event_id: str, show_as: str, start: dt.datetime, minutes: int) -> CalendarEvent:
    return CalendarEvent(event_id, start, start + dt.timedelta(minutes=minutes), False, None, show_as, False,
                         "normal", "singleInstance", None, "ck")


def _stage(env: dict[str, Any], calendars: list[UserCalendar], run_key: str, now: dt.datetime) -> None:
    with env["engine"].begin() as conn:
        stage.stage_calendars(conn, calendars, run_key, now)


def _users_reads(env: dict[str, Any]) -> int:
    return int(env["p"].admin("GET", "counters").json()["requests"].get(USERS_READ, 0))


def _run(env: dict[str, Any], settings: Settings, run_key: str, now: dt.datetime, *, incremental: bool,
         apply: bool = True) -> dict[str, Any]:
    counts = pipeline.compute_presence(env["engine"], env["pbx"], settings, run_key, now, incremental=incremental)
    if apply:
        pipeline.apply_presence(env["engine"], env["pbx"], settings, run_key, now, dry_run=False)
    return counts


def _whole_read_plan(env: dict[str, Any], settings: Settings, last_set: dict[str, str]) -> PresencePlan:
    """The plan a whole read of every user's ``CurrentProfileName`` gives for the stored decisions."""
    with env["engine"].connect() as conn:
        users = {u.user_id: u for u in stage.presence_users(conn)}
        targets = stage.load_targets(conn)
    desired = [DesiredProfile(uid, users[uid].threecx_id, users[uid].number, str(row["profile"]), str(row["reason"]))
               for uid, row in targets.items() if uid in users]
    current = {int(u["Id"]): u.get("CurrentProfileName") for page in env["pbx"].list_user_profiles() for u in page}
    return plan_switches(desired, current, last_set, MAPPING["default"], settings.presence.mode)


def _last_set(env: dict[str, Any]) -> dict[str, str]:
    with env["engine"].connect() as conn:
        return {uid: row["profile"] for uid, row in stage.load_state(conn).items()}


def test_a_delta_with_no_change_reads_no_profiles_and_a_few_changes_read_just_theirs(env: dict[str, Any]) -> None:
    settings = _settings("respect")
    users = env["users"]
    busy = [UserCalendar(u["user_id"], events=(_event(f"b{i}", "busy", T0 - dt.timedelta(minutes=5), 60),),
                         complete=True) if i % 3 == 0 else UserCalendar(u["user_id"], complete=True)
            for i, u in enumerate(users)]
    _stage(env, busy, "r0", T0)
    full = _run(env, settings, "full/1", T0, incremental=False)
    assert full["switch"] == len(users[::3]) and full["decided"] == len(users)
    pages = math.ceil((len(users) + PADDING + 4) / 100)  # with the seeded unmanaged extensions
    assert pages >= 2

    env["p"].admin("DELETE", "counters")
    quiet = _run(env, settings, "delta/1", T0 + dt.timedelta(seconds=30), incremental=True)
    assert quiet["decided"] == 0 and quiet["switch"] == 0 and quiet["unchanged"] == len(users)
    assert _users_reads(env) == 1  # the profile names (one user, $top=1); no CurrentProfileName read at all

    changed = [u for i, u in enumerate(users) if i % 3][:5]  # not busy: tentative wins
    start = T0 + dt.timedelta(seconds=40)
    _stage(env, [UserCalendar(u["user_id"], events=(_event(f"t{i}", "tentative", start, 30),))
                 for i, u in enumerate(changed)], "r1", start)
    env["p"].admin("DELETE", "counters")
    few = _run(env, settings, "delta/2", start + dt.timedelta(seconds=5), incremental=True)
    assert few["decided"] == len(changed) and few["switch"] == len(changed)
    assert few["unchanged"] == len(users) - len(changed)
    assert _users_reads(env) == 1 + math.ceil(len(changed) / 40)

    env["p"].admin("DELETE", "counters")
    hourly = _run(env, settings, "hourly/1", start + dt.timedelta(seconds=10), incremental=False)
    assert hourly["switch"] == 0 and _users_reads(env) == 1 + pages  # the hourly run keeps the whole read


@pytest.mark.parametrize(("mode", "seed", "hand_edits"), [
    ("respect", 1, False), ("override", 2, False), ("override", 3, True), ("respect", 4, True)])
def test_a_delta_plans_what_a_whole_read_plans(env: dict[str, Any], mode: str, seed: int, hand_edits: bool) -> None:
    rng = random.Random(seed)
    settings = _settings(mode)
    users = env["users"]
    now = T0
    _stage(env, [UserCalendar(u["user_id"], complete=True) for u in users], "r0", now)
    _run(env, settings, "full/1", now, incremental=False)
    serial = 0
    compared = 0
    for step in range(10):
        now += rng.choice([dt.timedelta(seconds=30), dt.timedelta(minutes=7), dt.timedelta(minutes=40)])
        changed = rng.sample(users, rng.randint(0, 6))
        rounds = []
        for user in changed:
            serial += 1
            start = now + dt.timedelta(minutes=rng.randint(-20, 20))
            event = _event(f"e{serial}", rng.choice(["busy", "oof", "tentative", "free"]), start,
                           rng.choice([5, 30, 90]))
            rounds.append(UserCalendar(user["user_id"], events=(event,)))
            if hand_edits and rng.random() < 0.3:  # someone set this changed user's status by hand: read
                env["p"].admin("PATCH", f"users/{user['threecx_id']}",
                               json={"CurrentProfileName": rng.choice(["Custom 2", "Available", "Away"])})
        _stage(env, rounds, f"r{step + 1}", now)
        last_set = _last_set(env)
        run_key = f"delta/{step}"
        env["p"].admin("DELETE", "counters")
        counts = _run(env, settings, run_key, now, incremental=True, apply=False)
        reads = _users_reads(env)
        expected = _whole_read_plan(env, settings, last_set)  # before the apply changes 3CX
        if rng.random() < 0.7:  # else the sync's state lags behind its plan
            pipeline.apply_presence(env["engine"], env["pbx"], settings, run_key, now, dry_run=False)
        with env["engine"].connect() as conn:
            planned = [(r["object_key"], r["threecx_id"], r["changes"]["CurrentProfileName"])
                       for r in load_plan(conn, pipeline.presence_plan_key(run_key))]
        assert planned == [(s.user_id, s.threecx_id, [s.before, s.after]) for s in expected.switches]
        assert counts["baseline"] == len(expected.baselines)
        if mode == "override" or not hand_edits:
            assert (counts["switch"], counts["unchanged"], counts["respected"]) == (
                len(expected.switches), expected.unchanged, len(expected.respected))
        else:  # a status chosen by hand earlier and left alone counts as respected only where it is read
            assert counts["respected"] <= len(expected.respected)
            assert counts["unchanged"] + counts["respected"] == expected.unchanged + len(expected.respected)
        compared += len(expected.switches)
        assert reads < 1 + math.ceil((len(users) + PADDING) / 100)  # never the whole read
    assert compared > 0


def test_a_hand_change_without_a_calendar_change_is_left_to_the_hourly_run(env: dict[str, Any]) -> None:
    settings = _settings("override")
    users = env["users"]
    _stage(env, [UserCalendar(u["user_id"], complete=True) for u in users], "r0", T0)
    _run(env, settings, "full/1", T0, incremental=False)
    hand = users[3]
    env["p"].admin("PATCH", f"users/{hand['threecx_id']}", json={"CurrentProfileName": "Custom 2"})
    delta = _run(env, settings, "delta/1", T0 + dt.timedelta(minutes=1), incremental=True)
    assert (delta["switch"], delta["respected"]) == (0, 0)
    hourly = _run(env, settings, "hourly/1", T0 + dt.timedelta(minutes=2), incremental=False)
    assert hourly["switch"] == 1
    assert env["p"].backend.get_user(hand["threecx_id"])["CurrentProfileName"] == "Available"
