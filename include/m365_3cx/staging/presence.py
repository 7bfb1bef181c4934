"""Staging for calendar presence: ``stg_events``, ``stg_auto_replies``, ``tgt_presence``, ``presence_state``.

Like :mod:`m365_3cx.staging.bulk`, every function takes an open connection and never commits:
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
from m365_3cx.staging.bulk import _insert_for, upsert
from m365_3cx.staging.schema import (
    extension_map,
    presence_inputs,
    presence_state,
    stg_auto_replies,
    stg_events,
    stg_teams_presence,
    stg_users,
    tgt_extensions,
    tgt_presence,
)

if TYPE_CHECKING:
    from m365_3cx.graph.calendar import UserCalendar

__all__ = [
    "PresenceUser",
    "StagedCounts",
    "bump_inputs",
    "events_resource",
    "load_auto_replies",
    "load_events",
    "load_input_versions",
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

    Protected and opted-out users (``tgt_extensions.protection``) are left out: the sync never
    changes their extension, its status included.

    :param first: only ids ``>= first`` (a shard's range).
    :param last: only ids ``<= last``.
    :param with_mailbox_only: leave out users last seen without a mailbox.
    """
    query = (
        select(stg_users.c.user_id, extension_map.c.threecx_id, extension_map.c.number)
        .select_from(stg_users.join(extension_map, extension_map.c.user_id == stg_users.c.user_id)
                     .outerjoin(tgt_extensions, tgt_extensions.c.user_id == stg_users.c.user_id))
        .where(
            tgt_extensions.c.protection.is_(None),
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
    bump_inputs(conn, [uid], run_key, now)
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

    Users without a mailbox get their ``stg_auto_replies`` flag only. For the others: one read of
    the staged rows (per 500 users with events, removals or a complete round, and the automatic
    replies of all), one upsert of the events that are new or differ from the
    staged ones, one soft-delete of the events complete rounds did not return and of ``removed``
    ids, one upsert of the automatic replies that changed. Rows that did not change are not
    written; users with any change get their :data:`presence_inputs` counter bumped (same
    transaction), which is what a delta run's ``compute_presence`` re-decides.

    :return: counts per user id (``upserted``: the events the round returned).
    :raises ValueError: naive ``now``.
    """
    _aware(now)
    counts: dict[str, StagedCounts] = {}
    live = [c for c in calendars if c.mailbox]
    uids = sorted({c.user_id for c in calendars})
    stored_replies = _stored_replies(conn, uids)
    # only the users whose round carries events or removals, or replaces their window: a delta round
    # with no change reads nothing here
    stored_events = _stored_events(conn, sorted({c.user_id for c in live if c.events or c.removed or c.complete}))
    changed: set[str] = set()
    replies: list[dict[str, Any]] = []
    for c in calendars:
        if not c.mailbox:
            counts[c.user_id] = StagedCounts()
            replies.append({"user_id": c.user_id, "mailbox": False, "status": None, "scheduled_start": None,
                            "scheduled_end": None, "updated_at": now, "last_run_key": run_key})
    rows: list[dict[str, Any]] = []
    findings: dict[str, list[tuple[str, Finding]]] = {}
    staged_ids: dict[str, set[str]] = {}
    for c in live:
        user_rows, found = _event_rows(c, run_key, now)
        rows.extend(r for r in user_rows if stored_events.get((c.user_id, r["event_id"])) != _event_facts(r))
        findings[c.user_id] = found
        staged_ids[c.user_id] = {row["event_id"] for row in user_rows}
    changed.update(r["user_id"] for r in rows)
    upsert(conn, stg_events, rows, ["user_id", "event_id"],
           [*_EVENT_COLUMNS, "deleted", "deleted_at", "updated_at", "last_run_key"])
    gone: list[tuple[str, str]] = [(c.user_id, event_id) for c in live for event_id in _storable(c.removed)
                                   if (c.user_id, event_id) in stored_events or event_id in staged_ids[c.user_id]]
    complete = {c.user_id: staged_ids[c.user_id] for c in live if c.complete}
    gone.extend((uid, eid) for uid, eid in stored_events if uid in complete and eid not in complete[uid])
    deleted: dict[str, int] = {}
    pair = tuple_(stg_events.c.user_id, stg_events.c.event_id)
    unique = sorted(set(gone))
    for start in range(0, len(unique), 500):
        batch = unique[start:start + 500]
        conn.execute(update(stg_events).where(pair.in_(batch), stg_events.c.deleted.is_(False)).values(
            deleted=True, deleted_at=now, updated_at=now, last_run_key=run_key))
    for uid, _ in unique:
        deleted[uid] = deleted.get(uid, 0) + 1
    changed.update(deleted)
    replies.extend({
        "user_id": c.user_id, "mailbox": True, "status": c.auto_replies.status,
        "scheduled_start": c.auto_replies.scheduled_start, "scheduled_end": c.auto_replies.scheduled_end,
        "updated_at": now, "last_run_key": run_key,
    } for c in live if c.auto_replies is not None)
    replies = [r for r in replies if stored_replies.get(r["user_id"]) != _reply_facts(r)]
    changed.update(r["user_id"] for r in replies)
    upsert(conn, stg_auto_replies, replies, ["user_id"])
    found_again = sorted(c.user_id for c in live if c.auto_replies is None
                         and (stored_replies.get(c.user_id) or (True,))[0] is False)
    for start in range(0, len(found_again), 500):
        conn.execute(update(stg_auto_replies).where(stg_auto_replies.c.user_id.in_(found_again[start:start + 500]),
                                                    stg_auto_replies.c.mailbox.is_(False))
                     .values(mailbox=True, updated_at=now, last_run_key=run_key))
    changed.update(found_again)
    bump_inputs(conn, changed, run_key, now)
    for c in live:
        counts[c.user_id] = StagedCounts(upserted=len(staged_ids[c.user_id]), deleted=deleted.get(c.user_id, 0),
                                         findings=tuple(findings[c.user_id]))
    return counts


def _event_facts(row: Mapping[str, Any]) -> tuple[Any, ...]:
    """What a live ``stg_events`` row says (compared to skip rewriting unchanged events)."""
    return tuple(row[c] for c in _EVENT_COLUMNS)


def _reply_facts(row: Mapping[str, Any]) -> tuple[Any, ...]:
    return (bool(row["mailbox"]), row["status"], row["scheduled_start"], row["scheduled_end"])


def _stored_events(conn: Connection, user_ids: Sequence[str]) -> dict[tuple[str, str], tuple[Any, ...]]:
    """The users' live staged events: ``(user_id, event_id) -> facts``, one read per 500 users."""
    found: dict[tuple[str, str], tuple[Any, ...]] = {}
    columns = [stg_events.c[c] for c in _EVENT_COLUMNS]
    for start in range(0, len(user_ids), 500):
        query = select(stg_events.c.user_id, stg_events.c.event_id, *columns).where(
            stg_events.c.user_id.in_(user_ids[start:start + 500]), stg_events.c.deleted.is_(False))
        for row in conn.execute(query):
            found[(row[0], row[1])] = tuple(row[2:])
    return found


def _stored_replies(conn: Connection, user_ids: Sequence[str]) -> dict[str, tuple[Any, ...]]:
    found: dict[str, tuple[Any, ...]] = {}
    t = stg_auto_replies
    for start in range(0, len(user_ids), 500):
        query = select(t.c.user_id, t.c.mailbox, t.c.status, t.c.scheduled_start, t.c.scheduled_end).where(
            t.c.user_id.in_(user_ids[start:start + 500]))
        for uid, mailbox, status, begin, end in conn.execute(query):
            found[uid] = (bool(mailbox), status, begin, end)
    return found


def bump_inputs(conn: Connection, user_ids: Iterable[str], run_key: str, now: dt.datetime) -> int:
    """Count a change of these users' presence inputs (``presence_inputs.version + 1``).

    :returns: users bumped.
    """
    ids = sorted(set(user_ids))
    if not ids:
        return 0
    t = presence_inputs
    stmt = _insert_for(conn, t)
    stmt = stmt.on_conflict_do_update(index_elements=[t.c.user_id], set_={
        "version": t.c.version + 1, "changed_at": stmt.excluded.changed_at, "run_key": stmt.excluded.run_key})
    for start in range(0, len(ids), 500):
        conn.execute(stmt, [{"user_id": uid, "version": 1, "changed_at": now, "run_key": run_key}
                            for uid in ids[start:start + 500]])
    return len(ids)


def load_input_versions(conn: Connection) -> dict[str, int]:
    """``presence_inputs.version`` by user id (users without a row count as version 0)."""
    return {uid: int(v) for uid, v in conn.execute(select(presence_inputs.c.user_id, presence_inputs.c.version))}


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


def load_auto_replies(conn: Connection, user_ids: Iterable[str] | None = None) -> dict[str, dict[str, Any]]:
    """``stg_auto_replies`` rows by user id (of just ``user_ids``, 500 per read, when given)."""
    if user_ids is None:
        return {row["user_id"]: dict(row) for row in conn.execute(select(stg_auto_replies)).mappings()}
    wanted = sorted(set(user_ids))
    found: dict[str, dict[str, Any]] = {}
    for start in range(0, len(wanted), 500):
        query = select(stg_auto_replies).where(stg_auto_replies.c.user_id.in_(wanted[start:start + 500]))
        found.update({row["user_id"]: dict(row) for row in conn.execute(query).mappings()})
    return found


def save_teams_presence(conn: Connection, rows: Iterable[Mapping[str, Any]], run_key: str,
                        now: dt.datetime, *, polled: Iterable[str],
                        stale_before: dt.datetime | None = None) -> tuple[int, int]:
    """Replace the polled users' Teams presence: upsert ``rows``, drop the polled users without one.

    Users whose presence is new, differs from the staged one, was stale (fetched before
    ``stale_before``, so no decision counted it) or was dropped get their :data:`presence_inputs`
    counter bumped.

    :param rows: ``{"user_id", "availability", "activity"}`` from Graph (cleaned at the boundary:
        control characters refused, values cut to the column width).
    :param polled: every user id the poll asked for (those Graph returned no presence for lose theirs).
    :param stale_before: the instant before which a staged presence no longer counts
        (``now - presence.teams.max_age_minutes``); ``None``: every staged one still counts.
    :returns: ``(upserted, dropped)``.
    :raises ValueError: naive ``now``.
    """
    _aware(now)
    polled = list(polled)
    data: list[dict[str, Any]] = []
    for row in rows:
        uid = row.get("user_id")
        if not isinstance(uid, str) or clean_text(uid).value != uid:
            continue
        data.append({"user_id": uid, "availability": _presence_value(row.get("availability")),
                     "activity": _presence_value(row.get("activity")), "fetched_at": now, "last_run_key": run_key})
    data = dedupe(data, ("user_id",))
    asked = sorted(set(_storable(polled)) | {row["user_id"] for row in data})
    t = stg_teams_presence
    before: dict[str, tuple[Any, ...]] = {}
    for start in range(0, len(asked), 500):
        query = select(t.c.user_id, t.c.availability, t.c.activity, t.c.fetched_at).where(
            t.c.user_id.in_(asked[start:start + 500]))
        before.update({uid: (availability, activity, fetched) for uid, availability, activity, fetched
                       in conn.execute(query)})
    upserted = upsert(conn, stg_teams_presence, data, ["user_id"])
    seen = {row["user_id"] for row in data}
    missing = sorted(set(_storable(polled)) - seen)
    dropped = 0
    for start in range(0, len(missing), 500):
        dropped += conn.execute(delete(stg_teams_presence).where(
            stg_teams_presence.c.user_id.in_(missing[start:start + 500]))).rowcount
    changed = {uid for uid in missing if uid in before}
    for row in data:
        old = before.get(row["user_id"])
        if (old is None or old[:2] != (row["availability"], row["activity"])
                or (stale_before is not None and old[2] < stale_before)):
            changed.add(row["user_id"])
    bump_inputs(conn, changed, run_key, now)
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
