"""calendarView (window, recurrence, cancellations, all-day, DST, time zones), its delta, automatic replies.

Every test builds its own events in 2031, far from the seeded calendars around "now".
"""

from __future__ import annotations

from typing import Any

import pytest

pytestmark = pytest.mark.integration

BERLIN = "W. Europe Standard Time"
PACIFIC = "Pacific Standard Time"


def _uid(graph: Any, index: int = 0) -> str:
    return [u for u in graph.backend.list_users() if u["mail"] and u["userType"] == "Member"][index]["id"]


def _event(graph: Any, uid: str, subject: str, start: str, end: str, tz: str = BERLIN, **extra: Any) -> dict[str, Any]:
    body = {"subject": subject, "start": {"dateTime": start, "timeZone": tz},
            "end": {"dateTime": end, "timeZone": tz}, **extra}
    return graph.admin("POST", f"/users/{uid}/events", json=body).json()


def _view(caller: Any, uid: str, start: str, end: str, tz: str | None = None, extra: str = "") -> Any:
    headers = {"Prefer": f'outlook.timezone="{tz}"'} if tz else None
    return caller.get(f"/v1.0/users/{uid}/calendarView?startDateTime={start}&endDateTime={end}{extra}",
                      headers=headers)


def test_window_is_required_and_parsed(caller: Any, graph: Any) -> None:
    uid = _uid(graph)
    for query in ("", "?startDateTime=2031-01-01T00:00:00", "?startDateTime=nope&endDateTime=2031-01-02"):
        response = caller.get(f"/v1.0/users/{uid}/calendarView{query}")
        assert response.status_code == 400 and response.json()["error"]["code"] == "ErrorInvalidParameter"
    _event(graph, uid, "Early", "2031-01-10T09:00:00", "2031-01-10T10:00:00")
    inside = _view(caller, uid, "2031-01-10T09:30:00%2B01:00", "2031-01-10T09:45:00%2B01:00").json()["value"]
    assert [e["subject"] for e in inside] == ["Early"]
    naive_is_utc = _view(caller, uid, "2031-01-10T08:30:00", "2031-01-10T08:40:00").json()["value"]
    assert [e["subject"] for e in naive_is_utc] == ["Early"]
    assert _view(caller, uid, "2031-01-10T09:00:00", "2031-01-10T10:00:00").json()["value"] == []


def test_weekly_series_expands_with_cancelled_and_moved_occurrences_across_dst(caller: Any, graph: Any) -> None:
    uid = _uid(graph)
    master = _event(graph, uid, "Jour fixe", "2031-03-17T09:00:00", "2031-03-17T10:00:00", recurrence={
        "pattern": {"type": "weekly", "interval": 1, "daysOfWeek": ["monday"]},
        "range": {"type": "numbered", "startDate": "2031-03-17", "numberOfOccurrences": 4}})
    assert master["type"] == "seriesMaster"
    graph.admin("POST", f"/users/{uid}/events/{master['id']}/cancel-occurrence", json={"date": "2031-03-24"})
    view = _view(caller, uid, "2031-03-01T00:00:00Z", "2031-05-01T00:00:00Z").json()["value"]
    assert [e["start"]["dateTime"] for e in view] == ["2031-03-17T08:00:00.0000000", "2031-03-31T07:00:00.0000000",
                                                      "2031-04-07T07:00:00.0000000"]
    assert all(e["type"] == "occurrence" and e["seriesMasterId"] == master["id"] for e in view)
    assert len({e["iCalUId"] for e in view}) == 3 and all(e["start"]["timeZone"] == "UTC" for e in view)
    graph.admin("PATCH", f"/users/{uid}/events/{view[2]['id']}", json={
        "start": {"dateTime": "2031-04-07T13:00:00", "timeZone": BERLIN},
        "end": {"dateTime": "2031-04-07T14:00:00", "timeZone": BERLIN}})
    local = _view(caller, uid, "2031-03-01T00:00:00Z", "2031-05-01T00:00:00Z", tz=BERLIN).json()["value"]
    assert [(e["start"]["dateTime"][:16], e["type"]) for e in local] == [
        ("2031-03-17T09:00", "occurrence"), ("2031-03-31T09:00", "occurrence"), ("2031-04-07T13:00", "exception")]
    assert local[0]["start"]["timeZone"] == BERLIN and local[0]["originalStartTimeZone"] == BERLIN


def test_all_day_event_spans_midnight_in_its_zone_and_timezone_header(caller: Any, graph: Any) -> None:
    uid = _uid(graph)
    _event(graph, uid, "Offsite", "2031-05-05T00:00:00", "2031-05-06T00:00:00", tz=PACIFIC, isAllDay=True,
           showAs="oof")
    assert _view(caller, uid, "2031-05-05T00:00:00Z", "2031-05-05T06:59:00Z").json()["value"] == []
    response = _view(caller, uid, "2031-05-05T06:00:00Z", "2031-05-05T08:00:00Z", tz=PACIFIC)
    assert response.headers["Preference-Applied"] == f'outlook.timezone="{PACIFIC}"'
    event = response.json()["value"][0]
    assert event["isAllDay"] and event["showAs"] == "oof"
    assert event["start"] == {"dateTime": "2031-05-05T00:00:00.0000000", "timeZone": PACIFIC}
    assert event["end"] == {"dateTime": "2031-05-06T00:00:00.0000000", "timeZone": PACIFIC}
    iana = _view(caller, uid, "2031-05-05T06:00:00Z", "2031-05-05T08:00:00Z", tz="Europe/London").json()["value"][0]
    assert iana["start"] == {"dateTime": "2031-05-05T08:00:00.0000000", "timeZone": "Europe/London"}
    bad = graph.backend.mailboxes
    with pytest.raises(ValueError):
        bad.create_event(bad.mailbox(graph.backend.get_user(uid)), {
            "isAllDay": True, "start": {"dateTime": "2031-05-05T10:00:00", "timeZone": PACIFIC},
            "end": {"dateTime": "2031-05-06T00:00:00", "timeZone": PACIFIC}})


def test_business_trip_across_dst_keeps_local_times(caller: Any, graph: Any) -> None:
    uid = _uid(graph)
    _event(graph, uid, "Trip", "2031-03-28T08:00:00", "2031-04-01T18:00:00", showAs="oof")
    utc = _view(caller, uid, "2031-03-29T00:00:00Z", "2031-03-30T00:00:00Z").json()["value"][0]
    assert (utc["start"]["dateTime"], utc["end"]["dateTime"]) == ("2031-03-28T07:00:00.0000000",
                                                                  "2031-04-01T16:00:00.0000000")
    local = _view(caller, uid, "2031-03-29T00:00:00Z", "2031-03-30T00:00:00Z", tz=BERLIN).json()["value"][0]
    assert (local["start"]["dateTime"], local["end"]["dateTime"]) == ("2031-03-28T08:00:00.0000000",
                                                                      "2031-04-01T18:00:00.0000000")


def test_paging_select_and_fields(caller: Any, graph: Any) -> None:
    uid = _uid(graph)
    _event(graph, uid, "Stand-up", "2031-06-02T09:00:00", "2031-06-02T09:15:00", sensitivity="private",
           showAs="workingElsewhere", recurrence={"pattern": {"type": "daily", "interval": 1},
                                                  "range": {"type": "endDate", "startDate": "2031-06-02",
                                                            "endDate": "2031-06-16"}})
    first = _view(caller, uid, "2031-06-01T00:00:00Z", "2031-07-01T00:00:00Z").json()
    assert len(first["value"]) == 10 and "@odata.nextLink" in first
    items, _ = caller.all_pages(first["@odata.nextLink"])
    assert len(items) == 5
    assert len(_view(caller, uid, "2031-06-01T00:00:00Z", "2031-07-01T00:00:00Z", extra="&$top=20")
               .json()["value"]) == 15
    event = first["value"][0]
    for name in ("id", "subject", "start", "end", "isAllDay", "isCancelled", "showAs", "sensitivity", "type",
                 "seriesMasterId", "iCalUId", "changeKey", "lastModifiedDateTime", "originalStartTimeZone"):
        assert name in event
    assert (event["showAs"], event["sensitivity"]) == ("workingElsewhere", "private")
    selected = _view(caller, uid, "2031-06-01T00:00:00Z", "2031-07-01T00:00:00Z",
                     extra="&$select=subject,showAs").json()["value"]
    assert all(set(e) <= {"@odata.etag", "id", "subject", "showAs"} for e in selected)


def _delta_round(caller: Any, url: str, headers: dict[str, str] | None = None) -> tuple[list[Any], str]:
    items, pages = caller.all_pages(url, headers)
    assert all("@odata.deltaLink" not in p for p in pages[:-1]) and "@odata.nextLink" not in pages[-1]
    return items, pages[-1]["@odata.deltaLink"]


def test_calendar_view_delta_rounds(caller: Any, graph: Any) -> None:
    uid = _uid(graph, 1)
    made = [_event(graph, uid, f"E{i}", f"2031-07-0{i + 1}T09:00:00", f"2031-07-0{i + 1}T10:00:00") for i in range(5)]
    url = (f"/v1.0/users/{uid}/calendarView/delta?startDateTime=2031-07-01T00:00:00Z"
           "&endDateTime=2031-08-01T00:00:00Z")
    assert caller.get(url + "&$select=subject").status_code == 400
    assert caller.get(f"/v1.0/users/{uid}/calendarView/delta").status_code == 400
    page = caller.get(url, headers={"Prefer": "odata.maxpagesize=2"})
    assert page.headers["Preference-Applied"] == "odata.maxpagesize=2" and len(page.json()["value"]) == 2
    initial, link = _delta_round(caller, url, {"Prefer": "odata.maxpagesize=2"})
    assert sorted(e["subject"] for e in initial) == ["E0", "E1", "E2", "E3", "E4"]
    assert all(e["@odata.type"] == "#microsoft.graph.event" for e in initial)

    graph.admin("PATCH", f"/users/{uid}/events/{made[0]['id']}", json={"showAs": "tentative"})
    graph.admin("DELETE", f"/users/{uid}/events/{made[1]['id']}")
    graph.admin("PATCH", f"/users/{uid}/events/{made[2]['id']}", json={
        "start": {"dateTime": "2031-09-01T09:00:00", "timeZone": BERLIN},
        "end": {"dateTime": "2031-09-01T10:00:00", "timeZone": BERLIN}})
    graph.admin("PATCH", f"/users/{uid}/events/{made[3]['id']}", json={"isCancelled": True})
    added = _event(graph, uid, "New", "2031-07-20T09:00:00", "2031-07-20T10:00:00")

    changes, next_link = _delta_round(caller, link)
    by_id = {e["id"]: e for e in changes}
    assert set(by_id) == {made[0]["id"], made[1]["id"], made[2]["id"], made[3]["id"], added["id"]}
    assert by_id[made[0]["id"]]["showAs"] == "tentative"
    for gone in (made[1], made[2], made[3]):
        assert by_id[gone["id"]] == {"@odata.type": "#microsoft.graph.event", "id": gone["id"],
                                     "@removed": {"reason": "deleted"}}
    assert by_id[added["id"]]["subject"] == "New"
    assert _delta_round(caller, next_link)[0] == []

    graph.admin("POST", "/mailbox/expire", json={"user_id": uid, "kind": "events"})
    expired = caller.get(next_link)
    assert expired.status_code == 410 and expired.json()["error"]["code"] == "SyncStateNotFound"


def test_delta_rounds_over_an_unchanged_mailbox_stay_empty_until_it_changes(caller: Any, graph: Any) -> None:
    uid = _uid(graph, 3)
    first = _event(graph, uid, "One", "2031-10-01T09:00:00", "2031-10-01T10:00:00")
    url = (f"/v1.0/users/{uid}/calendarView/delta?startDateTime=2031-10-01T00:00:00Z"
           "&endDateTime=2031-11-01T00:00:00Z")
    initial, link = _delta_round(caller, url)
    assert [e["id"] for e in initial] == [first["id"]]
    for _ in range(2):  # rounds with nothing changed (answered from the previous snapshot)
        changes, link = _delta_round(caller, link)
        assert changes == []
    graph.admin("PATCH", f"/users/{uid}/events/{first['id']}", json={"showAs": "oof"})
    changes, link = _delta_round(caller, link)
    assert [(e["id"], e["showAs"]) for e in changes] == [(first["id"], "oof")]
    assert _delta_round(caller, link)[0] == []


def test_series_occurrence_cancel_shows_in_delta(caller: Any, graph: Any) -> None:
    uid = _uid(graph, 2)
    master = _event(graph, uid, "Weekly", "2031-08-04T11:00:00", "2031-08-04T12:00:00", recurrence={
        "pattern": {"type": "weekly", "interval": 1, "daysOfWeek": ["monday"]},
        "range": {"type": "endDate", "startDate": "2031-08-04", "endDate": "2031-08-25"}})
    url = (f"/v1.0/users/{uid}/calendarView/delta?startDateTime=2031-08-01T00:00:00Z"
           "&endDateTime=2031-09-01T00:00:00Z")
    initial, link = _delta_round(caller, url)
    assert len(initial) == 4
    graph.admin("POST", f"/users/{uid}/events/{master['id']}/cancel-occurrence", json={"date": "2031-08-11"})
    changes, _ = _delta_round(caller, link)
    removed = [c for c in changes if "@removed" in c]
    assert len(removed) == 1
    assert removed[0]["id"] == next(e["id"] for e in initial if e["start"]["dateTime"].startswith("2031-08-11"))


def test_automatic_replies_and_mailbox_settings(caller: Any, graph: Any) -> None:
    uids = [u["id"] for u in graph.backend.list_users() if u["mail"] and u["userType"] == "Member"]
    statuses = {caller.get(f"/v1.0/users/{u}/mailboxSettings/automaticRepliesSetting").json()["status"]
                for u in uids}
    assert statuses == {"disabled", "scheduled", "alwaysEnabled"}
    uid = uids[0]
    graph.admin("PUT", f"/users/{uid}/automaticReplies", json={
        "status": "Scheduled", "externalAudience": "contactsOnly",
        "scheduledStartDateTime": {"dateTime": "2031-01-01T08:00:00", "timeZone": BERLIN},
        "scheduledEndDateTime": {"dateTime": "2031-01-05T18:00:00", "timeZone": BERLIN},
        "internalReplyMessage": "Away", "externalReplyMessage": "Away (ext)"})
    body = caller.get(f"/v1.0/users/{uid}/mailboxSettings/automaticRepliesSetting").json()
    assert body["@odata.context"].endswith("/mailboxSettings/automaticRepliesSetting")
    assert (body["status"], body["externalAudience"]) == ("scheduled", "contactsOnly")
    assert body["scheduledStartDateTime"] == {"dateTime": "2031-01-01T08:00:00", "timeZone": BERLIN}
    settings = caller.get(f"/v1.0/users/{uid}/mailboxSettings").json()
    assert settings["timeZone"] == BERLIN and settings["automaticRepliesSetting"]["status"] == "scheduled"
    assert settings["workingHours"]["timeZone"] == {"name": BERLIN}
    bad = caller.session.put(f"{graph.base_url}/_emulator/users/{uid}/automaticReplies", json={"status": "sometimes"},
                             verify=graph.ca_bundle, timeout=10)
    assert bad.status_code == 400


def test_seeded_calendar_is_relative_to_now_option() -> None:
    import datetime as dt

    from emulators.graph.mailbox import MailboxOptions
    from emulators.graph.state import TenantBackend

    now = dt.datetime(2030, 10, 21, 7, 0, tzinfo=dt.UTC)
    backend = TenantBackend(42, 40, mailbox_options=MailboxOptions(now=now, events_per_user=10))
    uid = next(u["id"] for u in backend.list_users() if u["mail"] and u["userType"] == "Member")
    dump = backend.mailboxes.dump(backend.mailbox_for(uid))
    starts = {e["subject"]: e["start"]["dateTime"][:10] for e in dump["events"]}
    assert starts["Project sync"] == "2030-10-21" and starts["Weekly team meeting"] == "2030-10-07"
    assert starts["Business trip"] == "2030-10-25"  # two days before Europe/Berlin's switch on 2030-10-27
    weekly = next(e for e in dump["events"] if e["subject"] == "Weekly team meeting")
    assert weekly["cancelledOccurrences"] == ["2030-10-28"] and weekly["exceptionDates"] == ["2030-11-04"]


@pytest.mark.parametrize("show_as", ["Busy", "OOF", "WorkingElsewhere", "somethingNewer"])
def test_show_as_is_stored_and_returned_as_given(caller: Any, graph: Any, show_as: str) -> None:
    uid = _uid(graph, 2)
    made = _event(graph, uid, f"As {show_as}", "2031-06-02T09:00:00", "2031-06-02T10:00:00", showAs=show_as)
    assert made["showAs"] == show_as
    (item,) = [e for e in _view(caller, uid, "2031-06-02T00:00:00Z", "2031-06-03T00:00:00Z").json()["value"]
               if e["subject"] == f"As {show_as}"]
    assert item["showAs"] == show_as
    import requests

    with pytest.raises(requests.HTTPError, match="400"):
        graph.admin("POST", f"/users/{uid}/events", json={
            "subject": "x", "showAs": 3, "start": {"dateTime": "2031-06-02T09:00:00", "timeZone": "UTC"},
            "end": {"dateTime": "2031-06-02T10:00:00", "timeZone": "UTC"}})


def test_customized_time_zone_and_end_before_start_events_can_be_held(caller: Any, graph: Any) -> None:
    uid = _uid(graph, 3)
    custom = _event(graph, uid, "Custom zone", "2031-06-03T09:00:00", "2031-06-03T10:00:00",
                    tz="Customized Time Zone")
    assert custom["start"]["timeZone"] == "Customized Time Zone"
    backwards = _event(graph, uid, "Backwards", "2031-06-03T15:00:00", "2031-06-03T14:00:00", tz="UTC")
    assert backwards["start"]["dateTime"] > backwards["end"]["dateTime"]
    view = {e["subject"]: e for e in _view(caller, uid, "2031-06-03T00:00:00Z", "2031-06-04T00:00:00Z").json()["value"]}
    assert view["Custom zone"]["start"]["dateTime"].startswith("2031-06-03T09:00:00")  # read as UTC
    assert view["Custom zone"]["originalStartTimeZone"] == "Customized Time Zone"
    assert view["Backwards"]["end"]["dateTime"] < view["Backwards"]["start"]["dateTime"]
