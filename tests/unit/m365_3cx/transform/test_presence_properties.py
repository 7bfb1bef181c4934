"""Property tests of the presence transform: random overlapping events across time zones and DST.

The reference model below is written independently of the implementation: an all-day event
covers an instant when the instant's *local date* in the event's zone lies in the event's date
range (the implementation instead converts local midnights to UTC instants).
"""

from __future__ import annotations

import datetime as dt
import random
import zoneinfo
from collections.abc import Sequence
from typing import Any

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from m365_3cx.transform.presence import AutoReplies, EventSpan, decide, event_interval

UTC = dt.UTC
ZONES = ("UTC", "Europe/Berlin", "America/Los_Angeles", "Asia/Kolkata", "Australia/Lord_Howe")
# Around the 2026 DST changes of Berlin (29 Mar, 25 Oct) and Los Angeles (8 Mar, 1 Nov).
PERIODS = ((dt.datetime(2026, 3, 6), 26), (dt.datetime(2026, 10, 22), 14))
SHOW_AS = ("free", "tentative", "busy", "oof", "workingElsewhere", "unknown", "Busy", "OOF", "WorkingElsewhere", None)
ORDER = ("automatic_replies", "oof", "busy", "workingelsewhere", "tentative")
DEFAULT_MAPPING = {"busy": "Away", "oof": "Out of office", "automatic_replies": "Out of office",
                   "workingElsewhere": "Custom 2", "tentative": None, "default": "Available"}
TENTATIVE_MAPPING = {**DEFAULT_MAPPING, "tentative": "Custom 1", "oof": "Custom 2"}


@st.composite
def local_instants(draw: Any) -> tuple[dt.datetime, str]:
    """A naive local time near a DST change and a zone to read it in."""
    base, days = draw(st.sampled_from(PERIODS))
    minutes = draw(st.integers(0, days * 24 * 60))
    return base + dt.timedelta(minutes=minutes), draw(st.sampled_from(ZONES))


def _to_utc(local: dt.datetime, zone: str, fold: int) -> dt.datetime:
    return local.replace(tzinfo=zoneinfo.ZoneInfo(zone), fold=fold).astimezone(UTC)


@st.composite
def events(draw: Any) -> EventSpan:
    local, zone = draw(local_instants())
    show_as = draw(st.sampled_from(SHOW_AS))
    cancelled = draw(st.integers(0, 5)) == 0
    event_id = f"e{draw(st.integers(0, 10**9))}"
    if draw(st.booleans()):
        days = draw(st.integers(1, 4))
        first = local.date()
        return EventSpan(event_id, dt.datetime.combine(first, dt.time(0), tzinfo=UTC),
                         dt.datetime.combine(first + dt.timedelta(days=days), dt.time(0), tzinfo=UTC),
                         show_as, is_all_day=True, time_zone=zone, is_cancelled=cancelled)
    start = _to_utc(local, zone, draw(st.integers(0, 1)))
    duration = dt.timedelta(minutes=draw(st.integers(1, 3 * 24 * 60)))
    return EventSpan(event_id, start, start + duration, show_as, is_cancelled=cancelled)


@st.composite
def replies(draw: Any) -> AutoReplies | None:
    kind = draw(st.sampled_from(("none", "disabled", "Disabled", "alwaysEnabled", "AlwaysEnabled", "scheduled",
                                 "Scheduled")))
    if kind == "none":
        return None
    local, zone = draw(local_instants())
    start = _to_utc(local, zone, 0)
    return AutoReplies(kind, start, start + dt.timedelta(minutes=draw(st.integers(1, 4 * 24 * 60))))


def _covers(event: EventSpan, instant: dt.datetime) -> bool:
    if event.is_all_day:
        local_day = instant.astimezone(zoneinfo.ZoneInfo(event.time_zone or "UTC")).date()
        return event.start.date() <= local_day < event.end.date()
    return event.start <= instant < event.end


def reference_profile(evts: Sequence[EventSpan], rep: AutoReplies | None, mapping: dict[str, Any],
                      instant: dt.datetime) -> str:
    """The highest-precedence mapped source covering ``instant``, else the default."""
    candidates: list[str] = []
    status = (rep.status or "").lower() if rep else ""
    if mapping["automatic_replies"] and (
            status == "alwaysenabled" or (status == "scheduled" and rep is not None and rep.start is not None
                                          and rep.end is not None and rep.start <= instant < rep.end)):
        candidates.append("automatic_replies")
    for event in evts:
        key = (event.show_as or "").lower()
        if event.is_cancelled or key not in ORDER:
            continue
        mapped = next(v for k, v in mapping.items() if k.lower() == key)
        if mapped and _covers(event, instant):
            candidates.append(key)
    if not candidates:
        return mapping["default"]
    best = min(candidates, key=ORDER.index)
    return next(v for k, v in mapping.items() if k.lower() == best)


def _boundaries(evts: Sequence[EventSpan], rep: AutoReplies | None) -> list[dt.datetime]:
    points = {b for e in evts for b in event_interval(e)}
    if rep is not None and rep.start is not None and rep.end is not None:
        points |= {rep.start, rep.end}
    return sorted(points)


SETTINGS = settings(max_examples=300, deadline=None, database=None, suppress_health_check=[HealthCheck.too_slow])


@SETTINGS
@given(evts=st.lists(events(), max_size=8), rep=replies(), at=local_instants(),
       mapping=st.sampled_from((DEFAULT_MAPPING, TENTATIVE_MAPPING)))
def test_result_is_the_highest_precedence_source_covering_now(evts: list[EventSpan], rep: AutoReplies | None,
                                                               at: tuple[dt.datetime, str],
                                                               mapping: dict[str, Any]) -> None:
    now = _to_utc(*at, 0)
    decision = decide(evts, rep, mapping, now)
    assert decision.profile == reference_profile(evts, rep, mapping, now)


@SETTINGS
@given(evts=st.lists(events(), max_size=8), rep=replies(), at=local_instants(),
       mapping=st.sampled_from((DEFAULT_MAPPING, TENTATIVE_MAPPING)), seed=st.integers(0, 2**32 - 1))
def test_next_switch_is_the_earliest_later_change(evts: list[EventSpan], rep: AutoReplies | None,
                                                  at: tuple[dt.datetime, str], mapping: dict[str, Any],
                                                  seed: int) -> None:
    now = _to_utc(*at, 0)
    decision = decide(evts, rep, mapping, now)
    later = [b for b in _boundaries(evts, rep) if b > now]
    rng = random.Random(seed)
    if decision.next_switch_at is None:
        # Nothing known changes the profile: every later boundary (and any instant) agrees.
        probes = later + [now + dt.timedelta(minutes=rng.randint(1, 60 * 24 * 40)) for _ in range(5)]
        assert all(reference_profile(evts, rep, mapping, t) == decision.profile for t in probes)
        return
    switch = decision.next_switch_at
    assert switch > now
    assert reference_profile(evts, rep, mapping, switch) != decision.profile
    span = (switch - now).total_seconds()
    probes = [b for b in later if b < switch] + [switch - dt.timedelta(microseconds=1)]
    probes += [now + dt.timedelta(seconds=span * rng.random()) for _ in range(5)]
    for t in probes:
        if now <= t < switch:
            assert reference_profile(evts, rep, mapping, t) == decision.profile, t


@SETTINGS
@given(evts=st.lists(events(), max_size=8), rep=replies(), at=local_instants())
def test_no_switch_when_nothing_counts(evts: list[EventSpan], rep: AutoReplies | None,
                                       at: tuple[dt.datetime, str]) -> None:
    """Free, unknown, tentative (unmapped) and cancelled events and disabled replies never switch."""
    quiet = [EventSpan(e.event_id, e.start, e.end, s, e.is_all_day, e.time_zone, c)
             for e, s, c in zip(evts, ("free", "unknown", "tentative", None) * 3, (False, True) * 8, strict=False)]
    quiet += [EventSpan(f"c{i}", e.start, e.end, "busy", e.is_all_day, e.time_zone, True)
              for i, e in enumerate(evts)]
    off = AutoReplies("disabled", rep.start, rep.end) if rep else None
    decision = decide(quiet, off, DEFAULT_MAPPING, _to_utc(*at, 0))
    assert decision.profile == "Available"
    assert decision.reason == "default"
    assert decision.next_switch_at is None


@SETTINGS
@given(evts=st.lists(events(), max_size=8), rep=replies(), at=local_instants(), seed=st.integers(0, 1000))
def test_order_of_events_does_not_matter(evts: list[EventSpan], rep: AutoReplies | None,
                                         at: tuple[dt.datetime, str], seed: int) -> None:
    now = _to_utc(*at, 0)
    shuffled = list(evts)
    random.Random(seed).shuffle(shuffled)
    first, second = decide(evts, rep, DEFAULT_MAPPING, now), decide(shuffled, rep, DEFAULT_MAPPING, now)
    assert (first.profile, first.reason, first.next_switch_at) == (second.profile, second.reason,
                                                                   second.next_switch_at)


@SETTINGS
@given(at=local_instants(), days=st.integers(1, 4))
def test_all_day_interval_spans_the_local_days(at: tuple[dt.datetime, str], days: int) -> None:
    """An all-day event lasts exactly the sum of its local days' lengths (23/24/25 h across DST)."""
    local, zone = at
    tz = zoneinfo.ZoneInfo(zone)
    first = local.date()
    event = EventSpan("x", dt.datetime.combine(first, dt.time(0), tzinfo=UTC),
                      dt.datetime.combine(first + dt.timedelta(days=days), dt.time(0), tzinfo=UTC), "oof",
                      is_all_day=True, time_zone=zone)
    start, end = event_interval(event)
    assert start.astimezone(tz).replace(tzinfo=None) == dt.datetime.combine(first, dt.time(0))
    assert end.astimezone(tz).replace(tzinfo=None) == dt.datetime.combine(first + dt.timedelta(days=days),
                                                                          dt.time(0))
