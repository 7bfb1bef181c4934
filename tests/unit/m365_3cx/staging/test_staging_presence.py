"""Presence staging on SQLite and PostgreSQL: managed users, per-user calendar rounds, state, targets."""

from __future__ import annotations

import datetime as dt

import pytest
from sqlalchemy import Engine, select

from m365_3cx.graph.calendar import AutoRepliesSetting, CalendarEvent, UserCalendar
from m365_3cx.staging import presence as stage
from m365_3cx.staging.bulk import upsert
from m365_3cx.staging.numbers import assign_numbers
from m365_3cx.staging.schema import stg_events, stg_users, tgt_extensions
from m365_3cx.staging.users import user_row_from_graph

NOW = dt.datetime(2026, 3, 29, 10, tzinfo=dt.UTC)


def _user(uid: str, mail: str | None, *, in_scope: bool = True, deleted: bool = False) -> dict[str, object]:
    row = user_row_from_graph({"id": uid, "userPrincipalName": f"{uid}@x.test", "mail": mail})
    return row | {"in_scope": in_scope, "deleted": deleted}


@pytest.fixture
def seeded(engine: Engine) -> Engine:
    users = [_user("u1", "u1@x.test"), _user("u2", "u2@x.test"), _user("u3", None), _user("u4", "u4@x.test",
                                                                                         in_scope=False),
             _user("u5", "u5@x.test", deleted=True), _user("u6", "u6@x.test")]
    with engine.begin() as conn:
        for row in users:
            upsert(conn, stg_users, [{**row, "first_seen_at": NOW, "updated_at": NOW}], ["user_id"])
        assign_numbers(conn, [{"user_id": f"u{i}", "number": f"10{i}", "threecx_id": i} for i in range(1, 6)],
                       NOW)
        assign_numbers(conn, [{"user_id": "u6", "number": "106"}], NOW)  # no 3CX id yet
    return engine


def _event(event_id: str, hour: int) -> CalendarEvent:
    start = NOW.replace(hour=hour)
    return CalendarEvent(event_id, start, start + dt.timedelta(hours=1), False, None, "busy", False, "normal",
                         "singleInstance", None, "ck")


def test_presence_users_are_in_scope_live_with_mail_and_a_3cx_extension(seeded: Engine) -> None:
    with seeded.connect() as conn:
        users = stage.presence_users(conn)
        assert [(u.user_id, u.threecx_id, u.number) for u in users] == [("u1", 1, "101"), ("u2", 2, "102")]
        assert [u.user_id for u in stage.presence_users(conn, first="u2", last="u9")] == ["u2"]


def test_protected_users_get_no_status(seeded: Engine) -> None:
    """A protected or opted-out user's extension is never changed by the sync, its status included."""
    with seeded.begin() as conn:
        upsert(conn, tgt_extensions, [{"user_id": "u1", "number": "101", "state": "active",
                                       "protection": "protected_upn"},
                                           {"user_id": "u2", "number": "102", "state": "active", "protection": None}],
                    ["user_id"])
    with seeded.connect() as conn:
        assert [u.user_id for u in stage.presence_users(conn)] == ["u2"]


def test_complete_round_replaces_the_users_events_and_delta_removes(seeded: Engine) -> None:
    with seeded.begin() as conn:
        stage.stage_user_calendar(conn, UserCalendar("u1", events=(_event("a", 9), _event("b", 11)), complete=True),
                                  "r1", NOW)
        stage.stage_user_calendar(conn, UserCalendar("u2", events=(_event("x", 9),), complete=True), "r1", NOW)
    later = NOW + dt.timedelta(minutes=5)
    with seeded.begin() as conn:
        counts = stage.stage_user_calendar(conn, UserCalendar("u1", events=(_event("c", 12),), complete=True), "r2",
                                           later)
    assert counts == stage.StagedCounts(upserted=1, deleted=2)
    with seeded.begin() as conn:
        stage.stage_user_calendar(conn, UserCalendar("u2", removed=("x",)), "r3", later)
    with seeded.connect() as conn:
        live = stage.load_events(conn)
        assert {uid: [r["event_id"] for r in rows] for uid, rows in live.items()} == {"u1": ["c"]}
        first_seen = conn.execute(select(stg_events.c.first_seen_at).where(stg_events.c.event_id == "a")).scalar()
        assert first_seen == NOW


def test_subjects_are_not_written_unless_present_on_the_record(seeded: Engine) -> None:
    with seeded.begin() as conn:
        stage.stage_user_calendar(conn, UserCalendar("u1", events=(_event("a", 9),), complete=True), "r1", NOW)
        assert conn.execute(select(stg_events.c.subject)).scalar() is None


def test_auto_replies_and_mailbox_flag(seeded: Engine) -> None:
    replies = AutoRepliesSetting("scheduled", NOW, NOW + dt.timedelta(days=1))
    with seeded.begin() as conn:
        stage.stage_user_calendar(conn, UserCalendar("u1", auto_replies=replies, complete=True), "r1", NOW)
        stage.stage_user_calendar(conn, UserCalendar("u2", mailbox=False), "r1", NOW)
    with seeded.connect() as conn:
        rows = stage.load_auto_replies(conn)
        assert (rows["u1"]["status"], rows["u1"]["scheduled_start"], rows["u1"]["mailbox"]) == ("scheduled", NOW, True)
        assert rows["u2"]["mailbox"] is False
        assert [u.user_id for u in stage.presence_users(conn, with_mailbox_only=True)] == ["u1"]
    with seeded.begin() as conn:  # the mailbox appeared (licence assigned)
        stage.stage_user_calendar(conn, UserCalendar("u2", complete=True), "r2", NOW)
    with seeded.connect() as conn:
        assert stage.load_auto_replies(conn)["u2"]["mailbox"] is True


def test_state_and_targets_round_trip(seeded: Engine) -> None:
    with seeded.begin() as conn:
        stage.save_state(conn, "u1", 1, "Away", "set", "r1", NOW)
        stage.save_state(conn, "u1", 1, "Available", "baseline", "r2", NOW)
        stage.save_targets(conn, [{"user_id": "u1", "threecx_id": 1, "profile": "Away", "reason": "busy",
                                   "next_switch_at": NOW + dt.timedelta(hours=1)}], "r2", NOW)
    with seeded.connect() as conn:
        state = stage.load_state(conn)["u1"]
        assert (state["profile"], state["via"], state["run_key"]) == ("Available", "baseline", "r2")
        target = stage.load_targets(conn)["u1"]
        assert target["next_switch_at"] == NOW + dt.timedelta(hours=1)
    with seeded.begin() as conn, pytest.raises(ValueError, match="via"):
        stage.save_state(conn, "u1", 1, "Away", "manual", "r3", NOW)


def test_purge_drops_old_and_long_deleted_events(seeded: Engine) -> None:
    with seeded.begin() as conn:
        stage.stage_user_calendar(conn, UserCalendar("u1", events=(_event("a", 1), _event("b", 20)), complete=True),
                                  "r1", NOW - dt.timedelta(days=5))
        assert stage.purge_events(conn, NOW + dt.timedelta(days=2)) == 2


def test_only_changes_are_written_and_counted_as_changed_inputs(seeded: Engine) -> None:
    replies = AutoRepliesSetting("disabled", None, None)
    first = [UserCalendar("u1", events=(_event("a", 9), _event("b", 11)), complete=True, auto_replies=replies),
             UserCalendar("u2", events=(_event("x", 9),), complete=True, auto_replies=replies),
             UserCalendar("u3", mailbox=False)]
    with seeded.begin() as conn:
        stage.stage_calendars(conn, first, "r1", NOW)
        assert stage.load_input_versions(conn) == {"u1": 1, "u2": 1, "u3": 1}
    later = NOW + dt.timedelta(hours=1)
    with seeded.begin() as conn:  # the same window again (an hourly run): nothing rewritten, nothing changed
        counts = stage.stage_calendars(conn, first, "r2", later)
        assert stage.load_input_versions(conn) == {"u1": 1, "u2": 1, "u3": 1}
        assert counts["u1"] == stage.StagedCounts(upserted=2)
        assert set(conn.execute(select(stg_events.c.last_run_key)).scalars()) == {"r1"}
    moved = CalendarEvent("x", NOW, NOW + dt.timedelta(hours=3), False, None, "busy", False, "normal",
                          "singleInstance", None, "ck2")
    with seeded.begin() as conn:  # u1 switches replies on, u2's event moves, u3 gets a mailbox
        stage.stage_calendars(conn, [UserCalendar("u1", auto_replies=AutoRepliesSetting("alwaysEnabled", None, None)),
                                     UserCalendar("u2", events=(moved,)), UserCalendar("u3")], "r3", later)
        assert stage.load_input_versions(conn) == {"u1": 2, "u2": 2, "u3": 2}
    with seeded.begin() as conn:  # delta rounds removing one event, and an unknown one
        counts = stage.stage_calendars(conn, [UserCalendar("u1", removed=("a",)), UserCalendar("u2", removed=("zz",))],
                                       "r4", later)
        assert stage.load_input_versions(conn) == {"u1": 3, "u2": 2, "u3": 2}
        assert (counts["u1"].deleted, counts["u2"].deleted) == (1, 0)


def test_teams_presence_counts_as_changed_when_new_different_stale_or_dropped(seeded: Engine) -> None:
    def poll(rows: list[tuple[str, str]], at: dt.datetime) -> dict[str, int]:
        with seeded.begin() as conn:
            stage.save_teams_presence(conn, [{"user_id": u, "availability": a, "activity": a} for u, a in rows],
                                      "poll", at, polled=["u1", "u2", "u3"], stale_before=at - dt.timedelta(minutes=15))
            return stage.load_input_versions(conn)

    assert poll([("u1", "Busy"), ("u2", "Away")], NOW) == {"u1": 1, "u2": 1}
    assert poll([("u1", "Busy"), ("u2", "Away")], NOW + dt.timedelta(minutes=5)) == {"u1": 1, "u2": 1}
    assert poll([("u1", "Busy"), ("u3", "Away")], NOW + dt.timedelta(minutes=10)) == {"u1": 1, "u2": 2, "u3": 1}
    assert poll([("u1", "Busy"), ("u3", "Away")], NOW + dt.timedelta(minutes=40)) == {"u1": 2, "u2": 2, "u3": 2}
