"""``sync_runs``, ``sync_plan``, ``sync_audit`` and ``sync_notes``: runs, their plan, audit and notes.

Every function takes an open :class:`~sqlalchemy.engine.Connection` and never
commits (see :mod:`m365_3cx.staging.bulk`).
"""

from __future__ import annotations

import datetime as dt
import json
from collections.abc import Collection, Iterable, Mapping, Sequence
from typing import Any, Final

from sqlalchemy import delete, select, update
from sqlalchemy.engine import Connection

from m365_3cx.staging.bulk import _chunks, _insert_many, _py, _require_aware, upsert
from m365_3cx.staging.schema import sync_audit, sync_notes, sync_plan, sync_runs

__all__ = [
    "NOTE_SEVERITIES",
    "PLAN_STATUSES",
    "RUN_STATUSES",
    "add_audit",
    "add_notes",
    "add_record_notes",
    "finish_run",
    "load_plan",
    "record_run_error",
    "save_plan",
    "set_plan_status",
    "set_plan_statuses",
    "start_run",
]

PLAN_STATUSES: Final = frozenset({"planned", "applied", "failed", "skipped", "dry_run", "rejected"})
RUN_STATUSES: Final = frozenset({"running", "success", "failed"})
#: ``sync_notes.severity`` values (see :mod:`m365_3cx.transform.notes`).
NOTE_SEVERITIES: Final = ("info", "warning", "error")


def start_run(
    conn: Connection,
    run_key: str,
    dag_id: str,
    run_id: str,
    mode: str,
    dry_run: bool,
    now: dt.datetime,
    dry_reason: str | None = None,
) -> None:
    """Record a run as ``running``; a retry of the same ``run_key`` resets it.

    :param mode: ``full``, ``delta`` or ``on_demand`` (a run with ``only_users``).
    :param dry_reason: why the run is dry (see :mod:`m365_3cx.pipeline.safety`); ``None`` when it writes.
    :raises ValueError: bad ``mode``, ``run_key`` longer than 250 characters, or naive ``now``.
    """
    _require_aware(now)
    if mode not in ("full", "delta", "on_demand"):
        raise ValueError(f"mode must be full, delta or on_demand, got {mode!r}")
    if not run_key or len(run_key) > 250:
        raise ValueError("run_key must be 1..250 characters")
    row = {
        "run_key": run_key,
        "dag_id": dag_id,
        "run_id": run_id,
        "mode": mode,
        "dry_run": bool(dry_run),
        "dry_reason": dry_reason if dry_run else None,
        "status": "running",
        "started_at": now,
        "finished_at": None,
        "counts": None,
    }
    upsert(conn, sync_runs, [row], ["run_key"])


def finish_run(conn: Connection, run_key: str, status: str, counts: Mapping[str, Any] | None, now: dt.datetime) -> None:
    """Close a run with ``status`` and its counts.

    :param status: ``success`` or ``failed``.
    :raises ValueError: bad status or naive ``now``.
    :raises LookupError: no such run (call :func:`start_run` first).
    """
    _require_aware(now)
    if status not in RUN_STATUSES:
        raise ValueError(f"status must be one of {sorted(RUN_STATUSES)}, got {status!r}")
    result = conn.execute(
        update(sync_runs)
        .where(sync_runs.c.run_key == run_key)
        .values(status=status, finished_at=now, counts=dict(counts) if counts is not None else None)
    )
    if result.rowcount == 0:
        raise LookupError(f"no sync run {run_key!r}")


def record_run_error(conn: Connection, run_key: str, message: str, now: dt.datetime) -> bool:
    """Remember the latest task failure of a run (the whole scrubbed message) and mark it failed.

    :returns: ``False`` when the run has no row yet (it failed before ``start_run``).
    """
    _require_aware(now)
    result = conn.execute(
        update(sync_runs).where(sync_runs.c.run_key == run_key).values(last_error=message[:8000], status="failed",
                                                                        finished_at=now)
    )
    return result.rowcount > 0


def save_plan(conn: Connection, run_key: str, changes: Sequence[Mapping[str, Any]]) -> int:
    """Replace the plan of ``run_key``; rows get ``seq`` 1..n in the given order.

    :param changes: dicts with ``action``, ``object_type``, ``object_key``, ``number``,
        ``threecx_id``, ``changes`` (``{field: [before, after]}``), ``reason``, ``status``
        (default ``planned``).
    :returns: rows written.
    :raises ValueError: unknown status.
    """
    conn.execute(delete(sync_plan).where(sync_plan.c.run_key == run_key))
    rows: list[dict[str, Any]] = []
    for seq, change in enumerate(changes, start=1):
        status = change.get("status") or "planned"
        if status not in PLAN_STATUSES:
            raise ValueError(f"plan status must be one of {sorted(PLAN_STATUSES)}, got {status!r}")
        fields = change.get("changes") or {}
        rows.append(
            {
                "run_key": run_key,
                "seq": seq,
                "action": change["action"],
                "object_type": change.get("object_type") or "extension",
                "object_key": change["object_key"],
                "number": change.get("number"),
                "threecx_id": change.get("threecx_id"),
                "changes": {str(k): _jsonable(v) for k, v in fields.items()},
                "reason": change.get("reason"),
                "status": status,
            }
        )
    return _insert_many(conn, sync_plan, rows)


def load_plan(conn: Connection, run_key: str, statuses: Collection[str] | None = None) -> list[dict[str, Any]]:
    """Read the plan rows of ``run_key`` in ``seq`` order (``changes`` decoded to a dict).

    :param statuses: only rows with one of these statuses; ``None`` = all.
    """
    query = select(sync_plan).where(sync_plan.c.run_key == run_key).order_by(sync_plan.c.seq)
    if statuses is not None:
        query = query.where(sync_plan.c.status.in_(sorted(statuses)))
    return [dict(row._mapping) for row in conn.execute(query)]


def _jsonable(value: Any) -> Any:
    value = _py(value)
    if isinstance(value, list):
        return [_jsonable(v) for v in value]
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, dt.datetime):
        return value.isoformat()
    return value


def set_plan_status(conn: Connection, run_key: str, seq: int, status: str) -> bool:
    """Set the status of one plan row.

    :returns: ``True`` when the row exists.
    :raises ValueError: unknown status.
    """
    if status not in PLAN_STATUSES:
        raise ValueError(f"plan status must be one of {sorted(PLAN_STATUSES)}, got {status!r}")
    result = conn.execute(
        update(sync_plan).where(sync_plan.c.run_key == run_key, sync_plan.c.seq == seq).values(status=status)
    )
    return result.rowcount > 0


def set_plan_statuses(conn: Connection, run_key: str, statuses: Mapping[int, str]) -> int:
    """Set the status of many plan rows: one ``UPDATE .. WHERE seq IN (..)`` per status and 500 rows.

    :param statuses: ``{seq: status}``.
    :returns: rows updated.
    :raises ValueError: unknown status.
    """
    by_status: dict[str, list[int]] = {}
    for seq, status in statuses.items():
        if status not in PLAN_STATUSES:
            raise ValueError(f"plan status must be one of {sorted(PLAN_STATUSES)}, got {status!r}")
        by_status.setdefault(status, []).append(int(seq))
    count = 0
    for status, seqs in sorted(by_status.items()):
        for batch in _chunks(sorted(seqs)):
            count += conn.execute(
                update(sync_plan).where(sync_plan.c.run_key == run_key, sync_plan.c.seq.in_(list(batch)))
                .values(status=status)
            ).rowcount
    return count


def _as_text(value: Any) -> str | None:
    value = _py(value)
    if value is None or isinstance(value, str):
        return value
    return json.dumps(_jsonable(value), ensure_ascii=False)


def add_audit(conn: Connection, rows: Iterable[Mapping[str, Any]]) -> int:
    """Append audit rows (one per field written).

    Each row: ``run_key``, ``at``, ``action``, ``object_type``, ``object_key``, ``number``,
    ``threecx_id``, ``field``, ``before``, ``after``, ``result`` (``ok|failed|skipped``), ``error``.
    ``before``/``after`` that are not strings are stored as JSON text.

    :returns: rows written.
    :raises ValueError: unknown columns.
    """
    from m365_3cx.staging.boundary import storable_row

    data = []
    for row in rows:
        item = dict(row)
        for key in ("before", "after"):
            if key in item:
                item[key] = _as_text(item[key])
        data.append(storable_row(sync_audit, item))  # a value read from 3CX never fails its audit row
    return _insert_many(conn, sync_audit, data)


def add_notes(
    conn: Connection,
    run_key: str,
    notes: Iterable[Mapping[str, Any]],
    *,
    step: str = "",
    now: dt.datetime | None = None,
) -> int:
    """Replace the notes of ``(run_key, step)`` (so a retried step does not duplicate them).

    :param notes: dicts with ``object_type``, ``object_key``, ``record_label``, ``field``,
        ``severity`` (``info|warning|error``), ``message`` and optionally ``at``.
    :param step: the step that produced the notes (e.g. ``transform``).
    :param now: default ``at`` (aware UTC; default: current time).
    :returns: rows written.
    :raises ValueError: unknown severity or columns.
    """
    when = _require_aware(now) if now is not None else dt.datetime.now(dt.UTC)
    conn.execute(delete(sync_notes).where(sync_notes.c.run_key == run_key, sync_notes.c.step == step))
    return _insert_many(conn, sync_notes, [_note_row(run_key, step, note, when) for note in notes])


def add_record_notes(
    conn: Connection,
    run_key: str,
    notes: Iterable[Mapping[str, Any]],
    *,
    step: str,
    object_type: str,
    object_keys: Iterable[str],
    now: dt.datetime | None = None,
) -> int:
    """Replace the notes of ``(run_key, step)`` about the given records only.

    For steps that write notes page by page in the page's own transaction (the sanitising
    boundary of the extracts): a retried page replaces its records' notes, other pages' stay.

    :param notes: as for :func:`add_notes`, each about one of ``object_keys``.
    :param object_type: the records' object type.
    :param object_keys: every record of the page (also those without a note now).
    :returns: rows written.
    :raises ValueError: unknown severity or columns.
    """
    when = _require_aware(now) if now is not None else dt.datetime.now(dt.UTC)
    keys = sorted({str(k)[:256] for k in object_keys})
    for batch in _chunks(keys):
        conn.execute(delete(sync_notes).where(
            sync_notes.c.run_key == run_key, sync_notes.c.step == step, sync_notes.c.object_type == object_type,
            sync_notes.c.object_key.in_(list(batch))))
    return _insert_many(conn, sync_notes, [_note_row(run_key, step, note, when) for note in notes])


def _note_row(run_key: str, step: str, note: Mapping[str, Any], when: dt.datetime) -> dict[str, Any]:
    """One ``sync_notes`` row; texts cleaned and clipped to the columns (a note never fails its insert)."""
    from m365_3cx.sanitize import clean_text

    severity = note.get("severity") or "warning"
    if severity not in NOTE_SEVERITIES:
        raise ValueError(f"note severity must be one of {', '.join(NOTE_SEVERITIES)}, got {severity!r}")

    def fit(value: Any, limit: int | None) -> str | None:
        return None if value is None else clean_text(str(value), limit=limit).value

    return {
        "run_key": run_key,
        "step": step,
        "at": note.get("at") or when,
        "object_type": note.get("object_type") or "extension",
        "object_key": fit(note.get("object_key"), 256),
        "record_label": fit(note.get("record_label"), 512),
        "field": fit(note.get("field"), 64),
        "severity": severity,
        "message": fit(note["message"], None) or "",
    }
