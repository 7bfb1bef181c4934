"""Calendar-driven 3CX status end to end: real Airflow (``dag.test()``), both emulators over HTTPS,
staging in a throwaway PostgreSQL database.

After a full sync gave every user an extension: a meeting now switches its user to "Away",
automatic replies to "Out of office", and both go back to "Available" when the meeting is gone /
the replies are off; a status chosen by hand ("Custom 1") is respected; a run at a meeting's start
switches within the same run; a second run right after writes nothing; a backfilled run applies
only what is due at the real current time; dry runs write nothing. Teams presence is polled in
every run (``presence.teams``; the emulator's default ``Offline`` maps to "no change", so the
calendar tests see no difference) and, where set, decides between automatic replies and the calendar.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

import pendulum
import pytest
import sqlalchemy as sa
from dag_helpers import assert_success, load_dag

pytestmark = [pytest.mark.dag, pytest.mark.postgres, pytest.mark.integration]

SETTINGS = {
    "numbering": {"policy": "attribute", "attribute": "extensionAttribute1", "fallback_to_pool": True,
                  "pool_first": "300", "pool_last": "399"},
    "extensions": {"removal_policy": "disable", "default_region": "US"},
    "presence": {"enabled": True, "mode": "respect", "shard_size": 15,
                 "teams": {"enabled": True, "mapping": {"InACall": "Custom 1"}}},
}


@pytest.fixture
def env(dag_env: dict[str, Any]) -> dict[str, Any]:
    """Quiet calendars (no seeded event or automatic reply may switch anyone), users have extensions."""
    graph = dag_env["graph"]
    for user in _mailbox_users(dag_env):
        for event in graph.admin("GET", f"users/{user['id']}/mailbox").json()["events"]:
            graph.admin("DELETE", f"users/{user['id']}/events/{event['id']}")
        graph.admin("PUT", f"users/{user['id']}/automaticReplies", json={"status": "disabled"})
    assert_success(run_dag("m365_3cx_full_sync"))
    return dag_env


def run_dag(dag_id: str, logical_date: dt.datetime | None = None, **conf: Any) -> Any:
    kwargs: dict[str, Any] = {"run_conf": conf or None}
    if logical_date is not None:
        kwargs["logical_date"] = pendulum.instance(logical_date)
    return load_dag(dag_id).test(**kwargs)


def _mailbox_users(env: dict[str, Any]) -> list[dict[str, Any]]:
    return [u for u in env["graph"].admin("GET", "state").json()["users"]
            if u.get("mail") and u.get("userType", "Member") == "Member" and not u.get("deleted")
            and u.get("accountEnabled")]


def _extension(env: dict[str, Any], user: dict[str, Any]) -> dict[str, Any]:
    users = env["pbx"].admin("GET", "state").json()["users"]
    return next(u for u in users if u.get("EmailAddress") == user["mail"].lower())


def profile(env: dict[str, Any], user: dict[str, Any]) -> str:
    return str(_extension(env, user)["CurrentProfileName"])


def pbx_writes(env: dict[str, Any]) -> int:
    return int(env["pbx"].admin("GET", "counters").json()["writes"])


def _graph_time(instant: dt.datetime) -> dict[str, str]:
    return {"dateTime": instant.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"}


def meeting(env: dict[str, Any], user: dict[str, Any], start: dt.datetime, minutes: int,
            show_as: str = "busy") -> str:
    body = {"subject": "Private: salary review", "start": _graph_time(start),
            "end": _graph_time(start + dt.timedelta(minutes=minutes)), "showAs": show_as}
    response = env["graph"].admin("POST", f"users/{user['id']}/events", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def presence_audit(env: dict[str, Any]) -> list[dict[str, Any]]:
    with env["engine"].connect() as conn:
        rows = conn.execute(sa.text(
            "SELECT run_key, object_key, before, after, result FROM sync_audit WHERE object_type = 'presence' "
            "ORDER BY id")).mappings().all()
    return [dict(r) for r in rows]


def test_meeting_and_automatic_replies_switch_status_and_switch_back(env: dict[str, Any]) -> None:
    busy, away, manual = _mailbox_users(env)[:3]
    now = dt.datetime.now(dt.UTC)
    event_id = meeting(env, busy, now - dt.timedelta(minutes=5), 60)
    env["graph"].admin("PUT", f"users/{away['id']}/automaticReplies", json={"status": "alwaysEnabled"})
    env["pbx"].admin("PATCH", f"users/{_extension(env, manual)['Id']}", json={"CurrentProfileName": "Custom 1"})
    meeting(env, manual, now - dt.timedelta(minutes=5), 60)

    assert_success(run_dag("m365_3cx_hourly"))
    assert profile(env, busy) == "Away"
    assert profile(env, away) == "Out of office"
    assert profile(env, manual) == "Custom 1"  # chosen by hand: respected, not switched to busy
    audit = presence_audit(env)
    assert {(a["object_key"], a["before"], a["after"], a["result"]) for a in audit} == {
        (busy["id"], "Available", "Away", "ok"), (away["id"], "Available", "Out of office", "ok")}
    with env["engine"].connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM stg_events WHERE subject IS NOT NULL")).scalar_one() == 0
        planned = conn.execute(sa.text(
            "SELECT run_key, status FROM sync_plan WHERE object_type = 'presence' AND action = 'set_profile'")).all()
    assert len(planned) == 2
    assert all(key.endswith("#presence") and status == "applied" for key, status in planned)

    env["pbx"].admin("DELETE", "counters")
    assert_success(run_dag("m365_3cx_hourly"))  # again, right away: nothing is due
    assert pbx_writes(env) == 0

    env["graph"].admin("DELETE", f"users/{busy['id']}/events/{event_id}")
    env["graph"].admin("PUT", f"users/{away['id']}/automaticReplies", json={"status": "disabled"})
    assert_success(run_dag("m365_3cx_hourly"))
    assert profile(env, busy) == "Available"
    assert profile(env, away) == "Available"
    assert profile(env, manual) == "Custom 1"


def test_delta_run_switches_at_meeting_start_and_back_after_cancellation(env: dict[str, Any]) -> None:
    user = _mailbox_users(env)[3]
    assert_success(run_dag("m365_3cx_delta"))  # anchors the calendar delta links; nobody is busy
    assert profile(env, user) == "Available"

    start = dt.datetime.now(dt.UTC).replace(second=0, microsecond=0)  # the meeting starts this minute
    event_id = meeting(env, user, start, 30)
    env["pbx"].admin("DELETE", "counters")
    assert_success(run_dag("m365_3cx_delta"))
    assert profile(env, user) == "Away"
    assert pbx_writes(env) == 1
    with env["engine"].connect() as conn:
        run_key = conn.execute(sa.text(
            "SELECT run_key FROM sync_runs WHERE dag_id = 'm365_3cx_delta' ORDER BY started_at DESC LIMIT 1"
        )).scalar_one()
    assert [(a["run_key"], a["after"]) for a in presence_audit(env) if a["object_key"] == user["id"]] == [
        (run_key, "Away")]

    env["pbx"].admin("DELETE", "counters")
    assert_success(run_dag("m365_3cx_delta"))  # same minute, nothing changed
    assert pbx_writes(env) == 0

    env["graph"].admin("PATCH", f"users/{user['id']}/events/{event_id}", json={"isCancelled": True})
    assert_success(run_dag("m365_3cx_delta"))
    assert profile(env, user) == "Available"


def test_backfill_applies_only_what_is_due_now_and_dry_run_writes_nothing(env: dict[str, Any]) -> None:
    past_busy, now_busy = _mailbox_users(env)[4:6]
    now = dt.datetime.now(dt.UTC)
    past = now - dt.timedelta(hours=12)
    meeting(env, past_busy, past - dt.timedelta(minutes=30), 60)  # over, 12 hours ago
    meeting(env, now_busy, now - dt.timedelta(minutes=5), 60)

    env["pbx"].admin("DELETE", "counters")
    assert_success(run_dag("m365_3cx_hourly", dry_run=True))
    assert pbx_writes(env) == 0
    assert profile(env, now_busy) == "Available"
    assert [a for a in presence_audit(env)] == []

    assert_success(run_dag("m365_3cx_hourly", logical_date=past))  # a late run for 12 hours ago
    assert profile(env, past_busy) == "Available"
    assert profile(env, now_busy) == "Away"


def test_delta_run_with_user_changes_and_a_meeting_applies_both(env: dict[str, Any]) -> None:
    """Extensions and presence are planned in parallel in one delta run; neither plan clobbers the other."""
    renamed, busy = _mailbox_users(env)[6:8]
    assert_success(run_dag("m365_3cx_delta"))
    env["graph"].admin("PATCH", f"users/{renamed['id']}", json={"surname": "Renamed"})
    meeting(env, busy, dt.datetime.now(dt.UTC) - dt.timedelta(minutes=1), 30)

    assert_success(run_dag("m365_3cx_delta"))
    assert _extension(env, renamed)["LastName"] == "Renamed"
    assert profile(env, busy) == "Away"
    with env["engine"].connect() as conn:
        statuses = conn.execute(sa.text(
            "SELECT object_type, status FROM sync_plan WHERE run_key LIKE 'm365_3cx_delta/%' "
            "AND status <> 'planned'")).all()
    assert ("presence", "applied") in statuses
    assert ("extension", "applied") in statuses


def test_automatic_replies_reach_3cx_within_one_delta_run(env: dict[str, Any]) -> None:
    assert_success(run_dag("m365_3cx_hourly"))  # baseline: delta links and statuses in place
    user = _mailbox_users(env)[4]
    assert profile(env, user) == "Available"

    env["graph"].admin("PUT", f"users/{user['id']}/automaticReplies", json={"status": "alwaysEnabled"})
    assert_success(run_dag("m365_3cx_delta"))
    assert profile(env, user) == "Out of office"

    env["graph"].admin("PUT", f"users/{user['id']}/automaticReplies", json={"status": "disabled"})
    assert_success(run_dag("m365_3cx_delta"))
    assert profile(env, user) == "Available"


def test_user_created_in_a_delta_run_gets_their_status_in_that_run(env: dict[str, Any]) -> None:
    """Issue 9 #5: the calendar extract of a delta run covers users whose extension that run created."""
    assert_success(run_dag("m365_3cx_delta"))  # anchors the users and calendar delta links
    created = env["graph"].admin("POST", "users", json={
        "userPrincipalName": "newcomer@contoso.example", "displayName": "New Comer", "givenName": "New",
        "surname": "Comer", "mail": "newcomer@contoso.example", "usageLocation": "US",
    })
    assert created.status_code == 201, created.text
    newcomer = created.json()
    meeting(env, newcomer, dt.datetime.now(dt.UTC) - dt.timedelta(minutes=2), 60)

    assert_success(run_dag("m365_3cx_delta"))
    assert profile(env, newcomer) == "Away"  # in the run that created the extension, not one run later
    with env["engine"].connect() as conn:
        run_key = conn.execute(sa.text(
            "SELECT run_key FROM sync_runs WHERE dag_id = 'm365_3cx_delta' ORDER BY started_at DESC LIMIT 1"
        )).scalar_one()
    assert [(a["run_key"], a["before"], a["after"]) for a in presence_audit(env)
            if a["object_key"] == newcomer["id"]] == [(run_key, "Available", "Away")]


def test_teams_presence_decides_between_automatic_replies_and_the_calendar(env: dict[str, Any]) -> None:
    """Issue 12 #1: precedence automatic replies > Teams (mapped values) > calendar > default; respect mode."""
    in_call, dnd, replies, meeting_user, manual = _mailbox_users(env)[8:13]
    graph = env["graph"]

    def teams(user: dict[str, Any], availability: str, activity: str) -> None:
        graph.admin("PUT", f"users/{user['id']}/presence", json={"availability": availability, "activity": activity})

    teams(in_call, "Busy", "InACall")  # the table maps InACall itself
    teams(dnd, "DoNotDisturb", "Presenting")  # Presenting is not in the table: DoNotDisturb decides
    teams(replies, "Busy", "InAMeeting")
    graph.admin("PUT", f"users/{replies['id']}/automaticReplies", json={"status": "alwaysEnabled"})
    teams(meeting_user, "Available", "Available")  # "no change": the calendar decides
    meeting(env, meeting_user, dt.datetime.now(dt.UTC) - dt.timedelta(minutes=5), 60)
    env["pbx"].admin("PATCH", f"users/{_extension(env, manual)['Id']}", json={"CurrentProfileName": "Custom 2"})
    teams(manual, "Away", "Away")

    assert_success(run_dag("m365_3cx_delta"))
    assert [profile(env, u) for u in (in_call, dnd, replies, meeting_user, manual)] == [
        "Custom 1", "Out of office", "Out of office", "Away", "Custom 2"]
    with env["engine"].connect() as conn:
        reasons = dict(conn.execute(sa.text(
            "SELECT object_key, reason FROM sync_plan WHERE object_type = 'presence' AND status = 'applied'")).all())
        polled = conn.execute(sa.text("SELECT count(*) FROM stg_teams_presence")).scalar_one()
    assert reasons == {in_call["id"]: "presence: teams:InACall", dnd["id"]: "presence: teams:DoNotDisturb",
                       replies["id"]: "calendar: automatic_replies", meeting_user["id"]: "calendar: busy"}
    assert polled == len(_mailbox_users(env))

    teams(in_call, "Available", "Available")
    teams(dnd, "Offline", "OffWork")
    assert_success(run_dag("m365_3cx_hourly"))
    assert [profile(env, u) for u in (in_call, dnd, manual)] == ["Available", "Available", "Custom 2"]

    env["pbx"].admin("DELETE", "counters")
    graph.admin("DELETE", "counters")
    assert_success(run_dag("m365_3cx_delta"))  # nothing changed anywhere: nothing written
    assert pbx_writes(env) == 0
    calls = graph.admin("GET", "counters").json()["requests"]
    assert calls["POST /v1.0/communications/getPresencesByUserId"] == 1  # 40 users: one request per run
