"""Calendar reads: event/auto-reply parsing and the batched per-user rounds (fake ``$batch`` server)."""

from __future__ import annotations

import datetime as dt
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest

from m365_3cx.errors import GraphAuthError
from m365_3cx.graph.calendar import (
    PREFER,
    CalendarWindow,
    UserCalendar,
    parse_auto_replies,
    parse_event,
    read_calendars,
    resolve_time_zone,
)
from m365_3cx.http import RetryPolicy

UTC = dt.UTC
WINDOW = CalendarWindow(dt.datetime(2026, 3, 27, tzinfo=UTC), dt.datetime(2026, 4, 5, tzinfo=UTC))
GRAPH_URL = "https://graph.example.test"


def _event(event_id: str, start: str, end: str, zone: str = "UTC", **extra: Any) -> dict[str, Any]:
    return {"id": event_id, "start": {"dateTime": start, "timeZone": zone}, "end": {"dateTime": end, "timeZone": zone},
            "showAs": "busy", "isAllDay": False, "isCancelled": False, "sensitivity": "normal",
            "type": "singleInstance", "changeKey": "ck", "subject": "Board meeting", **extra}


# ---------------------------------------------------------------- parsing


def test_timed_event_is_stored_in_utc_without_subject_by_default() -> None:
    event = parse_event(_event("e1", "2026-03-29T09:00:00.0000000", "2026-03-29T10:00:00.0000000"))
    assert event is not None
    assert (event.start_utc, event.end_utc) == (dt.datetime(2026, 3, 29, 9, tzinfo=UTC),
                                                dt.datetime(2026, 3, 29, 10, tzinfo=UTC))
    assert event.subject is None
    assert (event.is_all_day, event.time_zone) == (False, None)


@pytest.mark.parametrize(("sensitivity", "kept"), [("normal", True), ("personal", True), ("private", False),
                                                   ("Confidential", False)])
def test_subject_only_when_asked_and_never_for_private_events(sensitivity: str, kept: bool) -> None:
    item = _event("e1", "2026-03-29T09:00:00", "2026-03-29T10:00:00", sensitivity=sensitivity)
    event = parse_event(item, store_subjects=True)
    assert event is not None
    assert (event.subject == "Board meeting") is kept
    assert event.sensitivity == sensitivity.lower()


def test_all_day_event_sent_as_utc_instants_of_local_midnights_becomes_local_dates() -> None:
    """With outlook.timezone=UTC an all-day Berlin day arrives as 23:00Z the evening before."""
    item = _event("d", "2026-03-28T23:00:00.0000000", "2026-03-29T22:00:00.0000000", isAllDay=True,
                  originalStartTimeZone="W. Europe Standard Time")
    event = parse_event(item)
    assert event is not None
    assert event.time_zone == "Europe/Berlin"
    assert (event.start_utc, event.end_utc) == (dt.datetime(2026, 3, 29, tzinfo=UTC),
                                                dt.datetime(2026, 3, 30, tzinfo=UTC))


def test_all_day_event_sent_as_floating_midnights_keeps_its_dates() -> None:
    item = _event("d", "2026-03-29T00:00:00", "2026-04-01T00:00:00", isAllDay=True,
                  originalStartTimeZone="America/Los_Angeles")
    event = parse_event(item)
    assert event is not None
    assert (event.start_utc.date(), event.end_utc.date(), event.time_zone) == (
        dt.date(2026, 3, 29), dt.date(2026, 4, 1), "America/Los_Angeles")


def test_all_day_event_without_zone_uses_the_default_zone() -> None:
    item = _event("d", "2026-03-29T00:00:00", "2026-03-30T00:00:00", isAllDay=True)
    event = parse_event(item, default_time_zone="Europe/Berlin")
    assert event is not None and event.time_zone == "Europe/Berlin"


def test_event_without_times_is_dropped_and_without_id_rejected() -> None:
    assert parse_event({"id": "x", "start": None, "end": None}) is None
    with pytest.raises(ValueError, match="without id"):
        parse_event({"start": None})


@pytest.mark.parametrize(("raw", "expected"), [("Pacific Standard Time", "America/Los_Angeles"),
                                               ("Europe/Berlin", "Europe/Berlin"), ("Nowhere Time", "UTC"),
                                               (None, "UTC")])
def test_resolve_time_zone(raw: str | None, expected: str) -> None:
    assert resolve_time_zone(raw) == expected


@pytest.mark.parametrize(("status", "expected"), [("Scheduled", "scheduled"), ("alwaysEnabled", "alwaysEnabled"),
                                                  ("ALWAYSENABLED", "alwaysEnabled"), ("Disabled", "disabled"),
                                                  ("bogus", "disabled")])
def test_auto_replies_status_is_case_insensitive(status: str, expected: str) -> None:
    parsed = parse_auto_replies({
        "status": status,
        "scheduledStartDateTime": {"dateTime": "2026-03-19T02:00:00.0000000", "timeZone": "UTC"},
        "scheduledEndDateTime": {"dateTime": "2026-03-20T02:00:00.0000000", "timeZone": "UTC"},
    })
    assert parsed.status == expected
    assert parsed.scheduled_start == dt.datetime(2026, 3, 19, 2, tzinfo=UTC)


def test_window_query_is_iso_utc() -> None:
    window = CalendarWindow.around(dt.datetime(2026, 3, 29, 10, 17, 45, tzinfo=UTC), 1, 7)
    assert window.query() == "startDateTime=2026-03-28T10%3A17%3A00Z&endDateTime=2026-04-05T10%3A17%3A00Z"


# ---------------------------------------------------------------- batched rounds


class FakeCredentials:
    graph_url = GRAPH_URL


class FakeGraph:
    """Answers ``$batch`` bodies from a handler ``(url) -> (status, body)``; records every inner request."""

    def __init__(self, handler: Any) -> None:
        self.policy = RetryPolicy()
        self.credentials = FakeCredentials()
        self.handler = handler
        self.seen: list[dict[str, Any]] = []
        self.waits: list[float] = []

    def post_json(self, path: str, body: Any) -> dict[str, Any]:
        assert path == "/$batch"
        assert len(body["requests"]) <= 20
        responses = []
        for item in body["requests"]:
            self.seen.append(item)
            status, payload = self.handler(item["url"])
            responses.append({"id": item["id"], "status": status, "headers": {}, "body": payload})
        return {"responses": responses}

    def wait(self, seconds: float) -> None:
        self.waits.append(seconds)


def _run(graph: FakeGraph, users: list[str], **kwargs: Any) -> dict[str, UserCalendar]:
    results: dict[str, UserCalendar] = {}

    def on_user(cal: UserCalendar) -> None:
        assert cal.user_id not in results, "a user is reported once"
        results[cal.user_id] = cal

    kwargs.setdefault("mode", "view")
    read_calendars(graph, users, WINDOW, on_user=on_user, **kwargs)  # type: ignore[arg-type]
    return results


def test_view_round_follows_pages_reads_replies_and_skips_users_without_mailbox() -> None:
    def handler(url: str) -> tuple[int, Any]:
        path = urlsplit(url).path
        if path.startswith("/users/nomail/"):
            return 404, {"error": {"code": "MailboxNotEnabledForRESTAPI", "message": "REST API is not yet supported"}}
        if path.endswith("/automaticRepliesSetting"):
            return 200, {"status": "AlwaysEnabled"}
        query = parse_qs(urlsplit(url).query)
        if "$skiptoken" in query:
            return 200, {"value": [_event("e2", "2026-03-30T09:00:00", "2026-03-30T10:00:00")]}
        assert "startDateTime" in query and "$select" in query
        return 200, {"value": [_event("e1", "2026-03-29T09:00:00", "2026-03-29T10:00:00")],
                     "@odata.nextLink": f"{GRAPH_URL}/v1.0{path}?$skiptoken=abc"}

    graph = FakeGraph(handler)
    results = _run(graph, ["u1", "nomail"], read_auto_replies=True)
    assert [e.event_id for e in results["u1"].events] == ["e1", "e2"]
    assert results["u1"].complete and results["u1"].auto_replies is not None
    assert results["u1"].auto_replies.status == "alwaysEnabled"
    assert results["nomail"].mailbox is False and results["nomail"].events == ()
    assert all(item["headers"]["Prefer"] == PREFER for item in graph.seen)


def test_delta_follow_reports_removed_and_out_of_window_events_and_new_link() -> None:
    def handler(url: str) -> tuple[int, Any]:
        return 200, {"value": [
            _event("keep", "2026-03-29T09:00:00", "2026-03-29T10:00:00"),
            {"id": "gone", "@removed": {"reason": "deleted"}},
            _event("moved", "2026-05-29T09:00:00", "2026-05-29T10:00:00"),
        ], "@odata.deltaLink": f"{GRAPH_URL}/v1.0/users/u1/calendarView/delta?$deltatoken=new"}

    graph = FakeGraph(handler)
    links = {"u1": f"{GRAPH_URL}/v1.0/users/u1/calendarView/delta?$deltatoken=old"}
    result = _run(graph, ["u1"], mode="delta", delta_links=links)["u1"]
    assert graph.seen[0]["url"] == "/users/u1/calendarView/delta?$deltatoken=old"
    assert [e.event_id for e in result.events] == ["keep"]
    assert result.removed == ("gone", "moved")
    assert result.complete is False
    assert result.delta_link is not None and result.delta_link.endswith("$deltatoken=new")


def test_expired_delta_link_restarts_that_user_only_with_a_full_window_round() -> None:
    def handler(url: str) -> tuple[int, Any]:
        if "$deltatoken=stale" in url:
            return 410, {"error": {"code": "SyncStateNotFound", "message": "The sync state generation is not found"}}
        user = urlsplit(url).path.split("/")[2]
        return 200, {"value": [_event(f"{user}-e", "2026-03-29T09:00:00", "2026-03-29T10:00:00")],
                     "@odata.deltaLink": f"{GRAPH_URL}/v1.0/users/{user}/calendarView/delta?$deltatoken=fresh"}

    graph = FakeGraph(handler)
    links = {"u1": f"{GRAPH_URL}/v1.0/users/u1/calendarView/delta?$deltatoken=stale",
             "u2": f"{GRAPH_URL}/v1.0/users/u2/calendarView/delta?$deltatoken=ok"}
    results = _run(graph, ["u1", "u2"], mode="delta", delta_links=links)
    assert results["u1"].restarted and results["u1"].complete
    assert not results["u2"].restarted and not results["u2"].complete
    restart = [item["url"] for item in graph.seen if item["url"].startswith("/users/u1/calendarView/delta?start")]
    assert len(restart) == 1


def test_forbidden_mailbox_is_skipped_but_an_auth_failure_fails_the_read() -> None:
    graph = FakeGraph(lambda url: (403, {"error": {"code": "ErrorAccessDenied", "message": "Access denied"}}))
    result = _run(graph, ["u1"])["u1"]
    assert result.problem is not None and "403" in result.problem
    graph = FakeGraph(lambda url: (401, {"error": {"code": "InvalidAuthenticationToken", "message": "expired"}}))
    with pytest.raises(GraphAuthError):
        _run(graph, ["u1"])


def test_requests_per_mailbox_stay_within_the_outlook_limit() -> None:
    graph = FakeGraph(lambda url: (200, {"status": "disabled"} if "mailboxSettings" in url else {"value": []}))
    users = [f"u{i:02d}" for i in range(30)]
    results = _run(graph, users, read_auto_replies=True)
    assert len(results) == 30
    assert len(graph.seen) == 60
