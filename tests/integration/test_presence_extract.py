"""Calendar extract against the Graph emulator over HTTPS, staged in a throwaway PostgreSQL database.

Full window refresh with automatic replies, calendar delta (initial round, changes, cancellation,
an event moved out of the window, an expired delta link for one user), users without a mailbox,
and no subject ever stored by default.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa

from m365_3cx.graph.auth import GraphCredentials
from m365_3cx.graph.client import GraphClient
from m365_3cx.http import RetryPolicy
from m365_3cx.pipeline import presence as pipeline
from m365_3cx.pipeline.users import extract_users
from m365_3cx.settings import Settings
from m365_3cx.staging import presence as stage
from m365_3cx.staging.db import make_engine
from m365_3cx.staging.numbers import assign_numbers
from m365_3cx.staging.schema import create_schema
from m365_3cx.staging.state import DeltaStateStore

pytestmark = [pytest.mark.integration, pytest.mark.postgres]

FAST = RetryPolicy(max_attempts=8, backoff_base=0.01, backoff_cap=0.05, max_total_wait=20, connect_timeout=5,
                   read_timeout=10)
SETTINGS = Settings.from_mapping({"presence": {"enabled": True, "shard_size": 7}})


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
    yield {"graph": graph_emulator, "client": client, "engine": engine}
    client.close()
    engine.dispose()


def _members(handle: Any) -> list[dict[str, Any]]:
    return [u for u in handle.admin("GET", "state").json()["users"]
            if u.get("mail") and u.get("userType", "Member") == "Member" and not u.get("deleted")]


def _clear_calendar(handle: Any, user_id: str) -> None:
    for event in handle.admin("GET", f"users/{user_id}/mailbox").json()["events"]:
        handle.admin("DELETE", f"users/{user_id}/events/{event['id']}")


def _graph_time(instant: dt.datetime) -> dict[str, str]:
    return {"dateTime": instant.strftime("%Y-%m-%dT%H:%M:%S"), "timeZone": "UTC"}


def _create_event(handle: Any, user_id: str, start: dt.datetime, minutes: int, **extra: Any) -> str:
    body = {"subject": "Quarterly numbers with the bank", "start": _graph_time(start),
            "end": _graph_time(start + dt.timedelta(minutes=minutes)), "showAs": "busy", **extra}
    response = handle.admin("POST", f"users/{user_id}/events", json=body)
    assert response.status_code == 201, response.text
    return str(response.json()["id"])


def _extract(env: dict[str, Any], mode: str, run_key: str) -> list[dict[str, Any]]:
    shards = pipeline.plan_shards(env["engine"], SETTINGS)
    assert shards and all(set(s) == {"shard", "of", "first", "last"} for s in shards)
    now = dt.datetime.now(dt.UTC)
    return [pipeline.extract_calendars(env["engine"], env["client"], SETTINGS, run_key, mode, s, now) for s in shards]


def _events(env: dict[str, Any], user_id: str, *, live_only: bool = True) -> dict[str, dict[str, Any]]:
    with env["engine"].connect() as conn:
        query = "SELECT * FROM stg_events WHERE user_id = :u" + (" AND NOT deleted" if live_only else "")
        return {r["event_id"]: dict(r) for r in conn.execute(sa.text(query), {"u": user_id}).mappings()}


def test_full_refresh_stages_events_and_replies_without_subjects_and_notes_missing_mailboxes(
        env: dict[str, Any]) -> None:
    handle = env["graph"]
    busy_user, replies_user, guest = _members(handle)[:3]
    _clear_calendar(handle, busy_user["id"])
    now = dt.datetime.now(dt.UTC)
    event_id = _create_event(handle, busy_user["id"], now - dt.timedelta(minutes=10), 60, sensitivity="private")
    handle.admin("PUT", f"users/{replies_user['id']}/automaticReplies", json={"status": "AlwaysEnabled"})
    handle.admin("PATCH", f"users/{guest['id']}", json={"userType": "Guest"})

    counts = _extract(env, "full", "hourly/1")
    assert sum(c["no_mailbox"] for c in counts) >= 1
    staged = _events(env, busy_user["id"])
    assert set(staged) == {event_id}
    row = staged[event_id]
    assert (row["show_as"], row["sensitivity"], row["subject"], row["is_cancelled"]) == ("busy", "private", None, False)
    assert row["start_utc"] <= now < row["end_utc"]
    with env["engine"].connect() as conn:
        assert conn.execute(sa.text("SELECT count(*) FROM stg_events WHERE subject IS NOT NULL")).scalar_one() == 0
        replies = stage.load_auto_replies(conn)
        notes = conn.execute(sa.text(
            "SELECT object_key, message, severity FROM sync_notes WHERE run_key = 'hourly/1'")).all()
    assert replies[replies_user["id"]]["status"] == "alwaysEnabled"
    assert replies[guest["id"]]["mailbox"] is False
    assert guest["id"] in {key for key, _, _ in notes}
    assert all("MailboxNotEnabledForRESTAPI" in message or "403" in message for _, message, _ in notes)
    # no mailbox: expected, nothing to fix; a calendar the app may not read: worth a look
    assert all(sev == ("info" if "MailboxNotEnabledForRESTAPI" in message else "warning")
               for _, message, sev in notes)

    handle.admin("DELETE", f"users/{busy_user['id']}/events/{event_id}")
    _extract(env, "full", "hourly/2")
    assert _events(env, busy_user["id"]) == {}


def test_calendar_delta_tracks_changes_cancellations_moves_and_recovers_from_an_expired_link(
        env: dict[str, Any]) -> None:
    handle = env["graph"]
    first, second = _members(handle)[:2]
    for user in (first, second):
        _clear_calendar(handle, user["id"])
    now = dt.datetime.now(dt.UTC)
    meeting = _create_event(handle, first["id"], now + dt.timedelta(hours=2), 30)
    moved = _create_event(handle, first["id"], now + dt.timedelta(hours=4), 30)
    other = _create_event(handle, second["id"], now + dt.timedelta(hours=1), 30)

    initial = _extract(env, "delta", "delta/1")  # no links yet: initial rounds over the window
    assert set(_events(env, first["id"])) == {meeting, moved}
    store = DeltaStateStore()
    with env["engine"].connect() as conn:
        assert store.get(conn, stage.events_resource(first["id"])) is not None
    assert sum(c["restarted"] for c in initial) == 0

    handle.admin("PATCH", f"users/{first['id']}/events/{meeting}", json={"isCancelled": True})
    far = now + dt.timedelta(days=30)
    handle.admin("PATCH", f"users/{first['id']}/events/{moved}",
                 json={"start": _graph_time(far), "end": _graph_time(far + dt.timedelta(minutes=30))})
    added = _create_event(handle, first["id"], now + dt.timedelta(hours=6), 30, showAs="oof")
    counts = _extract(env, "delta", "delta/2")
    live = _events(env, first["id"])
    assert set(live) == {added}
    assert live[added]["show_as"] == "oof"
    assert sum(c["requests"] for c in counts) < sum(c["requests"] for c in initial) + len(counts) * 4

    handle.admin("POST", "mailbox/expire", json={"user_id": second["id"], "kind": "events"})
    later = _create_event(handle, second["id"], now + dt.timedelta(hours=3), 30)
    counts = _extract(env, "delta", "delta/3")
    assert sum(c["restarted"] for c in counts) == 1
    assert set(_events(env, second["id"])) == {other, later}
    assert set(_events(env, first["id"])) == {added}


def test_a_delta_right_after_the_hourly_refresh_is_incremental_and_still_sees_changes(env: dict[str, Any]) -> None:
    """The refresh re-anchors every mailbox's delta link on the current window, so the next delta
    run follows links (no initial round, no event re-read) and still picks up a new meeting."""
    handle = env["graph"]
    user = _members(handle)[0]
    _clear_calendar(handle, user["id"])
    now = dt.datetime.now(dt.UTC)
    kept = _create_event(handle, user["id"], now + dt.timedelta(hours=1), 30)
    handle.admin("DELETE", "counters")
    _extract(env, "full", "hourly/anchor")
    refreshed = handle.admin("GET", "counters").json()["requests"]
    assert refreshed.get("GET /v1.0/users/{id}/calendarView", 0) == 0  # an initial delta round instead
    assert set(_events(env, user["id"])) == {kept}
    with env["engine"].connect() as conn:
        stored = DeltaStateStore().get(conn, stage.events_resource(user["id"]))
    assert stored is not None and "deltatoken" in stored.lower()

    added = _create_event(handle, user["id"], now + dt.timedelta(hours=3), 30)
    counts = _extract(env, "delta", "delta/after-refresh")
    assert sum(c["events"] for c in counts) == 1  # only the new meeting: nobody's window was re-read
    assert sum(c["restarted"] for c in counts) == 0
    assert set(_events(env, user["id"])) == {kept, added}
