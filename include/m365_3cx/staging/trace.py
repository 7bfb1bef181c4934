"""The per-user step trace of a provision-on-demand run (``sync_trace``).

A run triggered with ``only_users`` records, per user and step, what happened: the entry
resolved (or not), the Graph read, the scope decision, the number match, the planned
actions and the result of each write, then the same for the user's contacts and status.
Rows are ordered by ``seq`` (the step's place in :data:`STEPS`) then ``id``. Re-running a
step replaces that step's rows for the users it covers, so a retried task never duplicates.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Collection, Iterable, Mapping
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from m365_3cx.staging.schema import sync_trace

__all__ = ["STEPS", "on_demand_users", "replace_trace", "trace_rows", "unknown_entries"]

#: Steps in the order a user goes through them (``seq`` = position * 10).
STEPS: Final = (
    "resolve",  # the only_users entry -> a user (by UPN, Graph id or extension number), or unknown
    "read",  # the user read from Graph: found / not_found, key fields
    "scope",  # in_scope / removed, with the reason (group, filter, guest, disabled, deleted)
    "match",  # existing extension number, new number (policy), or none
    "plan",  # the planned extension action(s), or none
    "apply",  # the result of each write (ok / failed / skipped / dry_run)
    "contacts_read",  # the user's mailbox contacts read from Graph
    "phonebook_plan",  # phonebook entries the user sources: planned actions
    "phonebook_apply",  # results of those writes
    "status_decide",  # the 3CX status due now, with the reason
    "status_apply",  # result of the status switch
)
SEQ: Final = {step: (i + 1) * 10 for i, step in enumerate(STEPS)}


def trace_rows(run_key: str, step: str, entries: Iterable[Mapping[str, Any]], now: dt.datetime) -> list[dict[str, Any]]:
    """Rows for :func:`replace_trace`: each entry has ``user_id``, ``upn``, ``outcome`` and optional ``detail``.

    :raises KeyError: unknown step.
    """
    seq = SEQ[step]
    return [
        {"run_key": run_key, "user_id": e.get("user_id"), "upn": e.get("upn"), "step": step, "seq": seq,
         "outcome": str(e["outcome"])[:32], "detail": dict(e.get("detail") or {}), "at": now}
        for e in entries
    ]


def replace_trace(
    conn: Connection, run_key: str, step: str, rows: list[dict[str, Any]], *, user_ids: Collection[str] | None = None
) -> int:
    """Replace the ``(run_key, step)`` rows (only those of ``user_ids`` when given) with ``rows``.

    One delete and one multi-row insert, whatever the number of users.

    :returns: rows written.
    """
    query = sa.delete(sync_trace).where(sync_trace.c.run_key == run_key, sync_trace.c.step == step)
    if user_ids is not None:
        query = None if not user_ids else query.where(sync_trace.c.user_id.in_(sorted(user_ids)))
    if query is not None:
        conn.execute(query)
    if rows:
        conn.execute(sa.insert(sync_trace), rows)
    return len(rows)


def on_demand_users(conn: Connection, run_key: str) -> dict[str, str]:
    """The users an on-demand run resolved: Graph user id -> UPN (empty when the run is not on demand)."""
    query = sa.select(sync_trace.c.user_id, sync_trace.c.upn).where(
        sync_trace.c.run_key == run_key, sync_trace.c.step == "resolve", sync_trace.c.outcome == "found",
        sync_trace.c.user_id.is_not(None),
    )
    return {uid: upn or uid for uid, upn in conn.execute(query)}


def unknown_entries(conn: Connection, run_key: str) -> list[str]:
    """The ``only_users`` entries of a run that matched nobody, as given."""
    query = sa.select(sync_trace.c.upn).where(
        sync_trace.c.run_key == run_key, sync_trace.c.step == "resolve", sync_trace.c.outcome == "unknown"
    ).order_by(sync_trace.c.id)
    return [row[0] for row in conn.execute(query)]
