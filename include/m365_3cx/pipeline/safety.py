"""The one write gate and the review of guarded removals, shared by every feature's apply step.

:func:`write_gate` is asked by every step that would write to 3CX (``apply_users``,
``apply_phonebook``, ``apply_presence``) and by the steps whose staging side effects differ in a
dry run (number assignment, presence baselines): the run is dry when its ``dry_run`` param asks
for it, when writes are off (the go-live switch, :mod:`m365_3cx.staging.control`), or when it
started dry. The decision is logged and stored in ``sync_runs`` (``dry_run``, ``dry_reason``).

:func:`review_removals` measures a stored plan's removals against the mass-removal guard; the
approval task lists them (:func:`removal_body`) and the apply step honours the decision
(:func:`removals_decision`).
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, Final

import sqlalchemy as sa

from m365_3cx.staging import control
from m365_3cx.staging.schema import sync_plan, sync_runs

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

    from m365_3cx.reconcile.plan import Change
    from m365_3cx.settings import Settings

log = logging.getLogger(__name__)

REQUESTED: Final = "requested"
WRITES_OFF: Final = "writes_off"
_REASON_TEXT: Final = {REQUESTED: "the run's dry_run param is set", WRITES_OFF: "writes are off (not live)"}

#: Object types whose removals are guarded, and the noun used in messages.
GUARDED: Final = {"extension": "managed extensions", "contact": "synced phonebook entries"}


@dataclass(frozen=True)
class WriteDecision:
    """Whether a step may write to 3CX.

    :param dry_run: write nothing.
    :param reason: ``None`` (writes go ahead), or a comma-separated list of ``requested``/``writes_off``.
    """

    dry_run: bool
    reason: str | None = None

    def describe(self) -> str:
        """Readable reason, e.g. ``"writes are off (not live)"``."""
        if not self.reason:
            return "writes enabled"
        return "; ".join(_REASON_TEXT.get(part, part) for part in self.reason.split(","))


def decide(requested: bool, writes: control.WritesState, started_dry: str | None = None) -> WriteDecision:
    """The effective dry-run decision: requested OR writes off OR the run started dry (pure).

    :param started_dry: the run's stored ``dry_reason`` (a run that started dry stays dry).
    """
    reasons = [part for part in (started_dry or "").split(",") if part]
    if requested:
        reasons.append(REQUESTED)
    if not writes.enabled:
        reasons.append(WRITES_OFF)
    ordered = [r for r in (REQUESTED, WRITES_OFF) if r in reasons]
    return WriteDecision(True, ",".join(ordered)) if ordered else WriteDecision(False)


def write_gate(engine: Engine, run_key: str, requested: bool, *, step: str) -> WriteDecision:
    """Ask whether ``step`` of run ``run_key`` may write to 3CX; log it and record a dry run in ``sync_runs``.

    :param requested: the run's ``dry_run`` param.
    :param step: the asking step, for the log.
    """
    with engine.begin() as conn:
        writes = control.writes_enabled(conn)
        row = conn.execute(
            sa.select(sync_runs.c.dry_run, sync_runs.c.dry_reason).where(sync_runs.c.run_key == run_key)
        ).first()
        decision = decide(requested, writes, row.dry_reason if row is not None and row.dry_run else None)
        if decision.dry_run and row is not None and (not row.dry_run or row.dry_reason != decision.reason):
            conn.execute(sa.update(sync_runs).where(sync_runs.c.run_key == run_key)
                         .values(dry_run=True, dry_reason=decision.reason))
    if decision.dry_run:
        log.info("%s: dry run: %s", step, decision.describe())
    return decision


# ---------------------------------------------------------------- guarded removals


@dataclass(frozen=True)
class RemovalReview:
    """A stored plan's removals measured against the mass-removal guard.

    :param removals: the removal rows (``sync_plan`` rows as dicts) in plan order.
    """

    object_type: str
    plan_key: str
    removals: list[dict[str, Any]]
    managed: int
    limit: int

    @property
    def tripped(self) -> bool:
        return len(self.removals) > self.limit

    def counts(self) -> dict[str, Any]:
        return {"object_type": self.object_type, "removals": len(self.removals), "managed": self.managed,
                "limit": self.limit, "tripped": self.tripped}


def review_removals(
    rows: list[dict[str, Any]], object_type: str, plan_key: str, managed: int, settings: Settings
) -> RemovalReview:
    """Measure the open plan rows' disables/deletes against ``guards`` (pure)."""
    from m365_3cx.reconcile.apply import removal_limit

    removals = [r for r in rows if r["action"] in ("disable", "delete")]
    limit = removal_limit(managed, settings.guards.mass_removal_min, settings.guards.mass_removal_fraction)
    return RemovalReview(object_type, plan_key, removals, managed, limit)


def _cell(value: object) -> str:
    text = "" if value is None else str(value)
    return text.replace("|", "\\|").replace("\r", " ").replace("\n", " ").strip() or "-"


def removal_body(reviews: list[RemovalReview], labels: dict[str, dict[str, Any]], *, dag_id: str,
                 run_id: str) -> str:
    """Markdown body of the approval request: every removal (who, number, name, reason).

    :param labels: per ``(object_type, object_key)`` joined as ``"type:key"`` ->
        ``{"upn": ..., "name": ...}`` (missing keys render as ``-``).
    """
    lines = [f"Run `{run_id}` of `{dag_id}` would remove more than the mass-removal guard allows.",
             "", "**Approve** applies the whole plan, removals included. **Reject** (also the answer when "
             "nobody answers in time) applies everything except these removals.", ""]
    for review in reviews:
        noun = GUARDED.get(review.object_type, review.object_type)
        lines += [f"### {len(review.removals)} of {review.managed} {noun} would be removed "
                  f"(the guard allows {review.limit})", ""]
        if review.object_type == "extension":
            lines += ["| # | action | UPN | extension | name | reason |", "|---|---|---|---|---|---|"]
        else:
            lines += ["| # | action | entry | phone | name | reason |", "|---|---|---|---|---|---|"]
        for i, row in enumerate(review.removals, 1):
            label = labels.get(f"{review.object_type}:{row['object_key']}", {})
            who = label.get("upn") or row["object_key"]
            number = row.get("number") or label.get("number")
            lines.append(f"| {i} | {row['action']} | {_cell(who)} | {_cell(number)} | {_cell(label.get('name'))} "
                         f"| {_cell(row.get('reason'))} |")
        lines.append("")
    return "\n".join(lines)


def filter_rejected(changes: list[Change]) -> tuple[list[Change], list[Change]]:
    """Split a change set into (kept, removals) for a rejected approval."""
    kept = [c for c in changes if c.action not in ("disable", "delete")]
    removals = [c for c in changes if c.action in ("disable", "delete")]
    return kept, removals


def guard_removals(
    engine: Engine, run_key: str, plan_key: str, object_type: str, planned: list[tuple[int, Change]],
    managed: int, settings: Settings, *, allow: bool, dry_run: bool, scope_hint: str,
) -> list[tuple[int, Change]]:
    """The mass-removal guard of an apply step: what of ``planned`` may be applied.

    Within the guard, or with ``allow`` (``allow_mass_removal``), or approved: everything. Rejected
    or timed out: everything but the removals, whose plan rows become ``rejected``. A dry run
    writes nothing, so it only logs a tripped guard.

    :raises MassRemovalError: the guard tripped and nobody decided (the approval task did not run).
    """
    from m365_3cx.errors import MassRemovalError
    from m365_3cx.reconcile.apply import check_mass_removal, count_removals, removal_limit

    changes = [change for _, change in planned]
    removals = count_removals(changes)
    limit = removal_limit(managed, settings.guards.mass_removal_min, settings.guards.mass_removal_fraction)
    if removals <= limit:
        return planned
    noun = GUARDED.get(object_type, object_type)
    if dry_run:
        log.warning("dry run: %d of %d %s would be removed, over the guard's %d; a live run asks for approval",
                    removals, managed, noun, limit)
        return planned
    decided = removals_decision(engine, run_key, object_type)
    if allow or (decided is not None and decided.approved):
        check_mass_removal(changes, managed, settings.guards.mass_removal_min,
                           settings.guards.mass_removal_fraction, allow=True, noun=noun, scope_hint=scope_hint)
        log.info("%d %s removals applied: %s", removals, object_type,
                 "allow_mass_removal" if allow else f"approved by {decided.decided_by if decided else '?'}")
        return planned
    if decided is not None and decided.status in ("rejected", "timed_out"):
        kept = [(seq, c) for seq, c in planned if c.action not in ("disable", "delete")]
        dropped = [seq for seq, c in planned if c.action in ("disable", "delete")]
        with engine.begin() as conn:  # one statement, however many removals
            conn.execute(sa.update(sync_plan).where(sync_plan.c.run_key == plan_key, sync_plan.c.seq.in_(dropped))
                         .values(status="rejected"))
        log.warning("%d %s removals not applied (%s); applying the other %d changes",
                    len(dropped), object_type, decided.status, len(kept))
        return kept
    check_mass_removal(changes, managed, settings.guards.mass_removal_min,
                       settings.guards.mass_removal_fraction, allow=False, noun=noun, scope_hint=scope_hint)
    raise MassRemovalError(f"{removals} {noun} removals over the guard without a decision")  # not reached


def removals_decision(engine: Engine, run_key: str, object_type: str) -> control.Approval | None:
    """The stored approval of this run's removals of ``object_type`` (``None``: the guard never tripped)."""
    with engine.connect() as conn:
        return control.approval(conn, run_key, object_type)


def record_decision(engine: Engine, run_key: str, object_type: str, chosen: str, *, responded_by: str | None,
                    timed_out: bool, now: datetime) -> str:
    """Store a human decision (``Approve``/``Reject``) or a timeout; returns the stored status."""
    from m365_3cx.staging.runs import add_audit

    status = "timed_out" if timed_out else ("approved" if chosen == "Approve" else "rejected")
    with engine.begin() as conn:
        if control.decide_approval(conn, run_key, object_type, status, decided_by=responded_by, now=now):
            request = control.approval(conn, run_key, object_type)
            add_audit(conn, [{
                "run_key": run_key, "at": now, "action": "approval", "object_type": "approval",
                "object_key": object_type, "number": None, "threecx_id": None, "field": "removals",
                "before": f"pending: {request.removals if request else '?'} removals",
                "after": f"{status} by {responded_by}" if responded_by else status,
                "result": "ok", "error": None,
            }])
    log.info("approval of %s removals for %s: %s by %s", object_type, run_key, status, responded_by or "timeout")
    return status


__all__ = [
    "GUARDED",
    "REQUESTED",
    "WRITES_OFF",
    "RemovalReview",
    "WriteDecision",
    "decide",
    "filter_rejected",
    "guard_removals",
    "record_decision",
    "removal_body",
    "removals_decision",
    "review_removals",
    "write_gate",
]
