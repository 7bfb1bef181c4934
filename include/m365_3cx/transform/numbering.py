"""Extension numbers for users: policies and a stable mapping.

3CX extension numbers are immutable, so once a user has a number in
``extension_map`` it is theirs for good. New users get a number from one of
three policies:

``attribute``
    ``onPremisesExtensionAttributes.<attribute>`` must hold only digits, with
    a length in ``[min_length, max_length]``.
``phone_suffix``
    the last ``suffix_digits`` digits of ``businessPhones[0]``.
``pool``
    the lowest free number in ``[pool_first, pool_last]``.

A number is *taken* when it is mapped to another user (active, or released
less than ``quarantine_days`` ago), held by an unmanaged 3CX extension (a
``cur_extensions`` row whose number is not in the mapping) or allocated to an
earlier user in this run. An invalid or taken proposal falls back to the pool
(``fallback_to_pool``) or leaves the user without a number; either way a note
says so. Users are processed in ``(first_seen_at, user_id)`` order, so earlier
users win collisions and the outcome is deterministic.
"""

from __future__ import annotations

import re
from collections.abc import Collection
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

import pandas as pd

from m365_3cx.errors import ConfigError
from m365_3cx.transform.notes import ERROR, WARNING, Note, user_note
from m365_3cx.transform.scope import ACTIVE, user_states
from m365_3cx.transform.values import as_dict, as_list, ensure_columns, is_missing, text

POLICIES = ("attribute", "phone_suffix", "pool")
_DIGITS = re.compile(r"^[0-9]+$")


@dataclass(frozen=True)
class NumberingPolicy:
    """How new users get an extension number.

    :param policy: ``"attribute"``, ``"phone_suffix"`` or ``"pool"``.
    :param attribute: the ``onPremisesExtensionAttributes`` key for ``attribute``.
    :param suffix_digits: how many trailing digits ``phone_suffix`` takes.
    :param pool_first: first number of the pool (digits).
    :param pool_last: last number of the pool (digits, same length as ``pool_first``
        when zero-padded numbers are wanted).
    :param min_length: shortest number ``attribute`` accepts.
    :param max_length: longest number ``attribute`` accepts.
    :param fallback_to_pool: use the pool when the policy's proposal is invalid or taken.
    :param quarantine_days: days a released number stays reserved for its old user.
    :raises ConfigError: when a value is out of range.
    """

    policy: str = "pool"
    attribute: str = "extensionAttribute1"
    suffix_digits: int = 3
    pool_first: str = "200"
    pool_last: str = "899"
    min_length: int = 2
    max_length: int = 7
    fallback_to_pool: bool = True
    quarantine_days: int = 30

    def __post_init__(self) -> None:
        problems = []
        if self.policy not in POLICIES:
            problems.append(f"numbering.policy must be one of {', '.join(POLICIES)}, not {self.policy!r}")
        if not (_DIGITS.match(str(self.pool_first)) and _DIGITS.match(str(self.pool_last))):
            problems.append("numbering.pool_first and pool_last must be digits")
        elif int(self.pool_first) > int(self.pool_last):
            problems.append("numbering.pool_first must not be greater than pool_last")
        if self.suffix_digits < 1:
            problems.append("numbering.suffix_digits must be at least 1")
        if not 1 <= self.min_length <= self.max_length:
            problems.append("numbering.min_length must be between 1 and max_length")
        if self.quarantine_days < 0:
            problems.append("numbering.quarantine_days must not be negative")
        if problems:
            raise ConfigError("; ".join(problems))

    @classmethod
    def from_settings(cls, settings: Any) -> NumberingPolicy:
        """Build the policy from ``settings.numbering`` (attributes are only read).

        :param settings: an object with a ``numbering`` attribute (``Settings``).
        :return: the policy.
        :raises ConfigError: when a value is out of range.
        """
        n = settings.numbering
        return cls(
            policy=n.policy,
            attribute=n.attribute,
            suffix_digits=int(n.suffix_digits),
            pool_first=str(n.pool_first),
            pool_last=str(n.pool_last),
            min_length=int(n.min_length),
            max_length=int(n.max_length),
            fallback_to_pool=bool(n.fallback_to_pool),
            quarantine_days=int(n.quarantine_days),
        )


@dataclass(frozen=True)
class Allocation:
    """Result of :func:`allocate_numbers`.

    :param numbers: user id -> extension number, for every user that has one
        (kept from the mapping or newly allocated).
    :param new_assignments: rows to insert into ``extension_map``: ``user_id``,
        ``number``, ``status`` (``"active"``), ``assigned_at`` and
        ``replaces_user_id`` — the user whose released mapping of this number
        (past its quarantine) must be removed first, else ``None``.
    :param notes: per-user problems.
    """

    numbers: dict[str, str] = field(default_factory=dict)
    new_assignments: list[dict[str, Any]] = field(default_factory=list)
    notes: list[Note] = field(default_factory=list)


def number_sort_key(number: str) -> tuple[int, str]:
    """Order extension numbers numerically where possible (``"99"`` before ``"100"``).

    :param number: an extension number.
    :return: a sort key.
    """
    return (len(number), number) if number.isdigit() else (10**6, number)


class _Pool:
    """The lowest free pool number, found with a cursor that only moves up."""

    def __init__(self, policy: NumberingPolicy, taken: dict[str, str]) -> None:
        self._width = len(policy.pool_first)
        self._next = int(policy.pool_first)
        self._last = int(policy.pool_last)
        self._taken = taken

    def take(self) -> str | None:
        while self._next <= self._last:
            candidate = str(self._next).zfill(self._width)
            self._next += 1
            if candidate not in self._taken:
                return candidate
        return None


def _propose(row: Any, policy: NumberingPolicy) -> tuple[str | None, str, str | None]:
    """Return ``(number, source field, problem)`` the policy proposes for one user."""
    if policy.policy == "attribute":
        fld = policy.attribute
        raw = as_dict(row.extension_attributes).get(policy.attribute)
        value = text(raw)
        if value is None:
            return None, fld, f"{fld} is empty"
        if not _DIGITS.match(value) or not policy.min_length <= len(value) <= policy.max_length:
            return (
                None,
                fld,
                f"{fld} '{value[:40]}' is not a valid extension number "
                f"(digits only, {policy.min_length} to {policy.max_length} long)",
            )
        return value, fld, None
    if policy.policy == "phone_suffix":
        fld = "businessPhones"
        phones = as_list(row.business_phones)
        first = text(phones[0]) if phones else None
        if first is None:
            return None, fld, "businessPhones is empty"
        digits = re.sub(r"[^0-9]", "", first)
        if len(digits) < policy.suffix_digits:
            return (
                None,
                fld,
                f"businessPhones[0] '{first[:40]}' has fewer than {policy.suffix_digits} digits",
            )
        return digits[-policy.suffix_digits :], fld, None
    return None, "number", None


def _mapping_rows(mapping: pd.DataFrame) -> list[dict[str, Any]]:
    m = ensure_columns(mapping, ["user_id", "number", "status", "released_at"])
    rows = []
    for user_id, number, status, released_at in zip(
        m["user_id"], m["number"], m["status"], m["released_at"], strict=True
    ):
        num = text(number)
        uid = text(user_id)
        if uid is None or num is None:
            continue
        rows.append(
            {
                "user_id": uid,
                "number": num,
                "status": text(status) or "active",
                "released_at": None if is_missing(released_at) else pd.Timestamp(released_at),
            }
        )
    return rows


def allocate_numbers(
    users: pd.DataFrame,
    mapping: pd.DataFrame,
    pbx: pd.DataFrame,
    policy: NumberingPolicy,
    now: datetime,
    *,
    active_ids: Collection[str] | None = None,
) -> Allocation:
    """Give every user that will be active an extension number.

    :param users: users frame (``stg_users`` columns): ``user_id``,
        ``user_principal_name``, ``first_seen_at``, ``extension_attributes``,
        ``business_phones`` and the state columns are read.
    :param mapping: ``extension_map`` frame (the whole table, not a subset).
    :param pbx: ``cur_extensions`` frame (``number`` is read).
    :param policy: the numbering policy.
    :param now: current UTC time (for the quarantine).
    :param active_ids: ids of the users that will be active; ``None`` derives them
        from ``users`` with :func:`~m365_3cx.transform.scope.user_states` (guests excluded).
    :return: numbers, new ``extension_map`` rows and notes. Mapped users, active
        or not, keep their mapped number and appear in ``numbers``.
    """
    u = ensure_columns(
        users,
        ["user_id", "user_principal_name", "first_seen_at", "extension_attributes", "business_phones"],
    )
    if active_ids is None:
        states = user_states(u)
        active = set(u.loc[states["state"] == ACTIVE, "user_id"].astype(object))
    else:
        active = set(active_ids)

    now_ts = pd.Timestamp(now)
    quarantine = timedelta(days=policy.quarantine_days)
    map_rows = _mapping_rows(mapping)
    by_user = {r["user_id"]: r for r in map_rows}

    p = ensure_columns(pbx, ["number"])
    pbx_numbers = {n for n in (text(v) for v in p["number"]) if n is not None}

    # number -> why it is taken, for notes
    taken: dict[str, str] = {}
    reusable: dict[str, str] = {}  # released past quarantine: number -> old user id
    for r in map_rows:
        if r["status"] != "released" or r["user_id"] in active:
            taken[r["number"]] = "mapped to another user"
            continue
        if r["number"] in pbx_numbers:
            taken[r["number"]] = "released by another user but still held by a 3CX extension"
            continue
        released_at = r["released_at"]
        if released_at is None or released_at + quarantine > now_ts:
            until = "" if released_at is None else f" until {(released_at + quarantine):%Y-%m-%d}"
            taken[r["number"]] = f"released by another user and in quarantine{until}"
        else:
            reusable[r["number"]] = r["user_id"]
    mapped_numbers = {r["number"] for r in map_rows}
    for n in pbx_numbers - mapped_numbers:
        taken.setdefault(n, "held by an unmanaged 3CX extension")

    result = Allocation()
    for r in map_rows:
        result.numbers[r["user_id"]] = r["number"]

    order = u.assign(_seen=pd.to_datetime(u["first_seen_at"], utc=True, errors="coerce")).sort_values(
        ["_seen", "user_id"], na_position="last", kind="mergesort"
    )
    pool = _Pool(policy, taken)
    for row in order.itertuples(index=False):
        uid = text(row.user_id)
        if uid is None or uid not in active:
            continue
        label = text(row.user_principal_name) or uid
        proposal, fld, problem = _propose(row, policy)
        kept = by_user.get(uid)
        if kept is not None:
            if proposal is not None and proposal != kept["number"]:
                result.notes.append(
                    user_note(
                        uid,
                        label,
                        fld,
                        f"{fld} proposes extension {proposal} but the user already has {kept['number']}; "
                        "3CX extension numbers cannot change, keeping "
                        f"{kept['number']}",
                        WARNING,
                    )
                )
            continue

        number: str | None = None
        if policy.policy == "pool":
            number = pool.take()
            if number is None:
                result.notes.append(
                    user_note(
                        uid,
                        label,
                        "number",
                        f"the extension pool {policy.pool_first}-{policy.pool_last} is exhausted; no extension created",
                        ERROR,
                    )
                )
                continue
        else:
            if problem is None and proposal is not None and proposal in taken:
                problem = f"extension {proposal} from {fld} is {taken[proposal]}"
            if problem is None:
                number = proposal
            elif policy.fallback_to_pool:
                number = pool.take()
                if number is None:
                    result.notes.append(
                        user_note(
                            uid,
                            label,
                            fld,
                            f"{problem}, and the extension pool {policy.pool_first}-{policy.pool_last} "
                            "is exhausted; no extension created",
                            ERROR,
                        )
                    )
                    continue
                result.notes.append(user_note(uid, label, fld, f"{problem}; allocated {number} from the pool", WARNING))
            else:
                result.notes.append(user_note(uid, label, fld, f"{problem}; no extension created", ERROR))
                continue

        taken[number] = "allocated to another user in this run"
        previous_owner = reusable.get(number)
        if previous_owner is not None:
            result.numbers.pop(previous_owner, None)
        result.numbers[uid] = number
        result.new_assignments.append(
            {
                "user_id": uid,
                "number": number,
                "status": "active",
                "assigned_at": now,
                "replaces_user_id": reusable.get(number),
            }
        )
    return result
