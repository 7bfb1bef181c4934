"""The go-live switch and removal approvals in staging: small queries the pipeline and the console share.

The go-live switch (``sync_control`` row ``writes_enabled``) is off on a fresh install: until an
operator turns it on through the ``m365_3cx_go_live`` DAG every run is a dry run. Each change is
also appended to ``sync_control_log`` (who, when, from what, why). Removal approvals
(``sync_approvals``) record the human decision on removals over the mass-removal guard.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass
from typing import Any, Final

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from m365_3cx.staging.bulk import upsert
from m365_3cx.staging.schema import sync_approvals, sync_control, sync_control_log

__all__ = [
    "APPROVAL_STATUSES",
    "WRITES_ENABLED",
    "Approval",
    "WritesState",
    "approval",
    "control_log",
    "decide_approval",
    "request_approval",
    "set_writes_enabled",
    "writes_enabled",
]

#: Name of the go-live switch in ``sync_control``.
WRITES_ENABLED: Final = "writes_enabled"

#: ``sync_approvals.status`` values; ``pending`` is the only one that is not a decision.
APPROVAL_STATUSES: Final = ("pending", "approved", "rejected", "timed_out", "overridden")


@dataclass(frozen=True)
class WritesState:
    """State of the go-live switch.

    :param enabled: whether runs may write to 3CX.
    :param changed_at: when it was last changed (``None``: never set, a fresh install).
    :param changed_by: the Airflow user who changed it.
    """

    enabled: bool
    changed_at: dt.datetime | None = None
    changed_by: str | None = None
    run_key: str | None = None
    note: str | None = None


def writes_enabled(conn: Connection) -> WritesState:
    """The go-live switch; off (``enabled=False``, never changed) when it was never set."""
    row = conn.execute(
        sa.select(sync_control).where(sync_control.c.name == WRITES_ENABLED)
    ).mappings().first()
    if row is None:
        return WritesState(False)
    return WritesState(bool(row["enabled"]), row["changed_at"], row["changed_by"], row["run_key"], row["note"])


def set_writes_enabled(
    conn: Connection, enabled: bool, *, changed_by: str, now: dt.datetime,
    run_key: str | None = None, note: str | None = None,
) -> WritesState:
    """Turn writes on or off and log the change (in the caller's transaction).

    :param changed_by: who asked for it (the Airflow user of the go-live DAG run); required.
    :raises ValueError: empty ``changed_by`` or naive ``now``.
    """
    if not changed_by or not changed_by.strip():
        raise ValueError("changed_by is required: a go-live change must name who made it")
    if now.tzinfo is None:
        raise ValueError("now must be timezone-aware")
    previous = conn.execute(
        sa.select(sync_control.c.enabled).where(sync_control.c.name == WRITES_ENABLED)
    ).scalar_one_or_none()
    row = {"name": WRITES_ENABLED, "enabled": bool(enabled), "changed_at": now,
           "changed_by": changed_by.strip()[:256], "run_key": run_key, "note": note}
    upsert(conn, sync_control, [row], ["name"])
    conn.execute(sync_control_log.insert(), [{
        "name": WRITES_ENABLED, "enabled": bool(enabled), "previous": previous, "changed_at": now,
        "changed_by": row["changed_by"], "run_key": run_key, "note": note,
    }])
    return writes_enabled(conn)


def control_log(conn: Connection, name: str = WRITES_ENABLED, limit: int = 50) -> list[dict[str, Any]]:
    """The latest changes of a switch, newest first."""
    query = (sa.select(sync_control_log).where(sync_control_log.c.name == name)
             .order_by(sync_control_log.c.changed_at.desc(), sync_control_log.c.id.desc()).limit(limit))
    return [dict(r) for r in conn.execute(query).mappings()]


@dataclass(frozen=True)
class Approval:
    """A run's request to remove more than the guard allows, and its decision."""

    run_key: str
    object_type: str
    plan_key: str
    status: str
    removals: int
    managed: int
    removal_limit: int
    requested_at: dt.datetime
    decided_at: dt.datetime | None = None
    decided_by: str | None = None

    @property
    def approved(self) -> bool:
        """Whether the removals may be applied (approved by a human, or ``allow_mass_removal``)."""
        return self.status in ("approved", "overridden")


def approval(conn: Connection, run_key: str, object_type: str) -> Approval | None:
    """The approval record of a run's removals of ``object_type``, if the guard tripped."""
    row = conn.execute(sa.select(sync_approvals).where(
        sync_approvals.c.run_key == run_key, sync_approvals.c.object_type == object_type
    )).mappings().first()
    if row is None:
        return None
    return Approval(row["run_key"], row["object_type"], row["plan_key"], row["status"], row["removals"],
                    row["managed"], row["removal_limit"], row["requested_at"], row["decided_at"],
                    row["decided_by"])


def request_approval(
    conn: Connection, *, run_key: str, object_type: str, plan_key: str, dag_id: str, run_id: str,
    task_id: str | None, removals: int, managed: int, removal_limit: int, now: dt.datetime,
    status: str = "pending", decided_by: str | None = None,
) -> None:
    """Record that a run's removals tripped the guard (``pending``, or ``overridden`` by the run's param).

    A retry of the same run resets an undecided request but never overwrites a decision.
    """
    if status not in ("pending", "overridden"):
        raise ValueError(f"a new approval request is pending or overridden, not {status!r}")
    existing = approval(conn, run_key, object_type)
    if existing is not None and existing.status not in ("pending",):
        return
    upsert(conn, sync_approvals, [{
        "run_key": run_key, "object_type": object_type, "plan_key": plan_key, "dag_id": dag_id,
        "run_id": run_id, "task_id": task_id, "removals": removals, "managed": managed,
        "removal_limit": removal_limit, "status": status, "requested_at": now,
        "decided_at": now if status == "overridden" else None, "decided_by": decided_by,
    }], ["run_key", "object_type"])


def decide_approval(
    conn: Connection, run_key: str, object_type: str, status: str, *, decided_by: str | None, now: dt.datetime,
) -> bool:
    """Store the decision on a pending request.

    :param status: ``approved``, ``rejected`` or ``timed_out``.
    :returns: whether a pending request was decided (``False``: none, or already decided).
    """
    if status not in ("approved", "rejected", "timed_out"):
        raise ValueError(f"decision must be approved, rejected or timed_out, not {status!r}")
    result = conn.execute(
        sa.update(sync_approvals)
        .where(sync_approvals.c.run_key == run_key, sync_approvals.c.object_type == object_type,
               sync_approvals.c.status == "pending")
        .values(status=status, decided_at=now, decided_by=(decided_by or None) and decided_by[:256])
    )
    return bool(result.rowcount)
