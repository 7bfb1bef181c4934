"""Staging side of Graph change notifications: the subscriptions and the durable queue.

``push_queue`` is the queue the receiver fills and the event-driven DAG drains. A row says only
"run the ``kind`` delta for ``user_id``" (never any payload). Its life: received (inserted by the
receiver) -> signalled (the AssetWatcher's trigger fired for it, once) -> claimed by one push run
-> done when that run finished. Rows of a run that failed are claimed again by the next push run.
Every function takes an open connection; the caller owns the transaction.
"""

from __future__ import annotations

import hashlib
from collections.abc import Collection, Iterable, Mapping
from datetime import datetime, timedelta
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from m365_3cx.staging.schema import push_queue, push_rejections, push_subscriptions, sync_runs

__all__ = [
    "KINDS",
    "claim",
    "claimed_users",
    "client_state_digest",
    "complete",
    "delete_subscriptions",
    "enqueue",
    "known_notification_ids",
    "load_subscriptions",
    "open_counts",
    "purge_done",
    "record_rejection",
    "save_subscription",
    "signal_new",
    "subscriptions_by_id",
]

#: Queue kinds: the delta a row asks for.
KINDS = ("users", "contacts", "events")


def client_state_digest(client_state: str) -> str:
    """SHA-256 (hex) of a clientState: what staging keeps instead of the secret."""
    return hashlib.sha256(client_state.encode("utf-8")).hexdigest()


# ------------------------------------------------------------------------------------ subscriptions


def subscriptions_by_id(conn: Connection, ids: Collection[str]) -> dict[str, dict[str, Any]]:
    """The stored subscriptions among ``ids`` (one query)."""
    if not ids:
        return {}
    rows = conn.execute(sa.select(push_subscriptions).where(push_subscriptions.c.subscription_id.in_(sorted(ids))))
    return {row.subscription_id: dict(row._mapping) for row in rows}


def load_subscriptions(conn: Connection) -> list[dict[str, Any]]:
    """Every stored subscription, by purpose and mailbox."""
    query = sa.select(push_subscriptions).order_by(push_subscriptions.c.purpose, push_subscriptions.c.user_id)
    return [dict(row._mapping) for row in conn.execute(query)]


def save_subscription(conn: Connection, row: Mapping[str, Any]) -> None:
    """Insert or replace one subscription row (keyed by ``subscription_id``)."""
    conn.execute(sa.delete(push_subscriptions).where(push_subscriptions.c.subscription_id == row["subscription_id"]))
    conn.execute(push_subscriptions.insert(), [dict(row)])


def update_subscriptions(conn: Connection, ids: Collection[str], **values: Any) -> int:
    """Set ``values`` on the subscriptions ``ids`` (one statement)."""
    if not ids:
        return 0
    result = conn.execute(sa.update(push_subscriptions)
                          .where(push_subscriptions.c.subscription_id.in_(sorted(ids))).values(**values))
    return int(result.rowcount or 0)


def delete_subscriptions(conn: Connection, ids: Collection[str]) -> int:
    """Forget the subscriptions ``ids``."""
    if not ids:
        return 0
    result = conn.execute(sa.delete(push_subscriptions).where(push_subscriptions.c.subscription_id.in_(sorted(ids))))
    return int(result.rowcount or 0)


# ------------------------------------------------------------------------------------------- queue


def known_notification_ids(conn: Connection, ids: Collection[str]) -> set[str]:
    """The notification ids among ``ids`` already received (replays)."""
    if not ids:
        return set()
    query = sa.select(push_queue.c.notification_id).where(push_queue.c.notification_id.in_(sorted(ids)))
    return {row[0] for row in conn.execute(query)}


def enqueue(conn: Connection, entries: Iterable[Mapping[str, Any]], now: datetime) -> int:
    """Queue ``entries`` (``kind``, ``user_id``, ``subscription_id``, ``source``, ``notification_id``).

    :return: rows inserted (one multi-row INSERT).
    """
    rows = [{"kind": e["kind"], "user_id": e.get("user_id"), "subscription_id": e.get("subscription_id"),
             "source": e.get("source", "notification"), "notification_id": e.get("notification_id"),
             "received_at": now} for e in entries]
    if rows:
        conn.execute(push_queue.insert(), rows)
    return len(rows)


def record_rejection(conn: Connection, reason: str, now: datetime) -> None:
    """Count one rejected post under ``reason`` (for the console)."""
    updated = conn.execute(sa.update(push_rejections).where(push_rejections.c.reason == reason)
                           .values(count=push_rejections.c.count + 1, last_at=now)).rowcount
    if not updated:
        conn.execute(push_rejections.insert(), [{"reason": reason, "count": 1, "last_at": now}])


def signal_new(conn: Connection, now: datetime, resignal_after: timedelta) -> int:
    """Mark the rows no trigger fired for yet (and open rows signalled longer ago than ``resignal_after``).

    The AssetWatcher's trigger fires when this returns > 0, so it fires once per batch of new rows,
    never again and again for rows that merely wait for their run; a row still unclaimed after
    ``resignal_after`` (a lost event, the DAG paused) signals once more.

    :return: rows marked.
    """
    stale = now - resignal_after
    open_unclaimed = sa.and_(push_queue.c.done_at.is_(None), push_queue.c.claimed_by.is_(None))
    condition = sa.and_(open_unclaimed, sa.or_(push_queue.c.signalled_at.is_(None), push_queue.c.signalled_at < stale))
    return int(conn.execute(sa.update(push_queue).where(condition).values(signalled_at=now)).rowcount or 0)


def claim(conn: Connection, run_key: str, now: datetime) -> dict[str, int]:
    """Claim every open row for ``run_key``: the unclaimed ones and those of runs no longer running.

    What arrives after this statement stays queued for the next run.

    :return: claimed rows per kind (``users``, ``contacts``, ``events``) plus ``mailboxes``.
    """
    running = sa.select(sync_runs.c.run_key).where(sync_runs.c.status == "running", sync_runs.c.run_key != run_key)
    claimable = sa.and_(push_queue.c.done_at.is_(None),
                        sa.or_(push_queue.c.claimed_by.is_(None), push_queue.c.claimed_by.not_in(running)))
    conn.execute(sa.update(push_queue).where(claimable).values(claimed_by=run_key, claimed_at=now))
    counts = {kind: 0 for kind in KINDS}
    query = (sa.select(push_queue.c.kind, sa.func.count()).where(push_queue.c.claimed_by == run_key,
                                                                 push_queue.c.done_at.is_(None))
             .group_by(push_queue.c.kind))
    for kind, count in conn.execute(query):
        counts[kind] = int(count)
    counts["mailboxes"] = len(claimed_users(conn, run_key, "contacts") | claimed_users(conn, run_key, "events"))
    return counts


def claimed_users(conn: Connection, run_key: str, kind: str) -> set[str]:
    """The distinct users (mailboxes) of ``kind`` the run claimed (bursts coalesce here)."""
    query = sa.select(push_queue.c.user_id).distinct().where(
        push_queue.c.claimed_by == run_key, push_queue.c.kind == kind, push_queue.c.user_id.is_not(None))
    return {row[0] for row in conn.execute(query)}


def complete(conn: Connection, run_key: str, now: datetime) -> int:
    """Mark the run's claimed rows done."""
    result = conn.execute(sa.update(push_queue).where(push_queue.c.claimed_by == run_key,
                                                      push_queue.c.done_at.is_(None)).values(done_at=now))
    return int(result.rowcount or 0)


def purge_done(conn: Connection, before: datetime) -> int:
    """Delete done rows older than ``before`` (their notification ids stop counting as replays then)."""
    result = conn.execute(sa.delete(push_queue).where(push_queue.c.done_at.is_not(None), push_queue.c.done_at < before))
    return int(result.rowcount or 0)


def open_counts(conn: Connection) -> dict[str, int]:
    """Open (not done) rows per kind."""
    query = (sa.select(push_queue.c.kind, sa.func.count()).where(push_queue.c.done_at.is_(None))
             .group_by(push_queue.c.kind))
    return {kind: int(n) for kind, n in conn.execute(query)}
