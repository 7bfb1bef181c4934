"""Staging for calendar presence: ``stg_events``, ``stg_auto_replies``, ``tgt_presence``, ``presence_state``.

Like :mod:`m365_3cx.staging.repo`, every function takes an open connection and never commits:
a user's events, automatic replies and calendar delta link are written in one transaction
(the caller's). No subjects are written unless the extract asked for them (and never those
of private/confidential events; :func:`m365_3cx.graph.calendar.parse_event` drops them).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, delete, select, tuple_, update
from sqlalchemy.engine import Connection

from m365_3cx.sanitize import Finding, clean_text
from m365_3cx.staging.boundary import clean_event_row, dedupe, printable_key
from m365_3cx.staging.repo import upsert
from m365_3cx.staging.schema import (
    extension_map,
    presence_state,
    stg_auto_replies,
    stg_events,
    stg_teams_presence,
    stg_users,
    tgt_presence,
)

if TYPE_CHECKING:
    from m365_3cx.graph.calendar import UserCalendar

__all__ = [
    "PresenceUser",
    "StagedCounts",
    "events_resource",
    "load_auto_replies",
    "load_events",
    "load_state",
    "load_targets",
    "load_teams_presence",
    "presence_users",
    "purge_events",
    "save_state",
    "save_states",
    "save_targets",
    "save_teams_presence",
    "stage_calendars",
    "stage_user_calendar",
]

_EVENT_COLUMNS = (
    "start_utc", "end_utc", "is_all_day", "time_zone", "show_as", "is_cancelled", "sensitivity", "event_type",
    "series_master_id", "change_key", "subject",
)


def events_resource(user_id: str) -> str:
    """The ``delta_state`` resource key of a user's calendar delta link."""
    return f"events:{user_id}"


def _aware(now: dt.datetime) -> dt.datetime:
    if now.tzinfo is None or now.utcoffset() is None:
        raise ValueError("naive datetime; pass an aware UTC datetime")
    return now


@dataclass(frozen=True)
class PresenceUser:
    """A user whose 3CX profile the presence feature manages.

    :param user_id: Graph user id.
    :param threecx_id: the 3CX user id of the user's managed extension.
    :param number: the extension number.
    """

    user_id: str
    threecx_id: int
    number: str


def presence_users(
    conn: Connection,
    *,
    first: str | None = None,
    last: str | None = None,
    with_mailbox_only: bool = False,
) -> list[PresenceUser]:
    """In-scope, live users with a mail address and an active managed extension, ordered by id.

    :param first: only ids ``>= first`` (a shard's range).
    :param last: only ids ``<= last``.
    :param with_mailbox_only: leave out users last seen without a mailbox.
    """
    query = (
        select(stg_users.c.user_id, extension_map.c.threecx_id, extension_map.c.number)
        .select_from(stg_users.join(extension_map, extension_map.c.user_id == stg_users.c.user_id))
        .where(
            stg_users.c.in_scope.is_(True),
            stg_users.c.deleted.is_(False),
            stg_users.c.mail.is_not(None),
            stg_users.c.mail != "",
            extension_map.c.status == "active",
            extension_map.c.threecx_id.is_not(None),
        )
        .order_by(stg_users.c.user_id)
    )
    if first is not None:
        query = query.where(stg_users.c.user_id >= first)
    if last is not None:
        query = query.where(stg_users.c.user_id <= last)
    if with_mailbox_only:
        no_mailbox = select(stg_auto_replies.c.user_id).where(stg_auto_replies.c.mailbox.is_(False))
        query = query.where(stg_users.c.user_id.not_in(no_mailbox))
    return [PresenceUser(uid, int(tid), str(number)) for uid, tid, number in conn.execute(query)]


@dataclass(frozen=True)
class StagedCounts:
    """Rows one user's round changed, and what the staging boundary changed or refused.

    :param findings: ``(event id, finding)`` pairs from :func:`m365_3cx.staging.boundary.clean_event_row`.
    """

    upserted: int = 0
    deleted: int = 0
    findings: tuple[tuple[str, Finding], ...] = ()


def _event_rows(calendar: UserCalendar, run_key: str,
                now: dt.datetime) -> tuple[list[dict[str, Any]], list[tuple[str, Finding]]]:
    """A user's ``stg_events`` rows through the staging boundary, one per event id (the last wins).

    :return: the rows and ``(event id, finding)`` pairs of what the boundary changed or refused.
    """
    rows: list[dict[str, Any]] = []
    findings: list[tuple[str, Finding]] = []
    for e in calendar.events:
        clean = clean_event_row({"user_id": calendar.user_id, "event_id": e.event_id,
                                 **{c: getattr(e, c) for c in _EVENT_COLUMNS}})
        findings.extend((printable_key(e.event_id), f) for f in clean.findings)
        if clean.item is not None:
            rows.append({**clean.item, "deleted": False, "deleted_at": None, "first_seen_at": now, "updated_at": now,
                         "last_run_key": run_key})
    return dedupe(rows, ("user_id", "event_id")), findings  # one INSERT ... ON CONFLICT touches a row once


def _storable(event_ids: Iterable[str]) -> list[str]:
    """Event ids a query may carry (ids with control characters were never staged)."""
    return [e for e in event_ids if isinstance(e, str) and clean_text(e).value == e]


def stage_user_calendar(conn: Connection, calendar: UserCalendar, run_key: str, now: dt.datetime) -> StagedCounts:
    """Write one user's round: events (upsert), deletions, automatic replies, mailbox flag.

    A complete round soft-deletes the user's staged events it did not return; ``removed`` ids are
    soft-deleted either way. The caller saves the delta link in the same transaction.

    :raises ValueError: naive ``now``.
    """
    _aware(now)
    uid = calendar.user_id
    deleted = 0
    if not calendar.mailbox:
        upsert(conn, stg_auto_replies, [{
            "user_id": uid, "mailbox": False, "status": None, "scheduled_start": None, "scheduled_end": None,
            "updated_at": now, "last_run_key": run_key,
        }], ["user_id"])
        return StagedCounts()
    rows, findings = _event_rows(calendar, run_key, now)
    upsert(conn, stg_events, rows, ["user_id", "event_id"],
           [*_EVENT_COLUMNS, "deleted", "deleted_at", "updated_at", "last_run_key"])
    gone = {"deleted": True, "deleted_at": now, "updated_at": now, "last_run_key": run_key}
    live = and_(stg_events.c.user_id == uid, stg_events.c.deleted.is_(False))
    if calendar.complete:
        seen = [row["event_id"] for row in rows]
        condition = live if not seen else and_(live, stg_events.c.event_id.not_in(seen))
        deleted += conn.execute(update(stg_events).where(condition).values(**gone)).rowcount
    if calendar.removed:
        deleted += conn.execute(
            update(stg_events).where(live, stg_events.c.event_id.in_(_storable(calendar.removed))).values(**gone)
        ).rowcount
    if calendar.auto_replies is not None:
        replies = calendar.auto_replies
        upsert(conn, stg_auto_replies, [{
            "user_id": uid, "mailbox": True, "status": replies.status, "scheduled_start": replies.scheduled_start,
            "scheduled_end": replies.scheduled_end, "updated_at": now, "last_run_key": run_key,
        }], ["user_id"])
    else:
        conn.execute(update(stg_auto_replies).where(stg_auto_replies.c.user_id == uid,
                                                    stg_auto_replies.c.mailbox.is_(False))
                     .values(mailbox=True, updated_at=now, last_run_key=run_key))
    return StagedCounts(upserted=len(rows), deleted=deleted, findings=tuple(findings))


def stage_calendars(conn: Connection, calendars: Sequence[UserCalendar], run_key: str,
                    now: dt.datetime) -> dict[str, StagedCounts]:
    """:func:`stage_user_calendar` for many users at once, with a few bulk statements in all.

    Users without a mailbox get their ``stg_auto_replies`` flag only. For the others: one upsert of
    every event, one soft-delete of the events complete rounds did not return and of ``removed`` ids,
    one upsert of the automatic replies read, one update re-flagging mailboxes found again.

    :return: counts per user id.
    :raises ValueError: naive ``now``.
    """
    _aware(now)
    counts: dict[str, StagedCounts] = {}
    no_mailbox = [c for c in calendars if not c.mailbox]
    live = [c for c in calendars if c.mailbox]
    replies: list[dict[str, Any]] = [{
        "user_id": c.user_id, "mailbox": False, "status": None, "scheduled_start": None, "scheduled_end": None,
        "updated_at": now, "last_run_key": run_key,
    } for c in no_mailbox]
    for c in no_mailbox:
        counts[c.user_id] = StagedCounts()
    rows: list[dict[str, Any]] = []
    findings: dict[str, list[tuple[str, Finding]]] = {}
    staged_ids: dict[str, set[str]] = {}
    for c in live:
        user_rows, found = _event_rows(c, run_key, now)
        rows.extend(user_rows)
        findings[c.user_id] = found
        staged_ids[c.user_id] = {row["event_id"] for row in user_rows}
    upsert(conn, stg_events, rows, ["user_id", "event_id"],
           [*_EVENT_COLUMNS, "deleted", "deleted_at", "updated_at", "last_run_key"])
    gone: list[tuple[str, str]] = [(c.user_id, event_id) for c in live for event_id in _storable(c.removed)]
    complete = {c.user_id: staged_ids[c.user_id] for c in live if c.complete}
    owners = sorted(complete)
    for start in range(0, len(owners), 500):
        query = select(stg_events.c.user_id, stg_events.c.event_id).where(
            stg_events.c.user_id.in_(owners[start:start + 500]), stg_events.c.deleted.is_(False))
        gone.extend((uid, eid) for uid, eid in conn.execute(query) if eid not in complete[uid])
    deleted: dict[str, int] = {}
    pair = tuple_(stg_events.c.user_id, stg_events.c.event_id)
    unique = sorted(set(gone))
    for start in range(0, len(unique), 500):
        batch = unique[start:start + 500]
        conn.execute(update(stg_events).where(pair.in_(batch), stg_events.c.deleted.is_(False)).values(
            deleted=True, deleted_at=now, updated_at=now, last_run_key=run_key))
    for uid, _ in unique:
        deleted[uid] = deleted.get(uid, 0) + 1
    replies.extend({
        "user_id": c.user_id, "mailbox": True, "status": c.auto_replies.status,
        "scheduled_start": c.auto_replies.scheduled_start, "scheduled_end": c.auto_replies.scheduled_end,
        "updated_at": now, "last_run_key": run_key,
    } for c in live if c.auto_replies is not None)
    upsert(conn, stg_auto_replies, replies, ["user_id"])
    found_again = sorted(c.user_id for c in live if c.auto_replies is None)
    for start in range(0, len(found_again), 500):
        conn.execute(update(stg_auto_replies).where(stg_auto_replies.c.user_id.in_(found_again[start:start + 500]),
                                                    stg_auto_replies.c.mailbox.is_(False))
                     .values(mailbox=True, updated_at=now, last_run_key=run_key))
    for c in live:
        counts[c.user_id] = StagedCounts(upserted=len(staged_ids[c.user_id]), deleted=deleted.get(c.user_id, 0),
                                         findings=tuple(findings[c.user_id]))
    return counts


def purge_events(conn: Connection, ended_before: dt.datetime) -> int:
    """Hard-delete events that ended before ``ended_before`` and deleted events older than it.

    :returns: rows deleted.
    :raises ValueError: naive datetime.
    """
    _aware(ended_before)
    result = conn.execute(delete(stg_events).where(
        (stg_events.c.end_utc < ended_before - dt.timedelta(days=1))
        | (stg_events.c.deleted.is_(True) & (stg_events.c.updated_at < ended_before))
    ))
    return result.rowcount


def load_events(conn: Connection, user_ids: Iterable[str] | None = None) -> dict[str, list[dict[str, Any]]]:
    """Live (not deleted) staged events by user id, each as a dict of ``stg_events`` columns."""
    query = select(stg_events).where(stg_events.c.deleted.is_(False)).order_by(stg_events.c.user_id,
                                                                              stg_events.c.event_id)
    result: dict[str, list[dict[str, Any]]] = {}
    if user_ids is None:
        queries = [query]
    else:  # only these users' rows are read (a chunk at a time), never every user's events
        wanted = sorted(set(user_ids))
        queries = [query.where(stg_events.c.user_id.in_(wanted[i:i + 500])) for i in range(0, len(wanted), 500)]
    for q in queries:
        for row in conn.execute(q).mappings():
            result.setdefault(row["user_id"], []).append(dict(row))
    return result


def load_auto_replies(conn: Connection) -> dict[str, dict[str, Any]]:
    """``stg_auto_replies`` rows by user id."""
    return {row["user_id"]: dict(row) for row in conn.execute(select(stg_auto_replies)).mappings()}


def save_teams_presence(conn: Connection, rows: Iterable[Mapping[str, Any]], run_key: str,
                        now: dt.datetime, *, polled: Iterable[str]) -> tuple[int, int]:
    """Replace the polled users' Teams presence: upsert ``rows``, drop the polled users without one.

    :param rows: ``{"user_id", "availability", "activity"}`` from Graph (cleaned at the boundary:
        control characters refused, values cut to the column width).
    :param polled: every user id the poll asked for (those Graph returned no presence for lose theirs).
    :returns: ``(upserted, dropped)``.
    :raises ValueError: naive ``now``.
    """
    _aware(now)
    data: list[dict[str, Any]] = []
    for row in rows:
        uid = row.get("user_id")
        if not isinstance(uid, str) or clean_text(uid).value != uid:
            continue
        data.append({"user_id": uid, "availability": _presence_value(row.get("availability")),
                     "activity": _presence_value(row.get("activity")), "fetched_at": now, "last_run_key": run_key})
    data = dedupe(data, ("user_id",))
    upserted = upsert(conn, stg_teams_presence, data, ["user_id"])
    seen = {row["user_id"] for row in data}
    missing = sorted(set(_storable(polled)) - seen)
    dropped = 0
    for start in range(0, len(missing), 500):
        dropped += conn.execute(delete(stg_teams_presence).where(
            stg_teams_presence.c.user_id.in_(missing[start:start + 500]))).rowcount
    return upserted, dropped


def _presence_value(value: object) -> str | None:
    """A Graph presence value fit for its column (printable, at most 32 characters), else ``None``."""
    if not isinstance(value, str):
        return None
    cleaned = clean_text(value).value
    return cleaned[:32] if cleaned else None


def load_teams_presence(conn: Connection, fetched_since: dt.datetime) -> dict[str, tuple[str | None, str | None]]:
    """``(availability, activity)`` by user id, of rows fetched at or after ``fetched_since``.

    :raises ValueError: naive datetime.
    """
    _aware(fetched_since)
    query = select(stg_teams_presence.c.user_id, stg_teams_presence.c.availability,
                   stg_teams_presence.c.activity).where(stg_teams_presence.c.fetched_at >= fetched_since)
    return {uid: (availability, activity) for uid, availability, activity in conn.execute(query)}


def save_targets(conn: Connection, rows: Iterable[Mapping[str, Any]], run_key: str, now: dt.datetime) -> int:
    """Upsert desired profiles (``user_id``, ``threecx_id``, ``profile``, ``reason``, ``next_switch_at``).

    :returns: rows written.
    :raises ValueError: naive ``now`` or unknown columns.
    """
    _aware(now)
    data = [{**row, "run_key": run_key, "computed_at": now} for row in rows]
    return upsert(conn, tgt_presence, data, ["user_id"])


def load_targets(conn: Connection) -> dict[str, dict[str, Any]]:
    """``tgt_presence`` rows by user id."""
    return {row["user_id"]: dict(row) for row in conn.execute(select(tgt_presence)).mappings()}


def load_state(conn: Connection) -> dict[str, dict[str, Any]]:
    """``presence_state`` rows by user id (the profile the sync set last, and how)."""
    return {row["user_id"]: dict(row) for row in conn.execute(select(presence_state)).mappings()}


def save_state(
    conn: Connection, user_id: str, threecx_id: int | None, profile: str, via: str, run_key: str, now: dt.datetime
) -> None:
    """Record the profile the sync set (``via="set"``) or took as its baseline (``via="baseline"``).

    :raises ValueError: naive ``now`` or unknown ``via``.
    """
    _aware(now)
    if via not in ("set", "baseline"):
        raise ValueError(f"via must be set or baseline, got {via!r}")
    upsert(conn, presence_state, [{
        "user_id": user_id, "threecx_id": threecx_id, "profile": profile, "via": via, "set_at": now,
        "run_key": run_key,
    }], ["user_id"])


def save_states(
    conn: Connection, states: Iterable[tuple[str, int | None, str]], via: str, run_key: str, now: dt.datetime
) -> int:
    """:func:`save_state` for many users (``(user_id, threecx_id, profile)``) in one upsert.

    :returns: rows written.
    :raises ValueError: naive ``now`` or unknown ``via``.
    """
    _aware(now)
    if via not in ("set", "baseline"):
        raise ValueError(f"via must be set or baseline, got {via!r}")
    latest = {user_id: (threecx_id, profile) for user_id, threecx_id, profile in states}
    rows = [{"user_id": uid, "threecx_id": tid, "profile": profile, "via": via, "set_at": now, "run_key": run_key}
            for uid, (tid, profile) in latest.items()]
    return upsert(conn, presence_state, rows, ["user_id"])
