"""Retention of the staging history: delete old runs with their plans, audit, notes and traces.

Only history is purged: ``sync_runs``, ``sync_plan``, ``sync_audit``, ``sync_notes`` and
``sync_trace``. State the sync cannot rebuild (``extension_map``, ``phonebook_map``,
``presence_state``, ``delta_state``) and the staging/target tables are never touched.
Every table is cleaned with bulk statements (one delete per table, plus one per
:data:`KEY_CHUNK` old plan keys), never row by row.
"""

from __future__ import annotations

import datetime as dt
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from m365_3cx.staging.schema import sync_audit, sync_notes, sync_plan, sync_runs, sync_trace

__all__ = ["HISTORY_TABLES", "purge_history"]

#: The tables :func:`purge_history` deletes from.
HISTORY_TABLES: Final = ("sync_runs", "sync_plan", "sync_audit", "sync_notes", "sync_trace")
KEY_CHUNK: Final = 500


def _plan_base(plan_key: str) -> str:
    """The run key part of a ``sync_plan.run_key`` (``"<run key>#contacts"`` -> ``"<run key>"``, truncated)."""
    return plan_key.split("#", 1)[0]


def purge_history(conn: Connection, cutoff: dt.datetime) -> dict[str, Any]:
    """Delete the history older than ``cutoff`` (aware UTC).

    A run is old when it started before ``cutoff`` and is not ``running``; its plan rows
    (including the ``#contacts``/``#presence`` plans) go with it. Audit, notes and trace rows
    go by their own timestamp ``at``. Plan rows of no known run are left alone.

    :returns: rows deleted per table.
    :raises ValueError: ``cutoff`` is naive.
    """
    if cutoff.tzinfo is None or cutoff.utcoffset() is None:
        raise ValueError("cutoff must be an aware UTC datetime")
    deleted: dict[str, Any] = {}
    old_runs = sa.select(sync_runs.c.run_key).where(sync_runs.c.started_at < cutoff, sync_runs.c.status != "running")
    old_keys = {row[0] for row in conn.execute(old_runs)}
    old_bases = old_keys | {key[:240] for key in old_keys}
    plan_keys = [row[0] for row in conn.execute(sa.select(sync_plan.c.run_key).distinct())]
    doomed = [key for key in plan_keys if key in old_keys or _plan_base(key) in old_bases]
    plan_count = 0
    for start in range(0, len(doomed), KEY_CHUNK):
        chunk = doomed[start:start + KEY_CHUNK]
        plan_count += conn.execute(sa.delete(sync_plan).where(sync_plan.c.run_key.in_(chunk))).rowcount or 0
    deleted["sync_plan"] = plan_count
    for table in (sync_audit, sync_notes, sync_trace):
        deleted[table.name] = conn.execute(sa.delete(table).where(table.c.at < cutoff)).rowcount or 0
    deleted["sync_runs"] = conn.execute(
        sa.delete(sync_runs).where(sync_runs.c.started_at < cutoff, sync_runs.c.status != "running")
    ).rowcount or 0
    return deleted
