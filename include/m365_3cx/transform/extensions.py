"""Desired 3CX extensions from staged Graph users (``tgt_extensions``).

One row per staged user: the extension number (see
:mod:`m365_3cx.transform.numbering`), the managed fields as 3CX should hold
them, and the user's ``state``: ``active``, or ``removed`` with a
``removal_reason`` (``deleted``, ``out_of_scope`` or ``disabled``). Removed
rows keep their values with ``enabled`` false; the plan decides what removal
means under the removal policy. A protected or opted-out user's row carries its
``protection``: no number is allocated for it, the plan never touches its extension and
an info note says so once per run.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

import pandas as pd

from m365_3cx.sanitize import Cleaned, clean_name, utf16_length
from m365_3cx.transform.notes import INFO, WARNING, Note, user_note
from m365_3cx.transform.numbering import NumberingPolicy, allocate_numbers
from m365_3cx.transform.phones import to_e164
from m365_3cx.transform.scope import ACTIVE, ProtectionParams, protection_message, protections, user_states
from m365_3cx.transform.values import as_list, ensure_columns, text

# 3CX field limits. The XAPI swagger (3CX V20 Update 10, ``Pbx.User``) declares no ``maxLength`` for
# FirstName, LastName or EmailAddress and 3CX documents none, so these are our choice: 50 for a
# name (what the 3CX console and a phone display show in full; the emulator enforces it) and 254
# for an address (RFC 5321: a path is at most 256 octets including its angle brackets). Lengths
# count UTF-16 code units (the XAPI is a .NET service), never more than a code-point count.
NAME_MAX = 50
"""Longest ``FirstName`` / ``LastName`` the sync writes."""
EMAIL_MAX = 254
"""Longest ``EmailAddress`` the sync writes (a longer one is left out, with a note)."""

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
    "protection",
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
    "protected_group",
]


@dataclass(frozen=True)
class ExtensionParams:
    """What :func:`desired_extensions` needs from the settings.

    :param numbering: the extension-number policy.
    :param default_region: region for phone numbers of users without ``usageLocation``.
    :param manage_outbound_caller_id: derive ``outbound_caller_id`` from ``businessPhones[0]``.
    :param include_guests: guests (``userType == "Guest"``) are in scope.
    :param protection: protected users and the opt-out attribute.
    """

    numbering: NumberingPolicy = field(default_factory=NumberingPolicy)
    default_region: str = "US"
    manage_outbound_caller_id: bool = False
    include_guests: bool = False
    protection: ProtectionParams = field(default_factory=ProtectionParams)

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
            protection=ProtectionParams.from_settings(settings),
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


def _name(given: object, surname: object, display: object,
          upn: object) -> tuple[str | None, str | None, str, str, list[tuple[str, Cleaned]]]:
    """First and last name: given/surname, else the display name split, else the UPN local part.

    Control and format characters are removed first (see :mod:`m365_3cx.sanitize`), so a
    ``givenName`` of U+200B is no name.

    :return: first name, last name (not cut yet), the Graph properties they came from, and the
        cleaning of each property used (for notes).
    """
    g, s = clean_name(text(given)), clean_name(text(surname))
    if g.value or s.value:
        return g.value, s.value, "givenName", "surname", [("givenName", g), ("surname", s)]
    d = clean_name(text(display))
    first, last = _split_display(d.value)
    if first or last:
        return first, last, "displayName", "displayName", [("displayName", d)]
    p = clean_name(text(upn))
    local = text(p.value.split("@", 1)[0]) if p.value else None
    return local, None, "userPrincipalName", "userPrincipalName", [("userPrincipalName", p)]


def _email_owners(emails: list[str | None], is_active: Any, seen_at: list[object],
                  user_ids: list[str]) -> dict[int, int]:
    """Active users whose address another active user holds too (case-insensitive).

    The user the sync saw first (``first_seen_at``; the same run: the lower Graph id) keeps the
    address; every other one is mapped to the keeper's row index.
    """
    def order(i: int) -> tuple[bool, object, str]:
        when = seen_at[i]
        missing = when is None or when is pd.NaT or (isinstance(when, float) and when != when)
        return (missing, pd.Timestamp(0, tz="UTC") if missing else when, user_ids[i])

    candidates = sorted((i for i, e in enumerate(emails) if e and is_active[i]), key=order)
    keeper: dict[str, int] = {}
    losers: dict[int, int] = {}
    for i in candidates:
        key = str(emails[i]).casefold()
        if key in keeper:
            losers[i] = keeper[key]
        else:
            keeper[key] = i
    return losers


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
    protection = protections(u, params.protection)
    # a protected user's extension is left alone: no number, no name/phone notes
    is_active = ((states["state"] == ACTIVE) & protection.isna()).to_numpy()
    user_ids: list[str] = [text(v) or "" for v in u["user_id"]]
    active_ids = {uid for uid, act in zip(user_ids, is_active, strict=True) if act and uid}

    allocation = allocate_numbers(u, mapping, pbx, params.numbering, now, active_ids=active_ids)
    notes: list[Note] = list(allocation.notes)

    labels = [text(upn) or uid for upn, uid in zip(u["user_principal_name"], user_ids, strict=True)]
    for i, reason in enumerate(protection):
        if reason is not None and user_ids[i]:
            notes.append(user_note(user_ids[i], labels[i], "scope", protection_message(reason, params.protection)
                                   + "; its extension is not created, changed or removed", INFO))
    first: list[str | None] = []
    last: list[str | None] = []
    sources = zip(u["given_name"], u["surname"], u["display_name"], u["user_principal_name"], strict=True)
    for i, raw in enumerate(sources):
        # The staging boundary cleans what it stages; this also covers rows staged before it.
        f, la, f_src, la_src, used = _name(*raw)
        for fld, cleaned in used:
            if is_active[i] and cleaned.changed:
                notes.append(user_note(user_ids[i], labels[i], fld, f"{fld} {cleaned.describe()}", WARNING))
        for value, fld, name, out in ((f, f_src, "FirstName", first), (la, la_src, "LastName", last)):
            cut = clean_name(value, limit=NAME_MAX, utf16=True)
            if is_active[i] and cut.changed:
                notes.append(user_note(user_ids[i], labels[i], fld, f"{name} {cut.describe()}", WARNING))
            out.append(cut.value)

    email: list[str | None] = []
    for i, v in enumerate(u["mail"]):
        address = clean_name(text(v))
        value = address.value.lower() if address.value else None
        if is_active[i] and address.changed:
            notes.append(user_note(user_ids[i], labels[i], "mail", f"mail {address.describe()}", WARNING))
        if value is not None and utf16_length(value) > EMAIL_MAX:
            if is_active[i]:
                notes.append(user_note(user_ids[i], labels[i], "mail",
                                       f"mail is {len(value)} characters, over the {EMAIL_MAX} 3CX takes; "
                                       "EmailAddress left empty", WARNING))
            value = None
        email.append(value)
    seen_at = list(u["first_seen_at"])
    for i, keeper in _email_owners(email, is_active, seen_at, user_ids).items():
        notes.append(user_note(
            user_ids[i], labels[i], "mail",
            f"mail {email[i]} is also the address of {labels[keeper]} (case-insensitive), who was synced first "
            "and keeps it; EmailAddress left empty", WARNING))
        email[i] = None

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
            "enabled": pd.Series((states["state"] == ACTIVE).to_numpy(), dtype=bool),
            "state": pd.Series(states["state"].to_list(), dtype=object),
            "removal_reason": pd.Series(states["removal_reason"].to_list(), dtype=object),
            "protection": pd.Series(protection.to_list(), dtype=object),
        },
        columns=DESIRED_COLUMNS,
    )
    frame = frame[frame["user_id"] != ""].reset_index(drop=True)
    return DesiredResult(frame=frame, new_assignments=list(allocation.new_assignments), notes=notes)
