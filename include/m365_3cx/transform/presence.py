"""Calendar, automatic replies and Teams presence -> the 3CX profile a user should have at an instant.

Pure functions, no I/O. Every instant is an aware UTC :class:`~datetime.datetime`.

Precedence (highest first): automatic replies on (``alwaysEnabled``, or ``scheduled`` with the
instant inside ``[scheduled_start, scheduled_end)``), then the user's Teams presence when its
value is mapped (``presence.teams.mapping``; from the poll's instant on, as nothing later is
known), then events by ``showAs``: ``oof`` > ``busy`` > ``workingElsewhere`` > ``tentative``.
Cancelled events, ``free`` and ``unknown`` never count, nor does a category whose mapping is
``None`` (``tentative`` by default), nor a Teams value mapped to ``None`` ("no change": the
calendar and the default decide as without Teams). With nothing applying, the profile is
``mapping["default"]``.

Why this order: automatic replies are an absence the user declared; Teams presence is what the
user is doing now (a call, a presentation, do not disturb) and Teams already folds the calendar
in (``InAMeeting``), so where it says something mapped it is the fresher signal; the calendar
fills in wherever Teams says nothing mapped (``Available``/``Offline`` by default).

Timed events cover ``[start, end)`` in UTC. All-day events cover whole local days in their time
zone: an all-day event stored with dates ``D1 .. D2`` (the date part of ``start``/``end``; Graph
writes all-day boundaries as midnights) covers local midnight of ``D1`` to local midnight of
``D2`` in the event's zone, so the UTC length of the day follows DST (23 or 25 hours).
"""

from __future__ import annotations

import datetime as dt
import zoneinfo
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Final

from m365_3cx.errors import ConfigError

__all__ = [
    "AUTOMATIC_REPLIES",
    "DEFAULT",
    "PRECEDENCE",
    "TEAMS",
    "AutoReplies",
    "EventSpan",
    "PresenceDecision",
    "TeamsPresence",
    "check_mapping_against_pbx",
    "decide",
    "event_interval",
    "profile_at",
    "teams_profile",
]

AUTOMATIC_REPLIES: Final = "automatic_replies"
DEFAULT: Final = "default"
TEAMS: Final = "teams"

#: Reasons from highest to lowest precedence (``showAs`` values, automatic replies, Teams presence).
PRECEDENCE: Final[tuple[str, ...]] = (AUTOMATIC_REPLIES, TEAMS, "oof", "busy", "workingElsewhere", "tentative")
_RANK: Final = {reason: len(PRECEDENCE) - i for i, reason in enumerate(PRECEDENCE)}
_SHOW_AS: Final = {name.lower(): name for name in PRECEDENCE[2:]}
_BEGINNING: Final = dt.datetime.min.replace(tzinfo=dt.UTC)
_FOREVER: Final = dt.datetime.max.replace(tzinfo=dt.UTC)


def _canonical_show_as(value: str | None) -> str | None:
    """``showAs`` in its canonical casing (``Busy`` -> ``busy``), or ``None`` when it never counts."""
    return _SHOW_AS.get((value or "").strip().lower())


@lru_cache(maxsize=256)
def _zone(name: str | None) -> dt.tzinfo:
    if not name:
        return dt.UTC
    try:
        return zoneinfo.ZoneInfo(name)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return dt.UTC


@dataclass(frozen=True)
class EventSpan:
    """One calendar event as the transform sees it.

    :param event_id: Graph event id.
    :param start: aware UTC start; for all-day events its date part is the first local day.
    :param end: aware UTC end (exclusive); for all-day events its date part is the day after the last.
    :param show_as: Graph ``showAs`` (any casing).
    :param is_all_day: whole local days in ``time_zone``.
    :param time_zone: IANA zone of an all-day event (``None`` = UTC).
    :param is_cancelled: cancelled events never count.
    """

    event_id: str
    start: dt.datetime
    end: dt.datetime
    show_as: str | None
    is_all_day: bool = False
    time_zone: str | None = None
    is_cancelled: bool = False


@dataclass(frozen=True)
class AutoReplies:
    """A user's automatic-replies setting.

    :param status: ``disabled``, ``alwaysEnabled`` or ``scheduled`` (any casing).
    :param start: scheduled start (aware UTC), used only when ``scheduled``.
    :param end: scheduled end (aware UTC, exclusive), used only when ``scheduled``.
    """

    status: str | None
    start: dt.datetime | None = None
    end: dt.datetime | None = None

    def interval(self) -> tuple[dt.datetime, dt.datetime] | None:
        """The instants the replies are on: ``(min, max)`` when always on, ``None`` when off."""
        status = (self.status or "").strip().lower()
        if status == "alwaysenabled":
            return (_BEGINNING, _FOREVER)
        if status == "scheduled" and self.start is not None and self.end is not None and self.start < self.end:
            return (self.start, self.end)
        return None


@dataclass(frozen=True)
class TeamsPresence:
    """A user's Teams presence as ``getPresencesByUserId`` reported it.

    :param availability: Graph ``availability`` (``Available``, ``Busy``, ``DoNotDisturb``, ...).
    :param activity: Graph ``activity`` (``InACall``, ``Presenting``, ...).
    """

    availability: str | None
    activity: str | None = None


def teams_profile(presence: TeamsPresence | None, mapping: Mapping[str, str | None]) -> tuple[str, str] | None:
    """The profile a Teams presence maps to, and the mapping key that decided it.

    The ``activity`` value is looked up first (it is the more specific one), then ``availability``;
    the first key the mapping has decides, and a ``None`` value there means "no change".

    :param mapping: ``presence.teams.mapping`` (presence value -> profile name or ``None``).
    :return: ``(profile, key)``, or ``None`` when the presence does not count.
    """
    if presence is None:
        return None
    for value in (presence.activity, presence.availability):
        if value and value in mapping:
            profile = mapping[value]
            return (profile, value) if profile else None
    return None


@dataclass(frozen=True)
class PresenceDecision:
    """The profile a user should have at ``at`` and when that changes next.

    :param profile: the 3CX profile name.
    :param reason: ``automatic_replies``, ``teams:<presence value>``, a ``showAs`` value or ``default``.
    :param at: the instant decided for.
    :param next_switch_at: the earliest instant after ``at`` at which the profile differs, or
        ``None`` when nothing known changes it.
    :param event_id: the event that decided it (``None`` for automatic replies and the default).
    :param recheck_at: the earliest instant after ``at`` at which any span starts or ends (``None``:
        none does): until then, with the same inputs, the whole decision (profile, reason,
        ``next_switch_at``) stays what it is, so it need not be computed again.
    """

    profile: str
    reason: str
    at: dt.datetime
    next_switch_at: dt.datetime | None
    event_id: str | None = None
    recheck_at: dt.datetime | None = None


def _local_midnight(day: dt.date, zone: dt.tzinfo) -> dt.datetime:
    return dt.datetime.combine(day, dt.time(0), tzinfo=zone).astimezone(dt.UTC)


def event_interval(event: EventSpan) -> tuple[dt.datetime, dt.datetime]:
    """The UTC instants ``[start, end)`` an event covers.

    :raises ValueError: a naive ``start``/``end``.
    """
    for value in (event.start, event.end):
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError("event start/end must be aware datetimes")
    if not event.is_all_day:
        return event.start.astimezone(dt.UTC), event.end.astimezone(dt.UTC)
    zone = _zone(event.time_zone)
    first = event.start.astimezone(dt.UTC).date()
    after_last = event.end.astimezone(dt.UTC).date()
    if after_last <= first:
        after_last = first + dt.timedelta(days=1)
    return _local_midnight(first, zone), _local_midnight(after_last, zone)


@dataclass(frozen=True)
class _Span:
    start: dt.datetime
    end: dt.datetime
    reason: str
    profile: str
    event_id: str | None
    label: str | None = None  # the decision's reason when it differs from the ranking one


def _spans(events: Iterable[EventSpan], replies: AutoReplies | None, mapping: Mapping[str, str | None],
           teams: tuple[str, str] | None = None, since: dt.datetime | None = None) -> list[_Span]:
    spans: list[_Span] = []
    if teams is not None and since is not None:
        spans.append(_Span(since, _FOREVER, TEAMS, teams[0], None, f"{TEAMS}:{teams[1]}"))
    if replies is not None and mapping.get(AUTOMATIC_REPLIES):
        window = replies.interval()
        if window is not None:
            spans.append(_Span(window[0], window[1], AUTOMATIC_REPLIES, str(mapping[AUTOMATIC_REPLIES]), None))
    for event in events:
        if event.is_cancelled:
            continue
        reason = _canonical_show_as(event.show_as)
        profile = mapping.get(reason) if reason else None
        if reason is None or not profile:
            continue
        start, end = event_interval(event)
        if start < end:
            spans.append(_Span(start, end, reason, profile, event.event_id))
    return spans


def _winner(spans: Sequence[_Span], instant: dt.datetime) -> _Span | None:
    best: _Span | None = None
    for span in spans:
        if span.start <= instant < span.end and (best is None or _RANK[span.reason] > _RANK[best.reason]):
            best = span
    return best


def _require_aware(now: dt.datetime) -> dt.datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("now must be an aware datetime")
    return now.astimezone(dt.UTC)


def profile_at(
    events: Iterable[EventSpan],
    replies: AutoReplies | None,
    mapping: Mapping[str, str | None],
    instant: dt.datetime,
    teams: tuple[str, str] | None = None,
) -> str:
    """The profile due at ``instant`` (no next-switch search).

    :param teams: :func:`teams_profile` of the user's presence polled at ``instant``.
    :raises ValueError: naive datetimes.
    """
    instant = _require_aware(instant)
    span = _winner(_spans(events, replies, mapping, teams, instant), instant)
    return span.profile if span else str(mapping[DEFAULT])


def decide(
    events: Iterable[EventSpan],
    replies: AutoReplies | None,
    mapping: Mapping[str, str | None],
    now: dt.datetime,
    teams: tuple[str, str] | None = None,
) -> PresenceDecision:
    """The profile due at ``now`` and the earliest later instant at which it changes.

    :param events: the user's events (any window; cancelled and free ones are ignored).
    :param replies: the user's automatic-replies setting, or ``None`` when unknown.
    :param mapping: ``presence.mapping`` (reason -> profile name or ``None``; needs ``default``).
    :param now: aware instant.
    :param teams: :func:`teams_profile` of the user's current Teams presence (``None``: does not
        count); taken to hold from ``now`` on, so only automatic replies starting later change it.
    :return: the decision.
    :raises ValueError: naive datetimes.
    :raises KeyError: ``mapping`` has no ``default``.
    """
    now = _require_aware(now)
    default = str(mapping[DEFAULT])
    spans = _spans(events, replies, mapping, teams, now)
    current = _winner(spans, now)
    profile = current.profile if current else default
    boundaries = sorted({b for span in spans for b in (span.start, span.end) if now < b < _FOREVER})
    next_switch: dt.datetime | None = None
    for boundary in boundaries:
        span = _winner(spans, boundary)
        if (span.profile if span else default) != profile:
            next_switch = boundary
            break
    return PresenceDecision(
        profile=profile,
        reason=(current.label or current.reason) if current else DEFAULT,
        at=now,
        next_switch_at=next_switch,
        event_id=current.event_id if current else None,
        recheck_at=boundaries[0] if boundaries else None,
    )


def check_mapping_against_pbx(mapping: Mapping[str, str | None], pbx_profile_names: Iterable[str]) -> None:
    """Check every mapped profile name exists on the PBX.

    :param mapping: ``presence.mapping``.
    :param pbx_profile_names: the ``ForwardingProfiles`` names the PBX reports.
    :raises ConfigError: a mapped name the PBX lacks (listing them and the names it has).
    """
    known = {name for name in pbx_profile_names if name}
    missing = sorted({f"{key} -> {name!r}" for key, name in mapping.items() if name and name not in known})
    if missing:
        raise ConfigError(
            "presence.mapping names 3CX profiles the PBX does not have: "
            + ", ".join(missing)
            + f" (the PBX has: {', '.join(sorted(known)) or 'none'})"
        )
