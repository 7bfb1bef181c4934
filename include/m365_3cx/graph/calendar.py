"""Calendars and automatic replies of many mailboxes, read through JSON batching.

Per user: ``GET /users/{id}/calendarView`` (full window), or ``/calendarView/delta`` (initial
round over the window, or a stored delta link), plus
``GET /users/{id}/mailboxSettings/automaticRepliesSetting``. Every request asks for UTC times,
50 items per page and immutable ids. Pages are followed inside later batch rounds; when a
user's round is complete its :class:`UserCalendar` is handed to a callback, so the caller can
stage the rows and the new delta link in one transaction per user.

Subjects are read only when the caller asks for them, and are dropped for private and
confidential events. Nothing here logs record contents; logs carry counts.
"""

from __future__ import annotations

import datetime as dt
import logging
import zoneinfo
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Final
from urllib.parse import quote, urlencode

from m365_3cx.errors import GraphFatalError

if TYPE_CHECKING:
    from m365_3cx.graph.batch import BatchRequest, BatchResponse
    from m365_3cx.graph.client import GraphClient

__all__ = [
    "PREFER",
    "AutoRepliesSetting",
    "CalendarEvent",
    "CalendarWindow",
    "UserCalendar",
    "parse_auto_replies",
    "parse_event",
    "read_calendars",
    "resolve_time_zone",
]

log = logging.getLogger(__name__)

#: Inner-request ``Prefer`` header: UTC times, 50 per page, ids that survive folder moves.
PREFER: Final = 'outlook.timezone="UTC", odata.maxpagesize=50, IdType="ImmutableId"'

#: Properties read from ``calendarView`` (delta does not support ``$select``).
EVENT_SELECT: Final = (
    "id", "start", "end", "isAllDay", "showAs", "isCancelled", "sensitivity", "type", "seriesMasterId",
    "changeKey", "originalStartTimeZone",
)
PRIVATE_SENSITIVITIES: Final = frozenset({"private", "confidential"})
_AUTO_REPLY_STATUS: Final = {"disabled": "disabled", "alwaysenabled": "alwaysEnabled", "scheduled": "scheduled"}

# Common Windows zone names (Outlook's originalStartTimeZone) -> IANA; unknown names fall back.
_WINDOWS_ZONES: Final[Mapping[str, str]] = {
    "utc": "UTC",
    "gmt standard time": "Europe/London",
    "greenwich standard time": "Atlantic/Reykjavik",
    "w. europe standard time": "Europe/Berlin",
    "central europe standard time": "Europe/Budapest",
    "central european standard time": "Europe/Warsaw",
    "romance standard time": "Europe/Paris",
    "e. europe standard time": "Europe/Chisinau",
    "fle standard time": "Europe/Kiev",
    "gtb standard time": "Europe/Bucharest",
    "russian standard time": "Europe/Moscow",
    "eastern standard time": "America/New_York",
    "central standard time": "America/Chicago",
    "mountain standard time": "America/Denver",
    "us mountain standard time": "America/Phoenix",
    "pacific standard time": "America/Los_Angeles",
    "alaskan standard time": "America/Anchorage",
    "hawaiian standard time": "Pacific/Honolulu",
    "atlantic standard time": "America/Halifax",
    "e. south america standard time": "America/Sao_Paulo",
    "india standard time": "Asia/Kolkata",
    "china standard time": "Asia/Shanghai",
    "tokyo standard time": "Asia/Tokyo",
    "singapore standard time": "Asia/Singapore",
    "aus eastern standard time": "Australia/Sydney",
    "new zealand standard time": "Pacific/Auckland",
    "south africa standard time": "Africa/Johannesburg",
    "arabian standard time": "Asia/Dubai",
    "israel standard time": "Asia/Jerusalem",
    "turkey standard time": "Europe/Istanbul",
}


def resolve_time_zone(name: str | None, fallback: str = "UTC") -> str:
    """An IANA zone name for a Graph/Outlook zone name (IANA or a common Windows name).

    :param name: the zone as Graph gave it.
    :param fallback: returned for empty or unknown names.
    """
    if not name or not name.strip():
        return fallback
    text = name.strip()
    mapped = _WINDOWS_ZONES.get(text.lower())
    if mapped:
        return mapped
    try:
        zoneinfo.ZoneInfo(text)
    except (zoneinfo.ZoneInfoNotFoundError, ValueError):
        return fallback
    return text


def _parse_graph_datetime(value: Any) -> tuple[dt.datetime, str] | None:
    """A ``dateTimeTimeZone`` -> (aware instant, IANA zone it was expressed in), or ``None``."""
    if not isinstance(value, Mapping) or not value.get("dateTime"):
        return None
    raw = str(value["dateTime"]).strip()
    zone_name = resolve_time_zone(str(value.get("timeZone") or "UTC"))
    if raw.endswith("Z"):
        raw = raw[:-1]
    if "." in raw:
        head, frac = raw.split(".", 1)
        raw = f"{head}.{frac[:6]}"
    try:
        parsed = dt.datetime.fromisoformat(raw)
    except ValueError:
        return None
    if parsed.tzinfo is None:
        parsed = parsed.replace(tzinfo=zoneinfo.ZoneInfo(zone_name))
    return parsed.astimezone(dt.UTC), zone_name


@dataclass(frozen=True)
class CalendarWindow:
    """The calendar range read for every user: ``[start, end)``, aware UTC."""

    start: dt.datetime
    end: dt.datetime

    @classmethod
    def around(cls, now: dt.datetime, days_back: int, days_ahead: int) -> CalendarWindow:
        """``now - days_back .. now + days_ahead`` (whole minutes)."""
        base = now.astimezone(dt.UTC).replace(second=0, microsecond=0)
        return cls(base - dt.timedelta(days=days_back), base + dt.timedelta(days=days_ahead))

    def query(self) -> str:
        """``startDateTime=..&endDateTime=..`` (ISO 8601 with ``Z``)."""
        fmt = "%Y-%m-%dT%H:%M:%SZ"
        return urlencode({"startDateTime": self.start.strftime(fmt), "endDateTime": self.end.strftime(fmt)})


@dataclass(frozen=True)
class CalendarEvent:
    """One event occurrence as staged in ``stg_events`` (no subject unless asked, never a private one).

    :param start_utc: aware UTC start. For all-day events: local midnight of the first day, written
        as that *date* at 00:00 UTC (the transform reads the date part in ``time_zone``).
    :param end_utc: aware UTC end (exclusive); all-day: the day after the last, as a date at 00:00 UTC.
    :param time_zone: IANA zone of an all-day event, else ``None``.
    """

    event_id: str
    start_utc: dt.datetime
    end_utc: dt.datetime
    is_all_day: bool
    time_zone: str | None
    show_as: str | None
    is_cancelled: bool
    sensitivity: str | None
    event_type: str | None
    series_master_id: str | None
    change_key: str | None
    subject: str | None = None


def _all_day_date(instant: dt.datetime, zone_name: str, expressed_in: str) -> dt.datetime:
    """The local date of an all-day boundary, as that date at 00:00 UTC.

    Graph writes all-day boundaries as local midnights; with ``outlook.timezone="UTC"`` it may
    send either that midnight as a floating value or the UTC instant of the event zone's midnight.
    """
    local = instant.astimezone(zoneinfo.ZoneInfo(expressed_in))
    if local.time() != dt.time(0):
        local = instant.astimezone(zoneinfo.ZoneInfo(zone_name))
    return dt.datetime.combine(local.date(), dt.time(0), tzinfo=dt.UTC)


def parse_event(item: Mapping[str, Any], *, default_time_zone: str = "UTC",
                store_subjects: bool = False) -> CalendarEvent | None:
    """Map one Graph event to a :class:`CalendarEvent`; ``None`` when it has no usable times.

    :param item: the event as ``calendarView`` (or its delta) returns it.
    :param default_time_zone: zone of an all-day event that names none (the settings' zone).
    :param store_subjects: keep the subject (never for private/confidential events).
    :raises ValueError: the item has no ``id``.
    """
    event_id = item.get("id")
    if not event_id:
        raise ValueError("Graph event without id")
    start = _parse_graph_datetime(item.get("start"))
    end = _parse_graph_datetime(item.get("end"))
    if start is None or end is None:
        return None
    is_all_day = bool(item.get("isAllDay"))
    sensitivity = str(item.get("sensitivity") or "").lower() or None
    time_zone: str | None = None
    start_utc, end_utc = start[0], end[0]
    if is_all_day:
        time_zone = resolve_time_zone(
            item.get("originalStartTimeZone") or (start[1] if start[1] != "UTC" else None), default_time_zone
        )
        start_utc = _all_day_date(start[0], time_zone, start[1])
        end_utc = _all_day_date(end[0], time_zone, end[1])
        if end_utc <= start_utc:
            end_utc = start_utc + dt.timedelta(days=1)
    subject = None
    if store_subjects and sensitivity not in PRIVATE_SENSITIVITIES and isinstance(item.get("subject"), str):
        subject = item["subject"]
    return CalendarEvent(
        event_id=str(event_id),
        start_utc=start_utc,
        end_utc=end_utc,
        is_all_day=is_all_day,
        time_zone=time_zone,
        show_as=str(item["showAs"]) if item.get("showAs") else None,
        is_cancelled=bool(item.get("isCancelled")),
        sensitivity=sensitivity,
        event_type=str(item["type"]) if item.get("type") else None,
        series_master_id=str(item["seriesMasterId"]) if item.get("seriesMasterId") else None,
        change_key=str(item["changeKey"]) if item.get("changeKey") else None,
        subject=subject,
    )


@dataclass(frozen=True)
class AutoRepliesSetting:
    """``automaticRepliesSetting``: canonical status and its schedule (aware UTC)."""

    status: str
    scheduled_start: dt.datetime | None
    scheduled_end: dt.datetime | None


def parse_auto_replies(body: Mapping[str, Any]) -> AutoRepliesSetting:
    """Map an ``automaticRepliesSetting`` body; the status is compared case-insensitively.

    An unknown status counts as ``disabled``.
    """
    status = _AUTO_REPLY_STATUS.get(str(body.get("status") or "").strip().lower(), "disabled")
    start = _parse_graph_datetime(body.get("scheduledStartDateTime"))
    end = _parse_graph_datetime(body.get("scheduledEndDateTime"))
    return AutoRepliesSetting(status, start[0] if start else None, end[0] if end else None)


@dataclass(frozen=True)
class UserCalendar:
    """What one user's round produced.

    :param user_id: Graph user id.
    :param events: events in the window (all of them when ``complete``; changed ones otherwise).
    :param removed: ids of events deleted or moved out of the window (delta).
    :param complete: ``events`` is the user's whole window (calendarView or an initial delta round):
        staged events not in it are gone.
    :param delta_link: the new delta link (delta mode), else ``None``.
    :param restarted: the stored delta link had expired; this is a fresh initial round.
    :param auto_replies: the automatic-replies setting, when it was read.
    :param mailbox: ``False`` when the user has no Exchange Online mailbox (nothing else is set).
    :param problem: why the user was skipped (e.g. access denied), else ``None``.
    """

    user_id: str
    events: tuple[CalendarEvent, ...] = ()
    removed: tuple[str, ...] = ()
    complete: bool = False
    delta_link: str | None = None
    restarted: bool = False
    auto_replies: AutoRepliesSetting | None = None
    mailbox: bool = True
    problem: str | None = None


@dataclass
class _Round:
    """Mutable progress of one user (private to :func:`read_calendars`)."""

    user_id: str
    events: dict[str, CalendarEvent] = field(default_factory=dict)
    removed: set[str] = field(default_factory=set)
    complete: bool = False
    delta_link: str | None = None
    restarted: bool = False
    auto_replies: AutoRepliesSetting | None = None
    want_replies: bool = False
    calendar_done: bool = False
    replies_done: bool = True
    mailbox: bool = True
    problem: str | None = None

    def done(self) -> bool:
        return (self.calendar_done and self.replies_done) or not self.mailbox or self.problem is not None

    def result(self) -> UserCalendar:
        if not self.mailbox or self.problem is not None:
            return UserCalendar(self.user_id, mailbox=self.mailbox, problem=self.problem)
        return UserCalendar(
            user_id=self.user_id,
            events=tuple(self.events[k] for k in sorted(self.events)),
            removed=tuple(sorted(self.removed - set(self.events))),
            complete=self.complete,
            delta_link=self.delta_link,
            restarted=self.restarted,
            auto_replies=self.auto_replies,
        )


def _user_path(user_id: str) -> str:
    return f"/users/{quote(user_id, safe='')}"


def read_calendars(
    client: GraphClient,
    user_ids: Sequence[str],
    window: CalendarWindow,
    *,
    mode: str,
    delta_links: Mapping[str, str | None] | None = None,
    read_auto_replies: bool = False,
    on_user: Callable[[UserCalendar], None] | None = None,
    on_users: Callable[[list[UserCalendar]], None] | None = None,
    default_time_zone: str = "UTC",
    store_subjects: bool = False,
    max_rounds: int = 200,
) -> dict[str, int]:
    """Read the calendars (and optionally the automatic replies) of ``user_ids`` in batches.

    ``mode="view"`` reads ``calendarView`` over ``window`` (complete rounds). ``mode="delta"``
    follows each user's stored delta link, or runs an initial delta round over ``window`` when
    there is none or it expired (410 / ``SyncStateNotFound``: logged, that user only). Delta items
    outside ``window`` count as removed. Users without a mailbox (404
    ``MailboxNotEnabledForRESTAPI``) and mailboxes we may not read (403) are reported with
    ``mailbox=False`` / ``problem`` and never fail the call.

    :param client: the Graph client (its ``$batch`` endpoint is used).
    :param user_ids: Graph user ids.
    :param window: the calendar window.
    :param mode: ``view`` or ``delta``.
    :param delta_links: stored delta links by user id (delta mode).
    :param read_auto_replies: also read ``automaticRepliesSetting``.
    :param on_user: called once per user as soon as that user's round is complete.
    :param on_users: called once per batch round with the users it completed (to stage them together).
    :param default_time_zone: zone of all-day events that name none.
    :param store_subjects: keep subjects (never of private/confidential events).
    :param max_rounds: bound on batch rounds (pages per user), against a looping server.
    :return: counts: users, events, removed, no_mailbox, skipped, restarted, requests.
    :raises ValueError: unknown ``mode``.
    :raises GraphError: an item failed in a way that is neither per-user nor transient-but-recovered
        (e.g. 401, persistent throttling), or the batch itself failed.
    """
    from m365_3cx.graph.batch import BatchRequest, execute_batch

    if mode not in ("view", "delta"):
        raise ValueError(f"mode must be view or delta, got {mode!r}")
    links = dict(delta_links or {})
    headers = {"Prefer": PREFER}
    rounds = {uid: _Round(uid, want_replies=read_auto_replies, replies_done=not read_auto_replies)
              for uid in dict.fromkeys(user_ids)}
    counts = {"users": len(rounds), "events": 0, "removed": 0, "no_mailbox": 0, "skipped": 0, "restarted": 0,
              "requests": 0}

    def initial_calendar(uid: str) -> str:
        if mode == "view":
            select = ",".join(EVENT_SELECT)
            return f"{_user_path(uid)}/calendarView?{window.query()}&$select={select}"
        return f"{_user_path(uid)}/calendarView/delta?{window.query()}"

    pending: dict[str, BatchRequest] = {}
    owners: dict[str, tuple[str, str]] = {}
    seq = 0

    def enqueue(uid: str, kind: str, url: str) -> None:
        nonlocal seq
        seq += 1
        rid = str(seq)
        pending[rid] = BatchRequest(id=rid, url=url, headers=headers, mailbox=uid)
        owners[rid] = (uid, kind)

    for uid, state in rounds.items():
        link = links.get(uid) if mode == "delta" else None
        if link:
            enqueue(uid, "calendar", _relative(link, client))
        else:
            state.complete = True
            enqueue(uid, "calendar", initial_calendar(uid))
        if state.want_replies:
            enqueue(uid, "replies", f"{_user_path(uid)}/mailboxSettings/automaticRepliesSetting")

    finished: set[str] = set()
    for _ in range(max_rounds):
        if not pending:
            break
        batch, pending = pending, {}
        counts["requests"] += len(batch)
        responses = execute_batch(client, list(batch.values()))
        for rid in batch:
            uid, kind = owners.pop(rid)
            state = rounds[uid]
            if state.done():
                continue  # the user was already settled by another item (no mailbox, denied)
            _handle(state, kind, responses[rid], client, window, mode, counts, enqueue, initial_calendar,
                    default_time_zone, store_subjects)
        completed: list[UserCalendar] = []
        for uid, state in rounds.items():
            if uid not in finished and state.done():
                finished.add(uid)
                _drop_pending(pending, owners, uid)
                result = state.result()
                counts["events"] += len(result.events)
                counts["removed"] += len(result.removed)
                completed.append(result)
                if on_user is not None:
                    on_user(result)
        if completed and on_users is not None:
            on_users(completed)
    else:
        if pending:
            raise GraphFatalError(f"calendar read did not finish after {max_rounds} batch rounds",
                                  code="TooManyPages")
    log.info(
        "calendars (%s): %d users, %d events, %d removed, %d without mailbox, %d skipped, %d restarted, "
        "%d requests", mode, counts["users"], counts["events"], counts["removed"], counts["no_mailbox"],
        counts["skipped"], counts["restarted"], counts["requests"],
    )
    return counts


def _relative(link: str, client: GraphClient) -> str:
    from m365_3cx.graph.batch import relative_url

    return relative_url(link, client.credentials.graph_url)


def _drop_pending(pending: dict[str, BatchRequest], owners: dict[str, tuple[str, str]], uid: str) -> None:
    for rid in [rid for rid, (owner, _) in owners.items() if owner == uid]:
        pending.pop(rid, None)
        owners.pop(rid, None)


def _outside(event: CalendarEvent, window: CalendarWindow) -> bool:
    if event.is_all_day:  # dates at 00:00 UTC: widen by a day either side for the zone offset
        return (event.end_utc + dt.timedelta(days=1) <= window.start
                or event.start_utc - dt.timedelta(days=1) >= window.end)
    return event.end_utc <= window.start or event.start_utc >= window.end


def _handle(
    state: _Round,
    kind: str,
    response: BatchResponse,
    client: GraphClient,
    window: CalendarWindow,
    mode: str,
    counts: dict[str, int],
    enqueue: Callable[[str, str, str], None],
    initial_calendar: Callable[[str], str],
    default_time_zone: str,
    store_subjects: bool,
) -> None:
    from m365_3cx.errors import DeltaTokenExpiredError, MailboxUnavailableError
    from m365_3cx.graph.batch import classify_item

    error = classify_item(response)
    if isinstance(error, MailboxUnavailableError):
        state.mailbox = False
        counts["no_mailbox"] += 1
        return
    if isinstance(error, DeltaTokenExpiredError) and kind == "calendar" and mode == "delta" and not state.restarted:
        log.warning("calendar delta link expired (SyncStateNotFound) for user %s; reading the full window",
                    state.user_id)
        state.restarted = True
        state.complete = True
        state.events.clear()
        state.removed.clear()
        counts["restarted"] += 1
        enqueue(state.user_id, "calendar", initial_calendar(state.user_id))
        return
    if error is not None and error.status == 403:
        log.warning("calendar of user %s not readable (403 %s); skipped", state.user_id, error.code)
        state.problem = f"mailbox not readable by the app (403 {error.code or 'Forbidden'})"
        counts["skipped"] += 1
        return
    if error is not None:
        raise error
    body = response.body if isinstance(response.body, Mapping) else {}
    if kind == "replies":
        state.auto_replies = parse_auto_replies(body)
        state.replies_done = True
        return
    _take_page(state, body, window, default_time_zone, store_subjects)
    next_link = body.get("@odata.nextLink")
    if next_link:
        enqueue(state.user_id, "calendar", _relative(str(next_link), client))
        return
    if mode == "delta":
        delta_link = body.get("@odata.deltaLink")
        if not delta_link:
            raise GraphFatalError("calendar delta round ended without a delta link", code="InvalidResponse")
        state.delta_link = str(delta_link)
    state.calendar_done = True


def _take_page(state: _Round, body: Mapping[str, Any], window: CalendarWindow, default_time_zone: str,
               store_subjects: bool) -> None:
    items = body.get("value")
    if not isinstance(items, list):
        raise GraphFatalError("calendar response has no value list", code="InvalidResponse")
    for item in _dicts(items):
        event_id = str(item.get("id") or "")
        if not event_id:
            continue
        if "@removed" in item:
            state.events.pop(event_id, None)
            state.removed.add(event_id)
            continue
        event = parse_event(item, default_time_zone=default_time_zone, store_subjects=store_subjects)
        if event is None or _outside(event, window):
            state.events.pop(event_id, None)
            state.removed.add(event_id)
            continue
        state.removed.discard(event_id)
        state.events[event_id] = event


def _dicts(items: Iterable[Any]) -> Iterable[Mapping[str, Any]]:
    return (item for item in items if isinstance(item, Mapping))
