"""Desired 3CX extensions from staged Graph users (``tgt_extensions``).

One row per staged user: the extension number (see
:mod:`m365_3cx.transform.numbering`), the managed fields as 3CX should hold
them, and the user's ``state``: ``active``, or ``removed`` with a
``removal_reason`` (``deleted``, ``out_of_scope`` or ``disabled``). Removed
rows keep their values with ``enabled`` false; the plan decides what removal
means under the removal policy.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pandas as pd

from m365_3cx.transform.notes import WARNING, Note, user_note
from m365_3cx.transform.numbering import NumberingPolicy, allocate_numbers
from m365_3cx.transform.phones import to_e164
from m365_3cx.transform.scope import ACTIVE, user_states
from m365_3cx.transform.values import as_list, ensure_columns, text

NAME_MAX = 50
"""3CX limit for ``FirstName`` and ``LastName``."""

DESIRED_COLUMNS = [
    "user_id",
    "number",
    "first_name",
    "last_name",
    "email",
    "mobile",
    "outbound_caller_id",
    "enabled",
    "state",
    "removal_reason",
]
"""Columns of the desired frame (``tgt_extensions`` without ``run_key``/``computed_at``)."""

USER_COLUMNS = [
    "user_id",
    "user_principal_name",
    "display_name",
    "given_name",
    "surname",
    "mail",
    "mobile_phone",
    "business_phones",
    "account_enabled",
    "user_type",
    "usage_location",
    "extension_attributes",
    "in_scope",
    "deleted",
    "first_seen_at",
]


@dataclass(frozen=True)
class ExtensionParams:
    """What :func:`desired_extensions` needs from the settings.

    :param numbering: the extension-number policy.
    :param default_region: region for phone numbers of users without ``usageLocation``.
    :param manage_outbound_caller_id: derive ``outbound_caller_id`` from ``businessPhones[0]``.
    :param include_guests: guests (``userType == "Guest"``) are in scope.
    """

    numbering: NumberingPolicy = field(default_factory=NumberingPolicy)
    default_region: str = "US"
    manage_outbound_caller_id: bool = False
    include_guests: bool = False

    @classmethod
    def from_settings(cls, settings: Any) -> ExtensionParams:
        """Build the parameters from ``Settings`` (attributes are only read).

        :param settings: an object with ``numbering``, ``extensions`` and ``scope``.
        :return: the parameters.
        :raises ConfigError: when the numbering settings are out of range.
        """
        return cls(
            numbering=NumberingPolicy.from_settings(settings),
            default_region=str(settings.extensions.default_region),
            manage_outbound_caller_id=bool(settings.extensions.manage_outbound_caller_id),
            include_guests=bool(settings.scope.include_guests),
        )


@dataclass(frozen=True)
class DesiredResult:
    """Result of :func:`desired_extensions`.

    :param frame: desired frame, :data:`DESIRED_COLUMNS`; nullable text columns
        hold ``None`` (object dtype), ``enabled`` is ``bool``.
    :param new_assignments: new ``extension_map`` rows (see
        :class:`~m365_3cx.transform.numbering.Allocation`).
    :param notes: per-user problems (numbering, names, phone numbers).
    """

    frame: pd.DataFrame
    new_assignments: list[dict[str, Any]]
    notes: list[Note]


def _split_display(display: str | None) -> tuple[str | None, str | None]:
    """Split a display name: the last token is the last name, the rest the first name."""
    if not display:
        return None, None
    tokens = display.split()
    if len(tokens) == 1:
        return tokens[0], None
    return " ".join(tokens[:-1]), tokens[-1]


def _name(given: object, surname: object, display: object, upn: object) -> tuple[str | None, str | None]:
    """First and last name: given/surname, else the display name split, else the UPN local part."""
    first, last = text(given), text(surname)
    if first or last:
        return first, last
    first, last = _split_display(text(display))
    if first or last:
        return first, last
    local = text(upn)
    return (text(local.split("@", 1)[0]) if local else None), None


def _truncate(value: str | None) -> str | None:
    return value[:NAME_MAX].rstrip() if value is not None and len(value) > NAME_MAX else value


def desired_extensions(
    users: pd.DataFrame,
    mapping: pd.DataFrame,
    pbx: pd.DataFrame,
    params: ExtensionParams,
    now: datetime,
) -> DesiredResult:
    """Compute the desired 3CX extension of every staged user.

    :param users: users frame (``stg_users`` columns, JSON columns decoded).
    :param mapping: ``extension_map`` frame (the whole table).
    :param pbx: ``cur_extensions`` frame.
    :param params: the parameters.
    :param now: current UTC time.
    :return: the desired frame, new number assignments and notes. Notes about
        names and phone numbers are made for active users only.
    """
    u = ensure_columns(users, USER_COLUMNS).reset_index(drop=True)
    states = user_states(u, include_guests=params.include_guests)
    is_active = (states["state"] == ACTIVE).to_numpy()
    user_ids: list[str] = [text(v) or "" for v in u["user_id"]]
    active_ids = {uid for uid, act in zip(user_ids, is_active, strict=True) if act and uid}

    allocation = allocate_numbers(u, mapping, pbx, params.numbering, now, active_ids=active_ids)
    notes: list[Note] = list(allocation.notes)

    labels = [text(upn) or uid for upn, uid in zip(u["user_principal_name"], user_ids, strict=True)]
    names = [
        _name(g, s, d, p)
        for g, s, d, p in zip(u["given_name"], u["surname"], u["display_name"], u["user_principal_name"], strict=True)
    ]
    first: list[str | None] = []
    last: list[str | None] = []
    for i, (f, la) in enumerate(names):
        for value, fld, name in ((f, "givenName", "FirstName"), (la, "surname", "LastName")):
            if is_active[i] and value is not None and len(value) > NAME_MAX:
                notes.append(
                    user_note(
                        user_ids[i],
                        labels[i],
                        fld,
                        f"{name} is {len(value)} characters; truncated to {NAME_MAX}",
                        WARNING,
                    )
                )
        first.append(_truncate(f))
        last.append(_truncate(la))

    email = [t.lower() if (t := text(v)) else None for v in u["mail"]]

    mobiles: list[str | None] = []
    callers: list[str | None] = []
    for i, (mobile_raw, phones, region) in enumerate(
        zip(u["mobile_phone"], u["business_phones"], u["usage_location"], strict=True)
    ):
        reg = text(region)
        res = to_e164(text(mobile_raw), reg, params.default_region)
        mobiles.append(res.e164)
        if res.warning and is_active[i]:
            tail = "" if res.e164 else "; Mobile left empty"
            notes.append(user_note(user_ids[i], labels[i], "mobilePhone", f"mobilePhone {res.warning}{tail}"))
        if params.manage_outbound_caller_id:
            plist = as_list(phones)
            res = to_e164(text(plist[0]) if plist else None, reg, params.default_region)
            callers.append(res.e164)
            if res.warning and is_active[i]:
                tail = "" if res.e164 else "; OutboundCallerID left empty"
                notes.append(
                    user_note(user_ids[i], labels[i], "businessPhones", f"businessPhones[0] {res.warning}{tail}")
                )
        else:
            callers.append(None)

    frame = pd.DataFrame(
        {
            "user_id": pd.Series(user_ids, dtype=object),
            "number": pd.Series([allocation.numbers.get(uid) for uid in user_ids], dtype=object),
            "first_name": pd.Series(first, dtype=object),
            "last_name": pd.Series(last, dtype=object),
            "email": pd.Series(email, dtype=object),
            "mobile": pd.Series(mobiles, dtype=object),
            "outbound_caller_id": pd.Series(callers, dtype=object),
            "enabled": pd.Series(is_active, dtype=bool),
            "state": pd.Series(states["state"].to_list(), dtype=object),
            "removal_reason": pd.Series(states["removal_reason"].to_list(), dtype=object),
        },
        columns=DESIRED_COLUMNS,
    )
    frame = frame[frame["user_id"] != ""].reset_index(drop=True)
    return DesiredResult(frame=frame, new_assignments=list(allocation.new_assignments), notes=notes)
