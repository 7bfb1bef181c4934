"""Presence: when to switch a user's 3CX profile, and switching it.

The rule (:func:`decide_switch`), with D the desired profile, C the user's current profile in
3CX, L the profile the sync set last (``presence_state``; none yet counts as the default) and
Δ the default profile (``presence.mapping["default"]``):

* ``C == D``: nothing to write. When ``C == Δ`` and ``L != Δ`` the sync records Δ as its
  *baseline* (L := Δ): user and calendar agree again, so the sync owns the status from here on.
* ``C != D``, mode ``override``: switch to D.
* ``C != D``, mode ``respect``: switch only if the sync owns the current status, i.e.
  ``C == (L or Δ)``. A status the user chose by hand (anything else, e.g. ``Custom 1``, or
  ``Available`` picked during a meeting the sync had switched to ``Away``) is left alone: the sync
  switches them neither to a calendar status nor back to the default, until the user's status
  and the calendar agree again (then the baseline rule above hands control back).

A delta run reads C only of the users whose plan can depend on it (:func:`needs_current`): for
a user whose stored decision stands and whose D is what the sync last set on that same 3CX user,
C is L unless someone changed the status by hand (C == D: nothing to write), so the plan treats
the status as unchanged; the hourly and full runs read everyone and see such hand changes.

Every switch sets L := D. :func:`apply_switches` writes through a :class:`ProfileWriter` (the
3CX client) and reports every outcome as it happens so the caller can audit it.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Collection, Iterable, Mapping
from dataclasses import dataclass
from typing import Final, Protocol

from m365_3cx.errors import FatalError

log = logging.getLogger(__name__)

__all__ = [
    "ACTION",
    "FIELD",
    "OBJECT_TYPE",
    "DesiredProfile",
    "PresencePlan",
    "ProfileSwitch",
    "ProfileWriter",
    "SwitchOutcome",
    "apply_switches",
    "audit_row",
    "decide_switch",
    "needs_current",
    "plan_row",
    "plan_switches",
]

OBJECT_TYPE: Final = "presence"
ACTION: Final = "set_profile"
FIELD: Final = "CurrentProfileName"

SET: Final = "set"
BASELINE: Final = "baseline"
KEEP: Final = "keep"
RESPECT: Final = "respect"


def decide_switch(desired: str, current: str | None, last_set: str | None, default: str, mode: str) -> str:
    """Classify one user: ``set`` (switch to ``desired``), ``baseline``, ``keep`` or ``respect``.

    :param desired: D, the profile due now.
    :param current: C, the profile 3CX reports (``None`` counts as ``default``).
    :param last_set: L, the profile the sync set last (``None``: never).
    :param default: Δ, ``presence.mapping["default"]``.
    :param mode: ``respect`` or ``override``.
    :raises ValueError: unknown ``mode``.
    """
    if mode not in ("respect", "override"):
        raise ValueError(f"mode must be respect or override, got {mode!r}")
    now_current = current or default
    if now_current == desired:
        return BASELINE if now_current == default and last_set != default else KEEP
    if mode == "override" or now_current == (last_set or default):
        return SET
    return RESPECT


@dataclass(frozen=True)
class DesiredProfile:
    """The profile a managed user should have now (a ``tgt_presence`` row)."""

    user_id: str
    threecx_id: int
    number: str
    profile: str
    reason: str


@dataclass(frozen=True)
class ProfileSwitch:
    """One planned ``CurrentProfileName`` write."""

    user_id: str
    threecx_id: int
    number: str
    before: str | None
    after: str
    reason: str


@dataclass(frozen=True)
class PresencePlan:
    """What :func:`plan_switches` decided.

    :param switches: writes to make.
    :param baselines: ``(user_id, threecx_id, profile)`` to record as the sync's baseline (no write).
    :param respected: ids of users whose hand-chosen status was left alone.
    :param unchanged: users already at their desired profile.
    """

    switches: tuple[ProfileSwitch, ...]
    baselines: tuple[tuple[str, int, str], ...]
    respected: tuple[str, ...]
    unchanged: int


def needs_current(want: DesiredProfile, last_set: tuple[int | None, str] | None, decided: bool) -> bool:
    """Whether the plan of this user can depend on its current 3CX status when nobody changed it by hand.

    Not when the stored decision stands (``decided`` false) and the desired profile is the one the
    sync last set (or took as baseline) on the same 3CX user: then C == L == D, a ``keep``.

    :param last_set: ``(threecx_id, profile)`` of the user's ``presence_state`` row, ``None`` without one.
    :param decided: the user was decided afresh in this run.
    """
    return decided or last_set is None or last_set != (want.threecx_id, want.profile)


def plan_switches(
    desired: Iterable[DesiredProfile],
    current: Mapping[int, str | None],
    last_set: Mapping[str, str],
    default: str,
    mode: str,
    *,
    unread: Collection[str] = (),
) -> PresencePlan:
    """Apply :func:`decide_switch` to every managed user present in 3CX.

    :param desired: desired profiles of the managed users.
    :param current: ``CurrentProfileName`` by 3CX user id (users missing here are not in 3CX: skipped).
    :param last_set: ``presence_state.profile`` by Graph user id.
    :param default: the default profile.
    :param mode: ``respect`` or ``override``.
    :param unread: Graph ids of users whose current profile was not read (a delta run's users for
        whom :func:`needs_current` is false): their status counts as the sync's last set one, i.e.
        as their desired profile, so they are unchanged.
    :raises ValueError: unknown ``mode``; an unread user whose desired profile is not its last set one.
    """
    switches: list[ProfileSwitch] = []
    baselines: list[tuple[str, int, str]] = []
    respected: list[str] = []
    unchanged = 0
    if mode not in ("respect", "override"):
        raise ValueError(f"mode must be respect or override, got {mode!r}")
    skip = frozenset(unread)
    for want in sorted(desired, key=lambda d: d.user_id):
        if want.user_id in skip:
            if last_set.get(want.user_id) != want.profile:
                raise ValueError(f"user {want.user_id}: desired {want.profile!r} differs from the last set "
                                 f"{last_set.get(want.user_id)!r}; its current profile must be read")
            unchanged += 1
            continue
        if want.threecx_id not in current:
            continue
        now_current = current[want.threecx_id]
        verdict = decide_switch(want.profile, now_current, last_set.get(want.user_id), default, mode)
        if verdict == SET:
            switches.append(ProfileSwitch(want.user_id, want.threecx_id, want.number, now_current, want.profile,
                                          want.reason))
        elif verdict == BASELINE:
            baselines.append((want.user_id, want.threecx_id, want.profile))
            unchanged += 1
        elif verdict == RESPECT:
            respected.append(want.user_id)
        else:
            unchanged += 1
    return PresencePlan(tuple(switches), tuple(baselines), tuple(respected), unchanged)


class ProfileWriter(Protocol):
    """The write :func:`apply_switches` needs from the 3CX client."""

    def set_profile(self, user_id: int, profile_name: str) -> None:
        """Set ``CurrentProfileName`` of the 3CX user ``user_id``."""
        ...


@dataclass(frozen=True)
class SwitchOutcome:
    """What happened to one switch: ``ok``, ``failed`` (with the error) or ``skipped`` (dry run)."""

    switch: ProfileSwitch
    result: str
    error: str | None = None


def apply_switches(
    switches: Iterable[ProfileSwitch],
    writer: ProfileWriter,
    *,
    on_outcome: Callable[[SwitchOutcome], None] | None = None,
    on_outcomes: Callable[[list[SwitchOutcome]], None] | None = None,
    dry_run: bool = False,
    concurrency: int = 1,
) -> dict[str, int]:
    """Write the switches, ``concurrency`` at a time, reporting the outcomes chunk by chunk.

    A fatal error fails that switch only (e.g. 3CX rejecting a profile name); a retriable one
    (the client already retried) stops and is re-raised after the outcomes so far (and the untried
    switches, as skipped) were reported: the next run re-plans from 3CX's state.

    :param on_outcome: called per outcome once its chunk is done.
    :param on_outcomes: called per chunk with its outcomes, for bulk recording.
    :return: counts ``switched``, ``failed``, ``skipped``.
    :raises RetriableError: the PBX kept failing transiently.
    """
    from m365_3cx.reconcile.concurrent import run_chunked

    def report(outcomes: list[SwitchOutcome]) -> None:
        if on_outcomes is not None:
            on_outcomes(outcomes)
        if on_outcome is not None:
            for outcome in outcomes:
                on_outcome(outcome)

    def write(switch: ProfileSwitch) -> SwitchOutcome:
        if dry_run:
            return SwitchOutcome(switch, "skipped", "dry run")
        try:
            writer.set_profile(switch.threecx_id, switch.after)
        except FatalError as exc:
            log.warning("presence: switching 3CX user %d failed: %s", switch.threecx_id, exc)
            return SwitchOutcome(switch, "failed", str(exc))
        return SwitchOutcome(switch, "ok")

    outcomes = run_chunked(
        list(switches), write, record=report, concurrency=1 if dry_run else concurrency,
        failed=lambda switch, exc: SwitchOutcome(switch, "failed", str(exc)),
        skipped=lambda switch: SwitchOutcome(switch, "skipped", "not tried: stopped after a retriable error"),
    )
    counts = {"switched": 0, "failed": 0, "skipped": 0}
    for outcome in outcomes:
        counts[{"ok": "switched", "failed": "failed"}.get(outcome.result, "skipped")] += 1
    return counts


def plan_row(switch: ProfileSwitch) -> dict[str, object]:
    """The ``sync_plan`` row (without run key/seq) of a switch."""
    return {
        "action": ACTION, "object_type": OBJECT_TYPE, "object_key": switch.user_id, "number": switch.number,
        "threecx_id": switch.threecx_id, "changes": {FIELD: [switch.before, switch.after]},
        # "presence: teams:InACall" for a Teams decision, "calendar: busy" for the others
        "reason": f"{'presence' if switch.reason.startswith('teams:') else 'calendar'}: {switch.reason}",
    }


def audit_row(outcome: SwitchOutcome, run_key: str, at: object) -> dict[str, object]:
    """The ``sync_audit`` row of an outcome."""
    switch = outcome.switch
    return {
        "run_key": run_key, "at": at, "action": ACTION, "object_type": OBJECT_TYPE, "object_key": switch.user_id,
        "number": switch.number, "threecx_id": switch.threecx_id, "field": FIELD, "before": switch.before,
        "after": switch.after, "result": outcome.result, "error": outcome.error,
    }
