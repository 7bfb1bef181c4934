"""``extension_map``: which user holds which number, its release, quarantine and removal clock.

Every function takes an open :class:`~sqlalchemy.engine.Connection` and never
commits (see :mod:`m365_3cx.staging.bulk`).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable, Mapping
from typing import Any

from sqlalchemy import bindparam, case, delete, exists, func, select, update
from sqlalchemy.engine import Connection

from m365_3cx.staging.bulk import _chunks, _insert_for, _py, _require_aware
from m365_3cx.staging.schema import cur_extensions, extension_map, tgt_extensions

__all__ = [
    "assign_numbers",
    "grace_expired_user_ids",
    "purge_expired_quarantine",
    "reactivate_numbers",
    "release_number",
    "release_numbers",
    "set_threecx_id",
    "set_threecx_ids",
    "start_removal_clock",
    "stop_removal_clock",
    "sync_removal_clock",
]

def assign_numbers(conn: Connection, rows: Iterable[Mapping[str, Any]], now: dt.datetime | None = None) -> int:
    """Record ``user_id -> number`` as active (insert, or update the user's row).

    Each row needs ``user_id`` and ``number``; optional ``threecx_id`` (``None`` keeps the stored
    id), ``adopted`` (default ``False``) and ``assigned_at`` (default ``now``). ``assigned_at`` is
    only replaced when the number changes or the row was released; ``released_at`` is cleared.

    :param now: aware UTC default for ``assigned_at`` (default: current time).
    :returns: rows written.
    :raises ValueError: a row lacks ``user_id`` or ``number``.
    :raises sqlalchemy.exc.IntegrityError: the number belongs to another user (active or quarantined).
    """
    when = _require_aware(now) if now is not None else dt.datetime.now(dt.UTC)
    data: list[dict[str, Any]] = []
    for row in rows:
        if not row.get("user_id") or not row.get("number"):
            raise ValueError("extension_map row needs user_id and number")
        data.append(
            {
                "user_id": str(row["user_id"]),
                "number": str(_py(row["number"])),
                "threecx_id": _py(row.get("threecx_id")),
                "status": "active",
                "assigned_at": _py(row.get("assigned_at")) or when,
                "released_at": None,
                "adopted": bool(_py(row.get("adopted")) or False),
            }
        )
    if not data:
        return 0
    stmt = _insert_for(conn, extension_map)
    ex, cur = stmt.excluded, extension_map.c
    renewed = (cur.number != ex.number) | (cur.status != "active")
    stmt = stmt.on_conflict_do_update(
        index_elements=["user_id"],
        set_={
            "number": ex.number,
            "threecx_id": func.coalesce(ex.threecx_id, cur.threecx_id),
            "status": ex.status,
            "assigned_at": case((renewed, ex.assigned_at), else_=cur.assigned_at),
            "released_at": None,
            "adopted": ex.adopted,
        },
    )
    for batch in _chunks(data):
        conn.execute(stmt, list(batch))
    return len(data)


def set_threecx_id(conn: Connection, user_id: str, threecx_id: int | None) -> bool:
    """Store the 3CX user id of a mapped user (after create or adopt).

    :returns: ``True`` when the user has a mapping row.
    """
    result = conn.execute(update(extension_map).where(extension_map.c.user_id == user_id).values(threecx_id=threecx_id))
    return result.rowcount > 0


def set_threecx_ids(conn: Connection, ids: Mapping[str, int]) -> int:
    """Store the 3CX user ids of many mapped users (``{user_id: threecx_id}``) in one executemany.

    :returns: rows sent.
    """
    if not ids:
        return 0
    stmt = (update(extension_map).where(extension_map.c.user_id == bindparam("b_user_id"))
            .values(threecx_id=bindparam("b_threecx_id")))
    data = [{"b_user_id": uid, "b_threecx_id": int(tid)} for uid, tid in sorted(ids.items())]
    for batch in _chunks(data):
        conn.execute(stmt, list(batch))
    return len(data)


def release_numbers(conn: Connection, user_ids: Iterable[str], now: dt.datetime) -> int:
    """:func:`release_number` for many users (one statement per 500).

    :returns: active mappings released.
    """
    _require_aware(now)
    ids = sorted(set(user_ids))
    count = 0
    for batch in _chunks(ids):
        count += conn.execute(
            update(extension_map)
            .where(extension_map.c.user_id.in_(list(batch)), extension_map.c.status == "active")
            .values(status="released", released_at=now)
        ).rowcount
    return count


def release_number(conn: Connection, user_id: str, now: dt.datetime) -> bool:
    """Mark a user's number released; it stays reserved (quarantined) for other users.

    :returns: ``True`` when an active mapping was released.
    :raises ValueError: ``now`` is naive.
    """
    _require_aware(now)
    result = conn.execute(
        update(extension_map)
        .where(extension_map.c.user_id == user_id, extension_map.c.status == "active")
        .values(status="released", released_at=now)
    )
    return result.rowcount > 0


def start_removal_clock(conn: Connection, user_ids: Iterable[str], now: dt.datetime) -> int:
    """Record ``removal_since = now`` for mapped users whose extension was just disabled (kept when set).

    :returns: rows written.
    """
    return _set_removal_clock(conn, user_ids, _require_aware(now))


def stop_removal_clock(conn: Connection, user_ids: Iterable[str]) -> int:
    """Clear ``removal_since`` (the user's extension was re-enabled or deleted).

    :returns: rows written.
    """
    return _set_removal_clock(conn, user_ids, None)


def _set_removal_clock(conn: Connection, user_ids: Iterable[str], since: dt.datetime | None) -> int:
    """Set ``removal_since`` to ``since`` where it is not set (a start) or set (a stop, ``since=None``)."""
    clock = extension_map.c.removal_since
    unchanged = clock.is_(None) if since is not None else clock.is_not(None)
    count = 0
    for batch in _chunks(sorted(set(user_ids))):
        count += conn.execute(
            update(extension_map).where(extension_map.c.user_id.in_(list(batch)), unchanged).values(removal_since=since)
        ).rowcount
    return count


def sync_removal_clock(conn: Connection, now: dt.datetime) -> tuple[int, int]:
    """Align ``removal_since`` with ``tgt_extensions`` and the 3CX snapshot (two set-based updates).

    Started (``now``) for an active mapping of a removed, unprotected user whose extension 3CX
    holds disabled (e.g. disabled before ``disable_then_delete`` was chosen, or by hand); cleared
    for a protected user, or one whose extension 3CX holds enabled (re-enabled by hand; for a
    removed user the plan disables it again and the clock starts again then). A user who is back
    keeps the clock until the re-enable reaches 3CX (the plan says "back within the grace period").

    :returns: ``(started, cleared)``.
    """
    _require_aware(now)
    target = select(tgt_extensions.c.user_id).where(tgt_extensions.c.user_id == extension_map.c.user_id)
    pbx = select(cur_extensions.c.threecx_id).where(cur_extensions.c.threecx_id == extension_map.c.threecx_id)
    started = conn.execute(
        update(extension_map)
        .where(extension_map.c.status == "active", extension_map.c.removal_since.is_(None),
               exists(target.where(tgt_extensions.c.state != "active", tgt_extensions.c.protection.is_(None))),
               exists(pbx.where(cur_extensions.c.enabled.is_(False))))
        .values(removal_since=now)
    ).rowcount
    cleared = conn.execute(
        update(extension_map)
        .where(extension_map.c.removal_since.is_not(None),
               exists(target.where(tgt_extensions.c.protection.is_not(None)))
               | exists(pbx.where(cur_extensions.c.enabled.is_(True))))
        .values(removal_since=None)
    ).rowcount
    return started, cleared


def grace_expired_user_ids(conn: Connection, delete_after_days: int, now: dt.datetime,
                           since: dt.datetime | None = None) -> set[str]:
    """Users whose extension has been disabled for ``delete_after_days`` or more (a range scan of
    the ``removal_since`` index: the cheap check a delta run makes for ``disable_then_delete``).

    :param since: only grace periods that ran out after this instant (a delta run passes the start
        of the last applied run, so a delete that was already planned, e.g. rejected at approval,
        is not asked for again every few minutes; the full sync passes ``None``).
    """
    _require_aware(now)
    grace = dt.timedelta(days=delete_after_days)
    query = select(extension_map.c.user_id).where(extension_map.c.removal_since <= now - grace,
                                                  extension_map.c.status == "active")
    if since is not None:
        query = query.where(extension_map.c.removal_since > since - grace)
    return set(conn.execute(query).scalars())


def reactivate_numbers(conn: Connection, user_ids: Iterable[str]) -> int:
    """Mark released mappings active again: their user's extension was re-created with the kept
    number (the user came back within the quarantine).

    :returns: rows written.
    """
    count = 0
    for batch in _chunks(sorted(set(user_ids))):
        count += conn.execute(
            update(extension_map)
            .where(extension_map.c.user_id.in_(list(batch)), extension_map.c.status == "released")
            .values(status="active", released_at=None, removal_since=None)
        ).rowcount
    return count


def purge_expired_quarantine(conn: Connection, quarantine_days: int, now: dt.datetime) -> int:
    """Delete released mappings older than ``quarantine_days``, freeing their numbers.

    :returns: rows deleted.
    :raises ValueError: negative ``quarantine_days`` or naive ``now``.
    """
    _require_aware(now)
    if quarantine_days < 0:
        raise ValueError("quarantine_days must be >= 0")
    cutoff = now - dt.timedelta(days=quarantine_days)
    result = conn.execute(
        delete(extension_map).where(extension_map.c.status == "released", extension_map.c.released_at <= cutoff)
    )
    return result.rowcount
