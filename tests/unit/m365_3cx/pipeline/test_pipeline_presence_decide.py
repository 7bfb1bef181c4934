"""Incremental presence decisions (delta runs) equal deciding every user, on SQLite and PostgreSQL.

Random calendars (timed, all-day in several zones, cancelled, every ``showAs``), automatic
replies (off, always, scheduled) and Teams presence are staged through the real staging
functions; then random steps move the clock (seconds to hours, so events start and end and
scheduled replies begin and stop) and change random users: events added, moved, re-categorised
and removed (delta rounds), whole windows refreshed (hourly rounds), replies toggled, Teams
presence changed, dropped or not polled at all for a while (so it ages out). At every step the
incremental decisions, their ``next_switch_at`` and the plan must be exactly what deciding every
user gives, and re-deciding at the same instant with nothing changed must decide nobody.
"""

from __future__ import annotations

import datetime as dt
import random
from typing import Any

import pytest
from sqlalchemy import Engine

from m365_3cx.graph.calendar import AutoRepliesSetting, CalendarEvent, UserCalendar
from m365_3cx.pipeline.presence_decide import Decisions, decide_users, store_decisions
from m365_3cx.reconcile.presence import plan_switches
from m365_3cx.settings import Settings
from m365_3cx.staging import presence as stage
from m365_3cx.staging.presence import PresenceUser

T0 = dt.datetime(2026, 3, 28, 22, 0, tzinfo=dt.UTC)  # DST starts in Europe the next night
MAPPING = {"busy": "Away", "oof": "Away", "workingElsewhere": "Custom 2", "tentative": "Custom 1",
           "automatic_replies": "Out of office", "default": "Available"}
SHOW_AS = ["busy", "oof", "workingElsewhere", "tentative", "free", "unknown", "Busy"]
ZONES = [None, "Europe/Berlin", "America/New_York", "Asia/Kolkata"]
TEAMS = [("Busy", "InACall"), ("Available", "Available"), ("DoNotDisturb", "Presenting"), ("Away", "Away"),
         ("Offline", "OffWork"), ("BeRightBack", None)]
STEPS = [dt.timedelta(seconds=30), dt.timedelta(minutes=5), dt.timedelta(minutes=17), dt.timedelta(hours=1),
         dt.timedelta(hours=3), dt.timedelta(hours=9)]


def _settings(**teams: Any) -> Settings:
    return Settings.from_mapping({"presence": {"enabled": True, "mapping": MAPPING, "teams": {
        "enabled": True, "max_age_minutes": 15, **teams}}})


def _event(rng: random.Random, event_id: str, now: dt.datetime) -> CalendarEvent:
    if rng.random() < 0.2:
        day = dt.datetime.combine((now + dt.timedelta(days=rng.randint(-1, 2))).date(), dt.time(0), tzinfo=dt.UTC)
        return CalendarEvent(event_id, day, day + dt.timedelta(days=rng.randint(1, 2)), True, rng.choice(ZONES),
                             rng.choice(SHOW_AS), rng.random() < 0.1, "normal", "singleInstance", None, "ck")
    start = now + dt.timedelta(minutes=rng.randint(-600, 1800))
    return CalendarEvent(event_id, start, start + dt.timedelta(minutes=rng.choice([15, 30, 60, 150, 300])), False,
                         None, rng.choice(SHOW_AS), rng.random() < 0.1, "normal", "singleInstance", None, "ck")


def _replies(rng: random.Random, now: dt.datetime) -> AutoRepliesSetting:
    kind = rng.choice(["disabled", "disabled", "alwaysEnabled", "scheduled"])
    if kind != "scheduled":
        return AutoRepliesSetting(kind, None, None)
    start = now + dt.timedelta(minutes=rng.randint(-300, 900))
    return AutoRepliesSetting(kind, start, start + dt.timedelta(minutes=rng.randint(30, 900)))


def _poll(engine: Engine, rng: random.Random, teams: dict[str, tuple[str, str | None]], uids: list[str],
          now: dt.datetime) -> None:
    rows = [{"user_id": uid, "availability": a, "activity": b} for uid, (a, b) in teams.items()]
    with engine.begin() as conn:
        stage.save_teams_presence(conn, rows, "poll", now, polled=uids, stale_before=now - dt.timedelta(minutes=15))


def _signature(decisions: Decisions) -> dict[str, tuple[Any, ...]]:
    """Every user's decision (fresh or kept): profile, reason, next switch."""
    fresh = {t["user_id"]: (t["profile"], t["reason"], t["next_switch_at"]) for t in decisions.targets}
    kept = {uid: (row["profile"], row["reason"], row["next_switch_at"]) for uid, row in decisions.kept.items()}
    assert not fresh.keys() & kept.keys()
    return fresh | kept


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_incremental_decisions_and_plan_equal_deciding_everyone(engine: Engine, seed: int) -> None:
    rng = random.Random(seed)
    settings = _settings()
    users = [PresenceUser(f"u{i:02d}", i, f"1{i:02d}") for i in range(24)]
    uids = [u.user_id for u in users]
    calendars: dict[str, dict[str, CalendarEvent]] = {}
    now = T0
    serial = 0
    rounds = []
    for uid in uids:
        events = {}
        for _ in range(rng.randint(0, 6)):
            serial += 1
            events[f"e{serial}"] = _event(rng, f"e{serial}", now)
        calendars[uid] = events
        rounds.append(UserCalendar(uid, events=tuple(events.values()), complete=True, auto_replies=_replies(rng, now)))
    teams = {uid: rng.choice(TEAMS) for uid in uids if rng.random() < 0.5}
    with engine.begin() as conn:
        stage.stage_calendars(conn, rounds, "r0", now)
    _poll(engine, rng, teams, uids, now)
    last_poll = now
    first = decide_users(engine, settings, users, now, incremental=True)  # nothing stored yet: everyone
    assert first.scope == "full" and len(first.targets) == len(users)
    with engine.begin() as conn:
        store_decisions(conn, first, "r0", now, all_users=True)
    fresh_total = 0
    for step in range(14):
        now += rng.choice(STEPS)
        changed = rng.sample(uids, rng.randint(0, 4))
        rounds = []
        for uid in changed:
            events = calendars[uid]
            kind = rng.choice(["add", "move", "remove", "replies", "hourly", "teams"])
            if kind == "add":
                serial += 1
                events[f"e{serial}"] = _event(rng, f"e{serial}", now)
                rounds.append(UserCalendar(uid, events=(events[f"e{serial}"],)))
            elif kind == "move" and events:
                eid = rng.choice(sorted(events))
                events[eid] = _event(rng, eid, now)
                rounds.append(UserCalendar(uid, events=(events[eid],)))
            elif kind == "remove" and events:
                eid = rng.choice(sorted(events))
                del events[eid]
                rounds.append(UserCalendar(uid, removed=(eid,)))
            elif kind == "replies":
                rounds.append(UserCalendar(uid, auto_replies=_replies(rng, now)))
            elif kind == "hourly":
                rounds.append(UserCalendar(uid, events=tuple(events.values()), complete=True))
            elif kind == "teams":
                if uid in teams and rng.random() < 0.3:
                    del teams[uid]
                else:
                    teams[uid] = rng.choice(TEAMS)
        if step == 7:  # a user managed from now on: never decided
            users.append(PresenceUser("u99", 99, "199"))
            uids.append("u99")
            calendars["u99"] = {}
        with engine.begin() as conn:
            stage.stage_calendars(conn, rounds, f"r{step + 1}", now)
            stored = stage.load_targets(conn)
        # who may be decided afresh: changed, due, new, and users whose Teams presence (re)gained or lost force
        allowed = set(changed) | {"u99"} | {uid for uid, row in stored.items()
                                            if row["recheck_at"] is not None and row["recheck_at"] <= now}
        if step % 5 != 4:  # sometimes no poll for hours: Teams presence ages out
            if now - last_poll > dt.timedelta(minutes=15):
                allowed |= set(teams) | {uid for uid, row in stored.items() if row["reason"].startswith("teams:")}
            _poll(engine, rng, teams, uids, now)
            last_poll = now
        else:
            allowed |= {uid for uid, row in stored.items() if row["reason"].startswith("teams:")}
        incremental = decide_users(engine, settings, users, now, incremental=True)
        everyone = decide_users(engine, settings, users, now, incremental=False)
        assert incremental.scope == "incremental" and everyone.scope == "full"
        assert incremental.desired == everyone.desired
        assert incremental.reasons == everyone.reasons
        assert _signature(incremental) == _signature(everyone)
        current = {u.threecx_id: rng.choice(["Available", "Away", "Custom 1", "Out of office", None])
                   for u in users}
        last_set = {u.user_id: rng.choice(["Available", "Away", "Custom 2"]) for u in users if rng.random() < 0.7}
        for mode in ("respect", "override"):
            assert (plan_switches(incremental.desired, current, last_set, "Available", mode)
                    == plan_switches(everyone.desired, current, last_set, "Available", mode))
        fresh = {t["user_id"] for t in incremental.targets}
        assert fresh <= allowed, sorted(fresh - allowed)
        fresh_total += len(fresh)
        with engine.begin() as conn:
            store_decisions(conn, incremental, f"r{step + 1}", now, all_users=True)
        again = decide_users(engine, settings, users, now, incremental=True)
        assert again.targets == [] and again.desired == everyone.desired  # nothing changed, nothing due
    assert 0 < fresh_total < 14 * len(users)


def test_changed_settings_or_an_on_demand_run_decide_again(engine: Engine) -> None:
    users = [PresenceUser("u1", 1, "101"), PresenceUser("u2", 2, "102")]
    start = T0 + dt.timedelta(hours=1)
    busy = CalendarEvent("e1", start, start + dt.timedelta(hours=1), False, None, "busy", False, "normal",
                         "singleInstance", None, "ck")
    with engine.begin() as conn:
        stage.stage_calendars(conn, [UserCalendar("u1", events=(busy,), complete=True),
                                     UserCalendar("u2", complete=True)], "r0", T0)
    everyone = decide_users(engine, _settings(), users, T0, incremental=False)
    with engine.begin() as conn:
        store_decisions(conn, everyone, "r0", T0, all_users=True)
    assert decide_users(engine, _settings(), users, T0, incremental=True).targets == []
    other = _settings(max_age_minutes=30)
    on_demand = decide_users(engine, other, users[:1], T0, incremental=False)
    with engine.begin() as conn:  # an on-demand run under other settings: its user is decided again later
        store_decisions(conn, on_demand, "od", T0, all_users=False)
    assert [t["user_id"] for t in decide_users(engine, _settings(), users, T0, incremental=True).targets] == ["u1"]
    changed = decide_users(engine, other, users, T0, incremental=True)
    assert changed.scope == "full" and len(changed.targets) == 2
    later = start + dt.timedelta(minutes=1)  # u1's meeting began: due
    due = decide_users(engine, _settings(), users, later, incremental=True)
    assert {t["user_id"]: t["profile"] for t in due.targets} == {"u1": "Away"}
