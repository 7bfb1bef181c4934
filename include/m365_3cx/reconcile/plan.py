"""Diff desired extensions against 3CX: the change set.

Only *managed* extensions are ever changed: a user in ``extension_map`` whose
``threecx_id`` is present in the 3CX snapshot with the same number. A 3CX
extension that is not managed is never touched, and a new user whose number
is held by such an extension is skipped with a note. For a managed extension
only the managed fields are compared (``FirstName``, ``LastName``,
``EmailAddress``, ``Mobile``, ``Enabled`` and, when configured,
``OutboundCallerID``); empty string and null are equal. A field whose Graph value is
empty clears the 3CX value unless ``extensions.clear_on_empty`` says otherwise for it.

Removal policies: ``disable`` (the default), ``delete``, ``ignore`` and
``disable_then_delete``: disable at once, delete once the extension has been disabled
for ``delete_after_days`` (``extension_map.removal_since``) and the user is still gone; a
user back before that is simply re-enabled (same extension, same number). Users whose
desired row carries a ``protection`` (protected or opted out) are never planned.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pandas as pd

from m365_3cx.errors import ConfigError
from m365_3cx.transform.notes import ERROR, Note, user_note
from m365_3cx.transform.numbering import number_sort_key
from m365_3cx.transform.values import as_bool, as_int, ensure_columns, is_missing, text

REMOVAL_POLICIES = ("disable", "delete", "disable_then_delete", "ignore")
DISABLE_THEN_DELETE = "disable_then_delete"
#: Managed fields an empty Graph value may clear (``extensions.clear_on_empty``); ``Enabled`` never is empty.
CLEARABLE_FIELDS = ("FirstName", "LastName", "EmailAddress", "Mobile", "OutboundCallerID")

CREATE = "create"
UPDATE = "update"
DISABLE = "disable"
DELETE = "delete"
ACTION_ORDER = {CREATE: 0, UPDATE: 1, DISABLE: 2, DELETE: 3}

# 3CX field -> column in the desired frame and in the pbx (cur_extensions) frame
FIELD_COLUMNS = {
    "FirstName": "first_name",
    "LastName": "last_name",
    "EmailAddress": "email",
    "Mobile": "mobile",
    "OutboundCallerID": "outbound_caller_id",
    "Enabled": "enabled",
}

_REMOVAL_REASONS = {
    "deleted": "user deleted",
    "disabled": "user disabled",
    "out_of_scope": "user out of scope",
}


@dataclass(frozen=True)
class Change:
    """One planned write to 3CX (the contract in ``docs/internals.md``)."""

    action: str  # create | update | disable | delete
    object_key: str  # Graph user id
    number: str
    threecx_id: int | None  # None for create
    fields: dict[str, tuple[object, object]]  # 3CX field -> (before, after)
    reason: str  # short, e.g. "new user", "fields changed", "user disabled"
    object_type: str = "extension"
    label: str = ""  # UPN, for notes and audit


@dataclass(frozen=True)
class PlanParams:
    """What :func:`plan_extensions` needs from the settings.

    :param removal_policy: ``"disable"``, ``"delete"``, ``"disable_then_delete"`` or ``"ignore"``.
    :param manage_outbound_caller_id: ``OutboundCallerID`` is a managed field.
    :param delete_after_days: grace period of ``disable_then_delete``.
    :param keep_on_empty: managed fields an empty Graph value does not clear.
    :raises ConfigError: for an unknown removal policy or a grace period below one day.
    """

    removal_policy: str = "disable"
    manage_outbound_caller_id: bool = False
    delete_after_days: int = 30
    keep_on_empty: frozenset[str] = frozenset()

    def __post_init__(self) -> None:
        if self.removal_policy not in REMOVAL_POLICIES:
            raise ConfigError(
                f"extensions.removal_policy must be one of {', '.join(REMOVAL_POLICIES)}, not {self.removal_policy!r}"
            )
        if self.delete_after_days < 1:
            raise ConfigError("extensions.delete_after_days must be at least 1")
        unknown = set(self.keep_on_empty) - set(CLEARABLE_FIELDS)
        if unknown:
            raise ConfigError(f"extensions.clear_on_empty: unknown fields {', '.join(sorted(unknown))}")

    @classmethod
    def from_settings(cls, settings: Any) -> PlanParams:
        """Build the parameters from ``settings.extensions`` (attributes are only read).

        :param settings: an object with an ``extensions`` attribute.
        :return: the parameters.
        :raises ConfigError: for an unknown removal policy.
        """
        ext = settings.extensions
        clear = dict(getattr(ext, "clear_on_empty", {}) or {})
        return cls(
            removal_policy=str(ext.removal_policy),
            manage_outbound_caller_id=bool(ext.manage_outbound_caller_id),
            delete_after_days=int(getattr(ext, "delete_after_days", 30)),
            keep_on_empty=frozenset(f for f, flag in clear.items() if not flag),
        )

    @property
    def grace(self) -> timedelta:
        """How long ``disable_then_delete`` keeps a disabled extension before deleting it."""
        return timedelta(days=self.delete_after_days)

    @property
    def managed_fields(self) -> tuple[str, ...]:
        """The 3CX fields the sync owns, in body order."""
        base = ("FirstName", "LastName", "EmailAddress", "Mobile")
        extra = ("OutboundCallerID",) if self.manage_outbound_caller_id else ()
        return (*base, *extra, "Enabled")


@dataclass(frozen=True)
class PlanResult:
    """Result of :func:`plan_extensions`.

    :param changes: the change set in apply order (creates, updates, disables,
        deletes; each by number).
    :param notes: per-user problems (number held by an unmanaged extension, ...).
    :param managed_count: how many extensions are managed (for the mass-removal guard).
    """

    changes: list[Change] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)
    managed_count: int = 0


def _norm(fld: str, value: object) -> object:
    """Normalise a field value for comparison: empty and null are ``None``."""
    if fld == "Enabled":
        return as_bool(value, False)
    return text(value)


def _change_key(change: Change) -> tuple[int, tuple[int, str], str]:
    return (ACTION_ORDER[change.action], number_sort_key(change.number), change.object_key)


def plan_extensions(
    desired: pd.DataFrame,
    mapping: pd.DataFrame,
    pbx: pd.DataFrame,
    params: PlanParams,
    only_keys: Collection[str] | None = None,
    *,
    labels: Mapping[str, str] | None = None,
    now: datetime | None = None,
) -> PlanResult:
    """Diff the desired extensions against the 3CX snapshot.

    :param desired: desired frame (``tgt_extensions`` columns).
    :param mapping: ``extension_map`` frame (the whole table).
    :param pbx: ``cur_extensions`` frame (the whole snapshot).
    :param params: removal policy and managed fields.
    :param only_keys: plan only these user ids (``None``: everyone).
    :param labels: user id -> UPN for notes and :attr:`Change.label`.
    :param now: current UTC time; ``disable_then_delete`` deletes only with it (grace expiry).
    :return: the change set, notes and the managed-extension count.
    """
    labels = labels or {}
    fields = params.managed_fields
    d = ensure_columns(desired, ["user_id", "number", "state", "removal_reason", "protection",
                                 *FIELD_COLUMNS.values()])
    m = ensure_columns(mapping, ["user_id", "number", "threecx_id", "removal_since"])
    p = ensure_columns(pbx, ["threecx_id", "number", *FIELD_COLUMNS.values()])

    pbx_by_id: dict[int, dict[str, Any]] = {}
    pbx_by_number: dict[str, int] = {}
    for row in p.to_dict("records"):
        tid = as_int(row["threecx_id"])
        if tid is None:
            continue
        pbx_by_id[tid] = row
        num = text(row["number"])
        if num is not None:
            pbx_by_number[num] = tid

    # user id -> (mapped number, threecx id or None)
    mapped: dict[str, tuple[str, int | None]] = {}
    managed: dict[str, int] = {}
    removal_since: dict[str, pd.Timestamp] = {}
    for uid_raw, num_raw, tid_raw, since in zip(m["user_id"], m["number"], m["threecx_id"], m["removal_since"],
                                                strict=True):
        uid, num, tid = text(uid_raw), text(num_raw), as_int(tid_raw)
        if uid is None or num is None:
            continue
        mapped[uid] = (num, tid)
        if not is_missing(since):
            removal_since[uid] = pd.Timestamp(since)
        if tid is not None and tid in pbx_by_id and text(pbx_by_id[tid]["number"]) == num:
            managed[uid] = tid
    managed_ids = set(managed.values())

    keys = None if only_keys is None else set(only_keys)
    changes: list[Change] = []
    notes: list[Note] = []
    for row in d.to_dict("records"):
        uid = text(row["user_id"])
        if uid is None or (keys is not None and uid not in keys) or text(row["protection"]):
            continue  # a protected or opted-out user's extension is never touched (transform notes it)
        label = labels.get(uid, "")
        number = text(row["number"])
        state = text(row["state"])
        want = {f: _norm(f, row[FIELD_COLUMNS[f]]) for f in fields}

        if state != "active":
            tid = managed.get(uid)
            if tid is None or params.removal_policy == "ignore":
                continue
            current = pbx_by_id[tid]
            reason = _REMOVAL_REASONS.get(text(row["removal_reason"]) or "", "user removed")
            enabled = as_bool(current["enabled"], True)
            if params.removal_policy == "delete":
                changes.append(Change(DELETE, uid, mapped[uid][0], tid, {}, reason, label=label))
            elif enabled:
                if params.removal_policy == DISABLE_THEN_DELETE:
                    reason = f"{reason}; deleted after {params.delete_after_days} days unless the user is back"
                changes.append(
                    Change(DISABLE, uid, mapped[uid][0], tid, {"Enabled": (True, False)}, reason, label=label)
                )
            elif params.removal_policy == DISABLE_THEN_DELETE and now is not None and uid in removal_since \
                    and removal_since[uid] + params.grace <= pd.Timestamp(now):
                since = removal_since[uid]
                changes.append(Change(DELETE, uid, mapped[uid][0], tid, {},
                                      f"{reason}; disabled since {since:%Y-%m-%d}, grace period of "
                                      f"{params.delete_after_days} days over", label=label))
            continue

        if uid in managed:
            tid = managed[uid]
            current = pbx_by_id[tid]
            diff: dict[str, tuple[object, object]] = {}
            for f in fields:
                before = _norm(f, current[FIELD_COLUMNS[f]])
                if want[f] is None and f in params.keep_on_empty:
                    continue  # extensions.clear_on_empty: an emptied Graph value leaves 3CX's value
                if before != want[f]:
                    diff[f] = (before, want[f])
            if diff:
                reenable = diff.get("Enabled") == (False, True)
                reason = "fields changed"
                if reenable:
                    back = uid in removal_since and params.removal_policy == DISABLE_THEN_DELETE
                    reason = "user back within the grace period, re-enabled" if back else "user re-enabled"
                changes.append(Change(UPDATE, uid, mapped[uid][0], tid, diff, reason, label=label))
            continue

        if uid in mapped:
            map_number, map_tid = mapped[uid]
            if number is not None and number != map_number:
                notes.append(
                    user_note(
                        uid,
                        label,
                        "number",
                        f"desired extension {number} differs from the mapped {map_number}; using {map_number}",
                    )
                )
            number = map_number
            if map_tid is not None and map_tid in pbx_by_id:
                notes.append(
                    user_note(
                        uid,
                        label,
                        "number",
                        f"3CX user {map_tid} mapped to extension {map_number} now has number "
                        f"{text(pbx_by_id[map_tid]['number'])}; left untouched",
                        ERROR,
                    )
                )
                continue
            reason = "extension missing in 3CX, re-created"
        else:
            if number is None:
                continue  # numbering already explained why
            reason = "new user"

        holder = pbx_by_number.get(number)
        if holder is not None:
            whose = "another managed" if holder in managed_ids else "an unmanaged"
            notes.append(
                user_note(
                    uid,
                    label,
                    "number",
                    f"extension {number} is held by {whose} 3CX extension (3CX user {holder}); no extension created",
                    ERROR,
                )
            )
            continue
        created = {f: (None, v) for f, v in want.items() if v is not None}
        changes.append(Change(CREATE, uid, number, None, created, reason, label=label))

    changes.sort(key=_change_key)
    return PlanResult(changes=changes, notes=notes, managed_count=len(managed))


def plan_rows(changes: list[Change], run_key: str, status: str = "planned") -> list[dict[str, Any]]:
    """Turn a change set into ``sync_plan`` rows.

    :param changes: the change set, in apply order.
    :param run_key: the run it belongs to.
    :param status: initial status (``"planned"`` or ``"dry_run"``).
    :return: one dict per change, ``seq`` from 1; ``changes`` is ``{field: [before, after]}``.
    """
    return [
        {
            "run_key": run_key,
            "seq": seq,
            "action": c.action,
            "object_type": c.object_type,
            "object_key": c.object_key,
            "number": c.number,
            "threecx_id": c.threecx_id,
            "changes": {f: [b, a] for f, (b, a) in c.fields.items()},
            "reason": c.reason,
            "status": status,
        }
        for seq, c in enumerate(changes, start=1)
    ]
