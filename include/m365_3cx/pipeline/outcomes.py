"""What every apply step shares: reading its stored plan back, recording each outcome."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

from m365_3cx.staging.runs import add_audit, load_plan, set_plan_status, set_plan_statuses

if TYPE_CHECKING:
    from m365_3cx.reconcile.plan import Change

#: Plan rows an apply step (re)tries: not yet applied (a retried task skips what already reached 3CX).
OPEN_STATUSES = ("planned", "failed", "skipped", "dry_run")


def load_changes(conn: Any, plan_key: str, object_type: str) -> list[tuple[int, Change]]:
    """The stored plan under ``plan_key`` as (seq, Change) in apply order, already applied rows left out."""
    from m365_3cx.reconcile.plan import Change

    changes = []
    for row in load_plan(conn, plan_key, statuses=OPEN_STATUSES):
        fields = {name: (pair[0], pair[1]) for name, pair in (row["changes"] or {}).items()}
        changes.append((row["seq"], Change(
            action=row["action"], object_key=row["object_key"], number=row["number"] or "",
            threecx_id=row["threecx_id"], fields=fields, reason=row["reason"] or "",
            object_type=row["object_type"] or object_type,
        )))
    return changes


def plan_status(result: str, dry_run: bool) -> str:
    """The ``sync_plan`` status for an outcome's result (``ok`` -> ``applied``)."""
    return "dry_run" if dry_run else {"ok": "applied"}.get(result, result)


def record_outcomes(
    conn: Any, *, plan_key: str, outcomes: Sequence[tuple[int, str, list[dict[str, Any]]]], dry_run: bool
) -> list[bool]:
    """Audit a chunk of outcomes and set their plan rows' statuses with bulk statements.

    :param outcomes: ``(seq, result, audit rows)`` per change, in the caller's transaction.
    :return: per outcome, whether the change reached 3CX (the caller then updates its mapping tables).
    """
    if not dry_run:
        add_audit(conn, [row for _, _, rows in outcomes for row in rows])
    set_plan_statuses(conn, plan_key, {seq: plan_status(result, dry_run) for seq, result, _ in outcomes})
    return [result == "ok" and not dry_run for _, result, _ in outcomes]


def record_outcome(
    conn: Any, *, plan_key: str, seq: int, result: str, audit_rows: list[dict[str, Any]], dry_run: bool
) -> bool:
    """Audit one outcome and set its plan row's status, in the caller's transaction (see :func:`record_outcomes`).

    :return: whether the change reached 3CX (the caller then updates its mapping tables).
    """
    if not dry_run:
        add_audit(conn, audit_rows)
    set_plan_status(conn, plan_key, seq, plan_status(result, dry_run))
    return result == "ok" and not dry_run


__all__ = ["OPEN_STATUSES", "load_changes", "plan_status", "record_outcome", "record_outcomes"]
