"""Presence transform: precedence, DST-crossing and all-day cases, mapping validation."""

from __future__ import annotations

import datetime as dt

import pytest

from m365_3cx.errors import ConfigError
from m365_3cx.settings import PRESENCE_MAPPING_DEFAULTS
from m365_3cx.transform.presence import (
    AutoReplies,
    EventSpan,
    check_mapping_against_pbx,
    decide,
    event_interval,
    profile_at,
)

UTC = dt.UTC
MAPPING = dict(PRESENCE_MAPPING_DEFAULTS)


def utc(*args: int) -> dt.datetime:
    return dt.datetime(*args, tzinfo=UTC)


def all_day(event_id: str, first: dt.date, days: int, zone: str, show_as: str = "oof") -> EventSpan:
    return EventSpan(event_id, dt.datetime.combine(first, dt.time(0), tzinfo=UTC),
                     dt.datetime.combine(first + dt.timedelta(days=days), dt.time(0), tzinfo=UTC), show_as,
                     is_all_day=True, time_zone=zone)


def meeting(event_id: str, start: dt.datetime, minutes: int, show_as: str = "busy", **kw: object) -> EventSpan:
    return EventSpan(event_id, start, start + dt.timedelta(minutes=minutes), show_as, **kw)  # type: ignore[arg-type]


# ---------------------------------------------------------------- all-day and DST


def test_all_day_oof_on_berlin_spring_forward_day_lasts_23_hours() -> None:
    event = all_day("oof", dt.date(2026, 3, 29), 1, "Europe/Berlin")
    start, end = event_interval(event)
    assert (start, end) == (utc(2026, 3, 28, 23), utc(2026, 3, 29, 22))
    assert profile_at([event], None, MAPPING, utc(2026, 3, 28, 22, 59)) == "Available"
    assert profile_at([event], None, MAPPING, utc(2026, 3, 28, 23, 0)) == "Out of office"
    assert profile_at([event], None, MAPPING, utc(2026, 3, 29, 21, 59)) == "Out of office"  # 23:59 CEST
    assert profile_at([event], None, MAPPING, utc(2026, 3, 29, 22, 0)) == "Available"  # 00:00 CEST on the 30th
    decision = decide([event], None, MAPPING, utc(2026, 3, 29, 10))
    assert (decision.profile, decision.reason, decision.next_switch_at) == ("Out of office", "oof",
                                                                            utc(2026, 3, 29, 22))


@pytest.mark.parametrize(
    ("day", "start", "end", "hours"),
    [
        (dt.date(2026, 3, 8), utc(2026, 3, 8, 8), utc(2026, 3, 9, 7), 23),  # PST -> PDT
        (dt.date(2026, 11, 1), utc(2026, 11, 1, 7), utc(2026, 11, 2, 8), 25),  # PDT -> PST
        (dt.date(2026, 6, 1), utc(2026, 6, 1, 7), utc(2026, 6, 2, 7), 24),
    ],
)
def test_all_day_in_los_angeles_follows_dst(day: dt.date, start: dt.datetime, end: dt.datetime, hours: int) -> None:
    interval = event_interval(all_day("x", day, 1, "America/Los_Angeles"))
    assert interval == (start, end)
    assert interval[1] - interval[0] == dt.timedelta(hours=hours)


def test_three_day_trip_across_the_autumn_switch() -> None:
    """Sat 24 .. Mon 26 Oct 2026 in Berlin; DST ends on Sunday 25th: 24 + 25 + 24 hours."""
    trip = all_day("trip", dt.date(2026, 10, 24), 3, "Europe/Berlin")
    start, end = event_interval(trip)
    assert (start, end) == (utc(2026, 10, 23, 22), utc(2026, 10, 26, 23))
    assert end - start == dt.timedelta(hours=73)
    during = decide([trip], None, MAPPING, utc(2026, 10, 25, 1, 30))  # the repeated hour
    assert during.profile == "Out of office"
    assert during.next_switch_at == utc(2026, 10, 26, 23)
    assert decide([trip], None, MAPPING, utc(2026, 10, 26, 23)).profile == "Available"


def test_timed_meeting_across_spring_forward_keeps_its_utc_length() -> None:
    """01:30-03:30 local on 29 Mar 2026 in Berlin is only one real hour (02:00-03:00 does not exist)."""
    import zoneinfo

    berlin = zoneinfo.ZoneInfo("Europe/Berlin")
    start = dt.datetime(2026, 3, 29, 1, 30, tzinfo=berlin).astimezone(UTC)
    end = dt.datetime(2026, 3, 29, 3, 30, tzinfo=berlin).astimezone(UTC)
    event = EventSpan("m", start, end, "busy")
    assert end - start == dt.timedelta(hours=1)
    decision = decide([event], None, MAPPING, start)
    assert (decision.profile, decision.next_switch_at) == ("Away", utc(2026, 3, 29, 1, 30))


def test_unknown_time_zone_of_an_all_day_event_falls_back_to_utc() -> None:
    assert event_interval(all_day("x", dt.date(2026, 5, 4), 1, "Mars/Olympus")) == (utc(2026, 5, 4), utc(2026, 5, 5))


def test_naive_datetimes_are_rejected() -> None:
    with pytest.raises(ValueError, match="aware"):
        decide([], None, MAPPING, dt.datetime(2026, 1, 1))


# ---------------------------------------------------------------- precedence


def test_busy_meeting_inside_oof_day_oof_wins_then_busy_shows_after_oof_ends() -> None:
    oof = all_day("oof", dt.date(2026, 6, 1), 1, "UTC")
    late = meeting("late", utc(2026, 6, 1, 23), 120)
    assert decide([late, oof], None, MAPPING, utc(2026, 6, 1, 23, 30)).profile == "Out of office"
    decision = decide([late, oof], None, MAPPING, utc(2026, 6, 1, 12))
    assert decision.next_switch_at == utc(2026, 6, 2)
    assert profile_at([late, oof], None, MAPPING, utc(2026, 6, 2, 0, 30)) == "Away"


@pytest.mark.parametrize("status", ["alwaysEnabled", "AlwaysEnabled", "alwaysenabled"])
def test_automatic_replies_on_beat_everything_in_any_casing(status: str) -> None:
    busy = meeting("b", utc(2026, 6, 1, 9), 60)
    decision = decide([busy], AutoReplies(status), MAPPING, utc(2026, 6, 1, 9, 30))
    assert (decision.profile, decision.reason, decision.next_switch_at) == ("Out of office", "automatic_replies",
                                                                            None)


@pytest.mark.parametrize("status", ["scheduled", "Scheduled"])
def test_scheduled_automatic_replies_apply_inside_their_window_only(status: str) -> None:
    replies = AutoReplies(status, utc(2026, 6, 1, 12), utc(2026, 6, 3, 12))
    before = decide([], replies, MAPPING, utc(2026, 6, 1, 11))
    assert (before.profile, before.next_switch_at) == ("Available", utc(2026, 6, 1, 12))
    inside = decide([], replies, MAPPING, utc(2026, 6, 2))
    assert (inside.profile, inside.reason, inside.next_switch_at) == ("Out of office", "automatic_replies",
                                                                      utc(2026, 6, 3, 12))
    assert decide([], replies, MAPPING, utc(2026, 6, 3, 12)).profile == "Available"


def test_disabled_replies_with_a_schedule_do_not_count() -> None:
    replies = AutoReplies("disabled", utc(2026, 6, 1), utc(2026, 6, 9))
    assert decide([], replies, MAPPING, utc(2026, 6, 2)).profile == "Available"


def test_oof_event_next_to_replies_with_the_same_profile_is_not_a_switch() -> None:
    replies = AutoReplies("scheduled", utc(2026, 6, 1, 8), utc(2026, 6, 1, 12))
    oof = meeting("o", utc(2026, 6, 1, 12), 60, "oof")
    decision = decide([oof], replies, MAPPING, utc(2026, 6, 1, 9))
    assert decision.profile == "Out of office"
    assert decision.next_switch_at == utc(2026, 6, 1, 13)


def test_precedence_order_busy_working_elsewhere_tentative() -> None:
    mapping = {**MAPPING, "tentative": "Custom 1"}
    at = utc(2026, 6, 1, 10)
    tentative = meeting("t", utc(2026, 6, 1, 9), 240, "tentative")
    elsewhere = meeting("w", utc(2026, 6, 1, 9), 120, "workingElsewhere")
    busy = meeting("b", utc(2026, 6, 1, 9, 30), 60, "Busy")
    assert decide([tentative], None, mapping, at).profile == "Custom 1"
    assert decide([tentative, elsewhere], None, mapping, at).profile == "Custom 2"
    decision = decide([tentative, elsewhere, busy], None, mapping, at)
    assert (decision.profile, decision.reason, decision.event_id) == ("Away", "busy", "b")
    assert decision.next_switch_at == utc(2026, 6, 1, 10, 30)  # back to Custom 2


def test_tentative_free_unknown_and_cancelled_are_ignored_by_default() -> None:
    at = utc(2026, 6, 1, 10)
    events = [meeting("t", utc(2026, 6, 1, 9), 120, "tentative"), meeting("f", utc(2026, 6, 1, 9), 120, "free"),
              meeting("u", utc(2026, 6, 1, 9), 120, "unknown"),
              meeting("c", utc(2026, 6, 1, 9), 120, "busy", is_cancelled=True)]
    decision = decide(events, None, MAPPING, at)
    assert (decision.profile, decision.reason, decision.next_switch_at) == ("Available", "default", None)


def test_meeting_starting_now_counts_and_one_ending_now_does_not() -> None:
    now = utc(2026, 6, 1, 10)
    assert decide([meeting("s", now, 30)], None, MAPPING, now).profile == "Away"
    assert decide([meeting("e", now - dt.timedelta(minutes=30), 30)], None, MAPPING, now).profile == "Available"


def test_next_switch_skips_boundaries_that_do_not_change_the_profile() -> None:
    first = meeting("a", utc(2026, 6, 1, 9), 60)
    second = meeting("b", utc(2026, 6, 1, 10), 60)
    assert decide([first, second], None, MAPPING, utc(2026, 6, 1, 9, 15)).next_switch_at == utc(2026, 6, 1, 11)


# ---------------------------------------------------------------- mapping vs PBX


def test_mapping_validated_against_pbx_profile_names() -> None:
    names = ["Available", "Away", "Out of office", "Custom 1", "Custom 2"]
    check_mapping_against_pbx(MAPPING, names)
    with pytest.raises(ConfigError, match=r"workingElsewhere -> 'Custom 2'.*the PBX has: Available, Away"):
        check_mapping_against_pbx(MAPPING, names[:4])
