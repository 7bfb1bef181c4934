"""Time zones, Graph ``dateTimeTimeZone`` values and recurrence expansion (no HTTP, no state).

Events keep their own zone (a Windows name such as ``"W. Europe Standard Time"`` or an IANA name);
:func:`zone` maps either to a :class:`zoneinfo.ZoneInfo`. A series master is expanded in its own
zone, so an occurrence at 09:00 stays at 09:00 local time across a DST change.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

WINDOWS_TO_IANA: dict[str, str] = {
    "UTC": "UTC",
    "W. Europe Standard Time": "Europe/Berlin",
    "Romance Standard Time": "Europe/Paris",
    "Central Europe Standard Time": "Europe/Budapest",
    "GMT Standard Time": "Europe/London",
    "Greenwich Standard Time": "Atlantic/Reykjavik",
    "Pacific Standard Time": "America/Los_Angeles",
    "Mountain Standard Time": "America/Denver",
    "Central Standard Time": "America/Chicago",
    "Eastern Standard Time": "America/New_York",
    "Tokyo Standard Time": "Asia/Tokyo",
}
"""The Windows zone names the emulator understands (a small subset of CLDR's windowsZones)."""

COUNTRY_ZONES: dict[str, str] = {"US": "Pacific Standard Time", "GB": "GMT Standard Time",
                                 "DE": "W. Europe Standard Time", "FR": "Romance Standard Time",
                                 "NL": "W. Europe Standard Time"}

DAY_NAMES = ("monday", "tuesday", "wednesday", "thursday", "friday", "saturday", "sunday")
MAX_OCCURRENCES = 2000


CUSTOM_ZONES = frozenset({"Customized Time Zone", "tzone://Microsoft/Custom"})
"""Names Graph gives an event whose organiser's client defined its own zone; Graph exposes no
definition for it, so the emulator reads such wall times as UTC (the name is kept as given)."""


class TimeZoneError(ValueError):
    """An unknown time zone name."""


def zone(name: str | None) -> ZoneInfo:
    """``ZoneInfo`` for a Windows or IANA name (``None``/empty = UTC).

    :raises TimeZoneError: for an unknown name.
    """
    if not name or name in CUSTOM_ZONES:
        return ZoneInfo("UTC")
    iana = WINDOWS_TO_IANA.get(name)
    if iana is None:
        iana = next((v for k, v in WINDOWS_TO_IANA.items() if k.lower() == name.lower()), name)
    try:
        return ZoneInfo(iana)
    except (ZoneInfoNotFoundError, ValueError):
        raise TimeZoneError(name) from None


def parse_query_datetime(raw: str) -> dt.datetime:
    """``startDateTime``/``endDateTime``: ISO 8601, offset honoured, naive = UTC; returns aware UTC.

    :raises ValueError: when not ISO 8601.
    """
    text = raw.strip().replace(" ", "+") if "T" in raw else raw.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    value = dt.datetime.fromisoformat(text)
    if value.tzinfo is None:
        value = value.replace(tzinfo=dt.UTC)
    return value.astimezone(dt.UTC)


def parse_graph_datetime(value: Any) -> tuple[dt.datetime, str]:
    """A Graph ``dateTimeTimeZone`` dict -> (aware UTC instant, zone name as given).

    :raises ValueError: for a malformed value or unknown zone.
    """
    if not isinstance(value, dict) or not isinstance(value.get("dateTime"), str):
        raise ValueError("expected {\"dateTime\": \"...\", \"timeZone\": \"...\"}")
    name = value.get("timeZone") or "UTC"
    text = value["dateTime"]
    if "." in text:
        head, _, frac = text.partition(".")
        text = f"{head}.{frac[:6]}"
    local = dt.datetime.fromisoformat(text.rstrip("Z"))
    if local.tzinfo is not None:
        return local.astimezone(dt.UTC), name
    return local.replace(tzinfo=zone(name)).astimezone(dt.UTC), name


def format_graph_datetime(instant: dt.datetime, zone_name: str | None) -> dict[str, str]:
    """Aware instant -> ``{"dateTime": "2026-11-28T09:00:00.0000000", "timeZone": zone_name}``."""
    name = zone_name or "UTC"
    local = instant.astimezone(zone(name))
    return {"dateTime": local.strftime("%Y-%m-%dT%H:%M:%S") + ".0000000", "timeZone": name}


def iso_utc(instant: dt.datetime) -> str:
    return instant.astimezone(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


@dataclass(frozen=True)
class Occurrence:
    """One expanded occurrence of a series: its original local date and UTC start/end."""

    original_date: dt.date
    start: dt.datetime
    end: dt.datetime


def validate_recurrence(recurrence: Any) -> dict[str, Any]:
    """Check a ``patternedRecurrence`` (daily/weekly patterns, endDate/numbered/noEnd ranges).

    :return: a normalised copy. :raises ValueError: for anything unsupported.
    """
    if not isinstance(recurrence, dict):
        raise ValueError("recurrence must be an object")
    pattern = dict(recurrence.get("pattern") or {})
    rng = dict(recurrence.get("range") or {})
    kind = pattern.get("type")
    if kind not in ("daily", "weekly"):
        raise ValueError("only daily and weekly recurrence patterns are emulated")
    interval = pattern.get("interval", 1)
    if not isinstance(interval, int) or interval < 1:
        raise ValueError("pattern.interval must be a positive integer")
    days = [d.lower() for d in pattern.get("daysOfWeek") or []]
    if kind == "weekly" and (not days or any(d not in DAY_NAMES for d in days)):
        raise ValueError("a weekly pattern needs daysOfWeek")
    range_type = rng.get("type", "noEnd")
    if range_type not in ("endDate", "numbered", "noEnd"):
        raise ValueError("range.type must be endDate, numbered or noEnd")
    start_date = dt.date.fromisoformat(rng["startDate"]) if rng.get("startDate") else None
    if range_type == "endDate":
        dt.date.fromisoformat(str(rng.get("endDate")))
    if range_type == "numbered" and (not isinstance(rng.get("numberOfOccurrences"), int)
                                     or rng["numberOfOccurrences"] < 1):
        raise ValueError("range.numberOfOccurrences must be a positive integer")
    pattern.update({"type": kind, "interval": interval, "daysOfWeek": days,
                    "firstDayOfWeek": pattern.get("firstDayOfWeek", "sunday")})
    pattern.setdefault("month", 0)
    pattern.setdefault("dayOfMonth", 0)
    pattern.setdefault("index", "first")
    rng.update({"type": range_type, "startDate": start_date.isoformat() if start_date else None,
                "endDate": rng.get("endDate", "0001-01-01"), "numberOfOccurrences": rng.get("numberOfOccurrences", 0),
                "recurrenceTimeZone": rng.get("recurrenceTimeZone")})
    return {"pattern": pattern, "range": rng}


def expand(recurrence: dict[str, Any], first_start: dt.datetime, duration: dt.timedelta, zone_name: str,
           until: dt.datetime) -> list[Occurrence]:
    """Occurrences of a series whose first instance starts at ``first_start`` (aware), up to ``until``.

    Dates are counted in the series' zone; each occurrence keeps the local wall-clock start time
    and local duration, so DST changes move its UTC instant, not its local time.
    """
    tz = zone(zone_name)
    local_first = first_start.astimezone(tz)
    pattern, rng = recurrence["pattern"], recurrence["range"]
    start_date = dt.date.fromisoformat(rng["startDate"]) if rng.get("startDate") else local_first.date()
    end_date = dt.date.fromisoformat(rng["endDate"]) if rng["type"] == "endDate" else None
    limit = rng["numberOfOccurrences"] if rng["type"] == "numbered" else MAX_OCCURRENCES
    out: list[Occurrence] = []
    day = start_date
    interval = pattern["interval"]
    week_anchor = start_date - dt.timedelta(days=start_date.weekday())
    wanted = {DAY_NAMES.index(d) for d in pattern["daysOfWeek"]}
    count = 0
    while count < min(limit, MAX_OCCURRENCES):
        if end_date is not None and day > end_date:
            break
        if pattern["type"] == "daily":
            hit = (day - start_date).days % interval == 0
        else:
            weeks = (day - week_anchor).days // 7
            hit = weeks % interval == 0 and day.weekday() in wanted
        if hit:
            local_start = dt.datetime.combine(day, local_first.time()).replace(tzinfo=tz)
            start = local_start.astimezone(dt.UTC)
            if start > until:
                break
            local_end = (local_start.replace(tzinfo=None) + duration).replace(tzinfo=tz)
            out.append(Occurrence(day, start, local_end.astimezone(dt.UTC)))
            count += 1
        day += dt.timedelta(days=1)
        if (day - start_date).days > 3700:
            break
    return out


def local_duration(start: dt.datetime, end: dt.datetime, zone_name: str) -> dt.timedelta:
    """Wall-clock duration in the event's zone (so series keep their local length across DST)."""
    tz = zone(zone_name)
    return end.astimezone(tz).replace(tzinfo=None) - start.astimezone(tz).replace(tzinfo=None)
