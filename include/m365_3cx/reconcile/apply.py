"""Apply a change set to 3CX: guards, writes, outcomes and audit rows.

:func:`check_mass_removal` runs before the first write. :func:`apply_changes`
executes the changes through an :class:`ExtensionWriter` (the 3CX client; a
few at once, see :mod:`m365_3cx.reconcile.concurrent`) and reports every
:class:`Outcome` chunk by chunk, so the caller can record them (``sync_audit``,
``sync_plan.status``) with bulk statements even when the run stops half-way.
A fatal error on one change fails that change only; a retriable
error (the client has already retried) stops the run and is re-raised, since
the next try re-plans from the current 3CX state and so repeats nothing that
was already applied.
"""

from __future__ import annotations

import json
import logging
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Protocol

from m365_3cx.errors import FatalError, MassRemovalError
from m365_3cx.reconcile.plan import CREATE, DELETE, DISABLE, UPDATE, Change
from m365_3cx.transform.values import as_int

log = logging.getLogger(__name__)

OK = "ok"
FAILED = "failed"
SKIPPED = "skipped"


class ExtensionWriter(Protocol):
    """The writes :func:`apply_changes` needs from the 3CX client."""

    def create_user(self, body: dict[str, Any]) -> dict[str, Any]:
        """Create a 3CX user and return it (with its ``Id``)."""
        ...

    def update_user(self, user_id: int, patch: dict[str, Any]) -> None:
        """Patch fields of the 3CX user ``user_id``."""
        ...

    def delete_user(self, user_id: int) -> None:
        """Delete the 3CX user ``user_id``."""
        ...


@dataclass(frozen=True)
class Outcome:
    """What happened to one change.

    :param change: the change.
    :param result: ``"ok"``, ``"failed"`` or ``"skipped"``.
    :param error: the error message (``str(exc)``, with code and target), or why it was skipped.
    :param threecx_id: the 3CX user id (the new one for a successful create).
    """

    change: Change
    result: str
    error: str | None
    threecx_id: int | None


@dataclass(frozen=True)
class ApplyCounts:
    """How many changes ended which way (what goes to XCom)."""

    created: int = 0
    updated: int = 0
    disabled: int = 0
    deleted: int = 0
    failed: int = 0
    skipped: int = 0

    def as_dict(self) -> dict[str, int]:
        """Return the counts as a plain dict.

        :return: ``{"created": ..., "updated": ..., ...}``.
        """
        return {
            "created": self.created,
            "updated": self.updated,
            "disabled": self.disabled,
            "deleted": self.deleted,
            "failed": self.failed,
            "skipped": self.skipped,
        }


def count_removals(changes: Iterable[Change]) -> int:
    """Count the changes that disable or delete an extension.

    :param changes: a change set.
    :return: the number of ``disable`` and ``delete`` changes.
    """
    return sum(1 for c in changes if c.action in (DISABLE, DELETE))


def removal_limit(managed_count: int, min_count: int, fraction: float) -> int:
    """Most removals the guard allows: ``max(min_count, floor(fraction * managed_count))``.

    :param managed_count: managed extensions before this run.
    :param min_count: removals always allowed.
    :param fraction: share of the managed extensions allowed.
    :return: the limit.
    """
    return max(min_count, math.floor(fraction * managed_count + 1e-9))


def check_mass_removal(
    changes: Iterable[Change], managed_count: int, min_count: int, fraction: float, allow: bool,
    *, noun: str = "managed extensions", scope_hint: str = "the user scope",
) -> None:
    """Stop a run that would disable or delete too many managed objects.

    :param changes: the change set about to be applied.
    :param managed_count: managed extensions before this run.
    :param min_count: removals always allowed (``guards.mass_removal_min``).
    :param fraction: share allowed (``guards.mass_removal_fraction``).
    :param allow: the run's ``allow_mass_removal`` param; when true the guard only logs.
    :param noun: what is being removed, for the message (e.g. ``"synced phonebook entries"``).
    :param scope_hint: what to check first, for the message.
    :raises MassRemovalError: when removals exceed the limit and ``allow`` is false.
    """
    removals = count_removals(changes)
    limit = removal_limit(managed_count, min_count, fraction)
    if removals <= limit:
        return
    message = (
        f"{removals} of {managed_count} {noun} would be disabled or deleted; "
        f"the guard allows at most max({min_count}, {fraction * 100:g}%) = {limit}. "
        f"Check {scope_hint}, or re-run with allow_mass_removal=true"
    )
    if allow:
        log.warning("Mass-removal guard overridden by allow_mass_removal: %d of %d", removals, managed_count)
        return
    raise MassRemovalError(message)


def create_body(change: Change, create_defaults: dict[str, Any] | None = None) -> dict[str, Any]:
    """The body of a create: ``create_defaults``, then ``Number`` and the managed fields.

    Managed fields win over a default of the same name.

    :param change: a ``create`` change.
    :param create_defaults: extra fields for new users (e.g. ``PrimaryGroupId``, ``Groups``).
    :return: the request body.
    """
    body: dict[str, Any] = dict(create_defaults or {})
    body["Number"] = change.number
    body.update({f: after for f, (_before, after) in change.fields.items()})
    return body


def _write(change: Change, writer: ExtensionWriter, create_defaults: dict[str, Any] | None) -> int | None:
    """Execute one change; return the 3CX user id it concerns."""
    if change.action == CREATE:
        created = writer.create_user(create_body(change, create_defaults))
        return as_int((created or {}).get("Id"))
    if change.threecx_id is None:
        raise FatalError(f"{change.action} of extension {change.number} has no 3CX user id")
    if change.action in (UPDATE, DISABLE):
        writer.update_user(change.threecx_id, {f: after for f, (_before, after) in change.fields.items()})
    elif change.action == DELETE:
        writer.delete_user(change.threecx_id)
    else:
        raise FatalError(f"unknown action {change.action!r}")
    return change.threecx_id


_COUNTER = {CREATE: "created", UPDATE: "updated", DISABLE: "disabled", DELETE: "deleted"}


def apply_changes(
    changes: list[Change],
    writer: ExtensionWriter,
    *,
    on_outcome: Callable[[Outcome], None] | None = None,
    on_outcomes: Callable[[list[Outcome]], None] | None = None,
    create_defaults: dict[str, Any] | None = None,
    dry_run: bool = False,
    concurrency: int = 1,
) -> ApplyCounts:
    """Execute a change set in plan order, reporting every outcome.

    Writes of one action (the plan orders creates, updates, disables, deletes) go up to
    ``concurrency`` at a time; outcomes are reported per chunk (:mod:`m365_3cx.reconcile.concurrent`).

    :param changes: the change set (already guarded).
    :param writer: the 3CX client.
    :param on_outcome: called once per change once its chunk is done.
    :param on_outcomes: called once per chunk with its outcomes (plan order); use it to record
        them with bulk statements.
    :param create_defaults: extra fields for every create (see :func:`create_body`).
    :param dry_run: write nothing; every outcome is ``skipped`` with error ``"dry run"``.
    :param concurrency: writes in flight at once.
    :return: the counts.
    :raises RetriableError: re-raised from the writer after reporting the failed
        change and the untried ones (as ``skipped``).
    """
    from m365_3cx.reconcile.concurrent import run_chunked

    def record(outcomes: list[Outcome]) -> None:
        if on_outcomes is not None:
            on_outcomes(outcomes)
        if on_outcome is not None:
            for outcome in outcomes:
                on_outcome(outcome)

    def write(change: Change) -> Outcome:
        if dry_run:
            return Outcome(change, SKIPPED, "dry run", change.threecx_id)
        try:
            tid = _write(change, writer, create_defaults)
        except FatalError as exc:
            log.warning("Change failed: %s of extension %s", change.action, change.number)
            return Outcome(change, FAILED, str(exc), change.threecx_id)
        return Outcome(change, OK, None, tid)

    def failed(change: Change, exc: BaseException) -> Outcome:
        return Outcome(change, FAILED, str(exc), change.threecx_id)

    def skipped(change: Change) -> Outcome:
        return Outcome(change, SKIPPED, "not tried: stopped after a retriable error", change.threecx_id)

    outcomes = run_chunked(changes, write, failed=failed, skipped=skipped, record=record,
                           concurrency=1 if dry_run else concurrency, phase=lambda c: c.action)
    return count_outcomes(outcomes)


def count_outcomes(outcomes: Iterable[Outcome]) -> ApplyCounts:
    """Tally outcomes into :class:`ApplyCounts` (``ok`` by action, else ``failed``/``skipped``)."""
    counts = dict.fromkeys(("created", "updated", "disabled", "deleted", "failed", "skipped"), 0)
    for outcome in outcomes:
        if outcome.result == OK:
            counts[_COUNTER[outcome.change.action]] += 1
        else:
            counts[FAILED if outcome.result == FAILED else SKIPPED] += 1
    return ApplyCounts(**counts)


def _as_text(value: object) -> str | None:
    """Audit values are text: ``None`` stays null, booleans are ``true``/``false``."""
    if value is None:
        return None
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return value
    return json.dumps(value, default=str)


def audit_rows(outcome: Outcome, run_key: str, now: datetime) -> list[dict[str, Any]]:
    """Turn one outcome into ``sync_audit`` rows (without the autoincrement id).

    One row per field written (a create's ``before`` is null); a change without
    fields (a delete) gives one row with ``field`` null.

    :param outcome: the outcome.
    :param run_key: the run it belongs to.
    :param now: timestamp written to ``at``.
    :return: the rows.
    """
    c = outcome.change
    base = {
        "run_key": run_key,
        "at": now,
        "action": c.action,
        "object_type": c.object_type,
        "object_key": c.object_key,
        "number": c.number,
        "threecx_id": outcome.threecx_id if outcome.threecx_id is not None else c.threecx_id,
        "result": outcome.result,
        "error": outcome.error,
    }
    if not c.fields:
        return [{**base, "field": None, "before": None, "after": None}]
    return [
        {
            **base,
            "field": f,
            "before": None if c.action == CREATE else _as_text(before),
            "after": _as_text(after),
        }
        for f, (before, after) in c.fields.items()
    ]
