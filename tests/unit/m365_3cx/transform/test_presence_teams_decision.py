"""Teams presence in the status decision: the mapping lookup and the precedence with the calendar."""

from __future__ import annotations

import datetime as dt

import pytest

from m365_3cx.settings import PRESENCE_MAPPING_DEFAULTS, TEAMS_MAPPING_DEFAULTS
from m365_3cx.transform.presence import AutoReplies, EventSpan, TeamsPresence, decide, profile_at, teams_profile

MAPPING = dict(PRESENCE_MAPPING_DEFAULTS)
TEAMS = {**TEAMS_MAPPING_DEFAULTS, "InACall": "Custom 1", "Presenting": "Out of office", "Busy": "Away"}
NOW = dt.datetime(2026, 6, 1, 10, 0, tzinfo=dt.UTC)


def meeting(minutes_from_now: int, minutes: int, show_as: str = "busy") -> EventSpan:
    start = NOW + dt.timedelta(minutes=minutes_from_now)
    return EventSpan("e1", start, start + dt.timedelta(minutes=minutes), show_as)


@pytest.mark.parametrize(("availability", "activity", "expected"), [
    ("Busy", "InACall", ("Custom 1", "InACall")),  # the activity is more specific: it decides
    ("Busy", "InAMeeting", ("Away", "Busy")),  # activity not in the table: the availability decides
    ("DoNotDisturb", "Presenting", ("Out of office", "Presenting")),
    ("DoNotDisturb", "UrgentInterruptionsOnly", ("Out of office", "DoNotDisturb")),
    ("Away", "Away", ("Away", "Away")),
    ("BeRightBack", "BeRightBack", ("Away", "BeRightBack")),
    ("Available", "Available", None),  # mapped to null: no change
    ("Offline", "OffWork", None),
    ("PresenceUnknown", "PresenceUnknown", None),
    (None, None, None),
    ("SomethingNew", "AlsoNew", None),  # values Graph may add later never count
])
def test_teams_profile_looks_up_activity_then_availability(availability: str | None, activity: str | None,
                                                           expected: tuple[str, str] | None) -> None:
    assert teams_profile(TeamsPresence(availability, activity), TEAMS) == expected


def test_a_null_activity_means_no_change_even_when_the_availability_is_mapped() -> None:
    mapping = {**TEAMS, "InAMeeting": None}
    assert teams_profile(TeamsPresence("Busy", "InAMeeting"), mapping) is None
    assert teams_profile(None, mapping) is None


def test_automatic_replies_beat_teams_which_beats_the_calendar() -> None:
    call = teams_profile(TeamsPresence("Busy", "InACall"), TEAMS)
    oof_day = EventSpan("oof", NOW - dt.timedelta(hours=2), NOW + dt.timedelta(hours=6), "oof")
    replies = AutoReplies("alwaysEnabled")

    with_replies = decide([oof_day], replies, MAPPING, NOW, call)
    assert (with_replies.profile, with_replies.reason) == ("Out of office", "automatic_replies")

    in_call = decide([oof_day, meeting(-10, 60)], None, MAPPING, NOW, call)
    assert (in_call.profile, in_call.reason, in_call.event_id) == ("Custom 1", "teams:InACall", None)
    assert in_call.next_switch_at is None  # nothing known ends the call; the next poll re-decides

    available = decide([meeting(-10, 60)], None, MAPPING, NOW, teams_profile(TeamsPresence("Available",
                                                                                          "Available"), TEAMS))
    assert (available.profile, available.reason) == ("Away", "busy")  # unmapped Teams: the calendar decides
    assert decide([], None, MAPPING, NOW, None).reason == "default"


def test_scheduled_automatic_replies_starting_later_end_the_teams_decision() -> None:
    start = NOW + dt.timedelta(minutes=30)
    replies = AutoReplies("scheduled", start, start + dt.timedelta(days=1))
    decision = decide([], replies, MAPPING, NOW, ("Away", "Away"))
    assert (decision.profile, decision.next_switch_at) == ("Away", start)
    assert profile_at([], replies, MAPPING, start, ("Away", "Away")) == "Out of office"
    assert profile_at([], None, MAPPING, NOW, ("Custom 2", "Busy")) == "Custom 2"


def test_teams_decisions_fit_the_reason_column() -> None:
    from m365_3cx.settings import TEAMS_PRESENCE_VALUES
    from m365_3cx.staging.schema import tgt_presence

    width = tgt_presence.c.reason.type.length
    assert all(len(f"teams:{value}") <= width for value in TEAMS_PRESENCE_VALUES)
