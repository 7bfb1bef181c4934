"""Outlook contacts -> desired company-phonebook entries (pure pandas, no I/O).

Rules (each has a unit test in ``tests/unit/m365_3cx/transform/test_phonebook.py``):

* Only contacts of in-scope, not deleted owners count (``org`` and ``shared`` mailbox contacts
  always: the settings list their sources); a contact carrying the exclusion category
  (case-insensitive, e.g. ``Private``) never becomes an entry.
* Names: ``givenName``/``surname``; without both, ``displayName`` (else ``fileAs``) becomes
  ``FirstName``; without any name the ``companyName`` alone names the entry. A contact with no
  name and no company is skipped with a note.
* Numbers go to E.164 (:func:`~m365_3cx.transform.phones.to_e164`) with the owner's
  ``usageLocation``, else the default region; vanity numbers are converted, extensions dropped
  with a note, unusable numbers dropped with a note. A contact without a dialable number is
  skipped with a note naming the owner's UPN, the contact id and the field.
* Slots: ``PhoneNumber`` = ``mobilePhone``, else the first business, else the first home number;
  then ``Mobile2`` (another copy's mobile), ``Business``, ``Business2``, ``Home``, and ``Other``
  for the first number that fits nowhere else (further ones are dropped with a note).
  Graph's v1.0 contact has no fax property, so ``BusinessFax`` stays empty.
* One person held by several users is one entry: the dedup key is the normalised name plus
  the primary E.164 number (the e-mail address when the entry has no name). Copies are merged
  in ``(owner_id, contact_id)`` order: scalar fields from the first copy that has them, numbers
  from every copy. ``Tag`` = ``m365-sync:<key>`` marks the entry as ours. A contact's key depends
  on that contact, its owner's ``usageLocation`` and the parameters only, so an entry can be
  recomputed from just the contacts that feed it (``PhonebookResult.sources``): what the delta
  runs' incremental transform relies on.
* Text loses control and format characters (:mod:`m365_3cx.sanitize`), is NFC-normalised and
  truncated to the 3CX field limits (never inside a grapheme's combining sequence), with a note.
"""

from __future__ import annotations

import hashlib
import json
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

import pandas as pd

from m365_3cx.sanitize import clean_name, clip
from m365_3cx.transform.notes import INFO, WARNING, Note
from m365_3cx.transform.phones import to_e164
from m365_3cx.transform.values import as_bool, as_list, ensure_columns, text

__all__ = [
    "FIELD_COLUMNS",
    "FIELD_LIMITS",
    "MANAGED_FIELDS",
    "PHONE_SLOTS",
    "SOURCE_COLUMNS",
    "TAG_PREFIX",
    "TARGET_COLUMNS",
    "PhonebookBuilder",
    "PhonebookParams",
    "PhonebookResult",
    "contact_note",
    "dedup_key",
    "desired_phonebook",
    "managed_fingerprint",
    "managed_values",
    "params_fingerprint",
    "target_fields",
    "truncate",
]

TAG_PREFIX: Final = "m365-sync:"
"""Start of the ``Tag`` of every entry the sync created."""

PHONE_SLOTS: Final = ("PhoneNumber", "Mobile2", "Business", "Business2", "Home", "BusinessFax", "Other")

#: ``Pbx.Contact`` fields the sync owns, in body order.
MANAGED_FIELDS: Final = ("FirstName", "LastName", "CompanyName", "Title", "Department", "Email", *PHONE_SLOTS, "Tag")

#: 3CX field -> ``tgt_phonebook`` column.
FIELD_COLUMNS: Final[Mapping[str, str]] = {
    "FirstName": "first_name",
    "LastName": "last_name",
    "CompanyName": "company_name",
    "Title": "title",
    "Department": "department",
    "Email": "email",
    "PhoneNumber": "phone_number",
    "Mobile2": "mobile2",
    "Business": "business",
    "Business2": "business2",
    "Home": "home",
    "BusinessFax": "business_fax",
    "Other": "other",
    "Tag": "tag",
}

#: Longest value the sync writes per field, in UTF-16 code units (the XAPI is a .NET service).
#: The swagger (3CX V20 Update 10, ``Pbx.Contact``) declares no ``maxLength`` for any of these and
#: 3CX documents none; these are our choice, as for ``Pbx.User`` names (50,
#: :data:`m365_3cx.transform.extensions.NAME_MAX`), and the 3CX emulator enforces the same.
FIELD_LIMITS: Final[Mapping[str, int]] = {
    "FirstName": 50,
    "LastName": 50,
    "CompanyName": 100,
    "Title": 50,
    "Department": 100,
    "Email": 255,
    **dict.fromkeys(PHONE_SLOTS, 40),
    "Tag": 255,
}

#: Columns of the desired frame (``tgt_phonebook`` without ``run_key``/``computed_at``).
TARGET_COLUMNS: Final = ("contact_key", *FIELD_COLUMNS.values(), "owner_ids", "copies", "state")

_EMAIL: Final = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")

_NUMBER_FIELDS: Final = (("mobile", "mobilePhone"), ("business", "businessPhones"), ("home", "homePhones"))


@dataclass(frozen=True)
class PhonebookParams:
    """What :func:`desired_phonebook` needs from the settings.

    :param default_region: region for numbers of owners without ``usageLocation``.
    :param exclude_category: contacts with this Outlook category never become entries; ``None`` = none.
    :param personal_contacts: ``all``, ``folder`` or ``off`` (``off`` ignores every personal contact).
    :param tag_prefix: start of our ``Tag`` values.
    """

    default_region: str = "US"
    exclude_category: str | None = "Private"
    personal_contacts: str = "all"
    tag_prefix: str = TAG_PREFIX

    @classmethod
    def from_settings(cls, settings: Any) -> PhonebookParams:
        """Build the parameters from ``settings.extensions`` and ``settings.contacts``.

        :param settings: a :class:`~m365_3cx.settings.Settings` (attributes are only read).
        :return: the parameters.
        """
        return cls(
            default_region=str(settings.extensions.default_region),
            exclude_category=settings.contacts.exclude_category,
            personal_contacts=str(settings.contacts.personal_contacts),
        )


@dataclass(frozen=True)
class PhonebookResult:
    """Result of :func:`desired_phonebook`.

    :param frame: desired entries, ``TARGET_COLUMNS``, sorted by ``contact_key``.
    :param notes: per-record problems (skipped contacts, dropped numbers, truncations).
    :param contacts_used: source contacts that went into an entry.
    :param skipped: source contacts skipped (no number, no name).
    :param excluded: source contacts left out for the exclusion category.
    :param sources: ``(owner_id, contact_id, contact_key)`` of every contact that went into an entry:
        which entry each source contact feeds (what an incremental transform recomputes from).
    """

    frame: pd.DataFrame
    notes: list[Note] = field(default_factory=list)
    contacts_used: int = 0
    skipped: int = 0
    excluded: int = 0
    sources: list[tuple[str, str, str]] = field(default_factory=list)


@dataclass(frozen=True, slots=True)
class _Copy:
    """One usable source contact, normalised."""

    owner_id: str
    contact_id: str
    label: str
    structured: bool  # names came from givenName/surname
    first: str | None
    last: str | None
    company: str | None
    title: str | None
    department: str | None
    email: str | None
    numbers: dict[str, list[str]]  # mobile / business / home -> E.164, in source order
    primary: str
    name_key: str


def contact_note(owner_id: str, contact_id: str, label: str, fld: str | None, message: str,
                 severity: str = WARNING) -> Note:
    """A note about one source contact: ``contact <id> of <owner UPN>: <message>``.

    :param owner_id: Graph user id of the mailbox (or ``org``).
    :param contact_id: the contact's id.
    :param label: the owner's UPN (or id).
    :param fld: the Graph field concerned, or ``None``.
    :param message: what happened.
    :param severity: ``info`` (nothing to fix), ``warning`` (worked around bad data) or ``error``.
    :return: the note (object type ``contact``, key ``<owner_id>/<contact_id>``).
    """
    shown = label or owner_id
    return Note(
        object_type="contact",
        object_key=f"{owner_id}/{contact_id}"[:256],
        record_label=shown,
        field=fld,
        severity=severity,
        message=f"contact {contact_id} of {shown}: {message}",
    )


def truncate(value: str | None, limit: int) -> tuple[str | None, bool]:
    """Cut ``value`` to at most ``limit`` UTF-16 code units without leaving a dangling joiner or mark.

    :param value: the text (already normalised) or ``None``.
    :param limit: maximum length (see :func:`m365_3cx.sanitize.clip`).
    :return: ``(text, truncated)``; text is ``None`` when nothing printable is left.
    """
    if value is None:
        return None, False
    cut, changed = clip(value, limit, utf16=True)
    return (cut or None), changed


def _clean(value: object) -> str | None:
    return clean_name(text(value)).value


def _norm_key_text(value: str) -> str:
    return " ".join(unicodedata.normalize("NFKC", value).casefold().split())


def dedup_key(name: str | None, primary: str | None, email: str | None) -> str:
    """The dedup key hash of an entry: normalised name + primary E.164 number (or e-mail).

    :param name: the full name as shown (``"First Last"``, fallback name, or company), or ``None``.
    :param primary: the primary E.164 number, or ``None``.
    :param email: the e-mail address, used when there is no name.
    :return: 32 hex characters, stable across runs and platforms.
    """
    parts = [_norm_key_text(name or ""), primary or ""]
    if not parts[0]:
        parts[0] = "email:" + _norm_key_text(email or "")
    return hashlib.sha256("\x1f".join(parts).encode("utf-8")).hexdigest()[:32]


def _has_category(categories: object, wanted: str | None) -> bool:
    if not wanted:
        return False
    target = wanted.strip().casefold()
    return any(isinstance(c, str) and c.strip().casefold() == target for c in as_list(categories))


def _numbers(row: Mapping[str, Any], region: str | None, params: PhonebookParams,
             note: Any) -> dict[str, list[str]]:
    found: dict[str, list[str]] = {"mobile": [], "business": [], "home": []}
    seen: set[str] = set()
    for slot, column_field in _NUMBER_FIELDS:
        column = {"mobilePhone": "mobile_phone", "businessPhones": "business_phones",
                  "homePhones": "home_phones"}[column_field]
        raw_values = [row.get(column)] if slot == "mobile" else as_list(row.get(column))
        for index, raw in enumerate(raw_values):
            if text(raw) is None:
                continue
            where = column_field if slot == "mobile" else f"{column_field}[{index}]"
            result = to_e164(str(raw), region, params.default_region)
            if result.warning:
                dropped = result.e164 is None
                note(where, result.warning + ("; number left out" if dropped else ""))
            if result.e164 is None or result.e164 in seen:
                continue
            seen.add(result.e164)
            found[slot].append(result.e164)
    return found


def _copy_from_row(row: Mapping[str, Any], label: str, region: str | None, params: PhonebookParams,
                   notes: list[Note]) -> _Copy | None:
    owner_id = str(row["owner_id"])
    contact_id = str(row["contact_id"])

    def note(fld: str | None, message: str, severity: str = WARNING) -> None:
        notes.append(contact_note(owner_id, contact_id, label, fld, message, severity))

    def clean(column: str, fld: str) -> str | None:
        # The staging boundary cleans what it stages (and notes it); this covers older rows.
        cleaned = clean_name(text(row.get(column)))
        if cleaned.changed:
            note(fld, f"{fld} {cleaned.describe()}")
        return cleaned.value

    given, surname = clean("given_name", "givenName"), clean("surname", "surname")
    structured = bool(given or surname)
    first, last = (given, surname) if structured else (clean("display_name", "displayName") or
                                                        clean("file_as", "fileAs"), None)
    company = clean("company_name", "companyName")
    emails = [e for e in (_clean(x) for x in as_list(row.get("email_addresses"))) if e]
    email = emails[0] if emails else None
    if email is not None and not _EMAIL.match(email):
        note("emailAddresses[0]", "is not an e-mail address; left out")
        email = next((e for e in emails[1:] if _EMAIL.match(e)), None)
    numbers = _numbers(row, region, params, note)
    primary = next((n for slot in ("mobile", "business", "home") for n in numbers[slot]), None)
    if primary is None:
        fld = "mobilePhone/businessPhones/homePhones"
        why = "has only an e-mail address" if email else "has no phone number"
        # Not a fault: a phonebook holds dialable entries only, and many contacts have none.
        note(fld, f"{why}; no dialable number, contact skipped", INFO)
        return None
    if not (first or last or company):
        note("displayName", "has no name and no company; contact skipped", WARNING)
        return None
    shown_name = " ".join(p for p in (first, last) if p) or company
    return _Copy(
        owner_id=owner_id, contact_id=contact_id, label=label, structured=structured,
        first=first, last=last, company=company, title=clean("job_title", "jobTitle"),
        department=clean("department", "department"), email=email, numbers=numbers, primary=primary,
        name_key=shown_name or "",
    )


def _first(values: Iterable[str | None]) -> str | None:
    return next((v for v in values if v), None)


def _merge(key: str, copies: list[_Copy], params: PhonebookParams, notes: list[Note]) -> dict[str, Any]:
    copies = sorted(copies, key=lambda c: (c.owner_id, c.contact_id))
    head = copies[0]
    named = next((c for c in copies if c.structured), head)
    values: dict[str, str | None] = {
        "FirstName": named.first,
        "LastName": named.last,
        "CompanyName": _first(c.company for c in copies),
        "Title": _first(c.title for c in copies),
        "Department": _first(c.department for c in copies),
        "Email": _first(c.email for c in copies),
    }

    def pool(slot: str) -> list[str]:
        out: list[str] = []
        for c in copies:
            out.extend(n for n in c.numbers[slot] if n not in out)
        return out

    mobiles, business, home = pool("mobile"), pool("business"), pool("home")
    used = {head.primary}

    def take(candidates: list[str]) -> str | None:
        for number in candidates:
            if number not in used:
                used.add(number)
                return number
        return None

    values["PhoneNumber"] = head.primary
    values["Mobile2"] = take(mobiles)
    values["Business"] = take(business)
    values["Business2"] = take(business)
    values["Home"] = take(home)
    values["BusinessFax"] = None
    leftovers = [n for n in (*mobiles, *business, *home) if n not in used]
    values["Other"] = leftovers[0] if leftovers else None
    if len(leftovers) > 1:
        notes.append(contact_note(head.owner_id, head.contact_id, head.label, "phones",
                                  f"{len(leftovers) - 1} number(s) did not fit the 3CX entry and were left out",
                                  INFO))
    for fld, limit in FIELD_LIMITS.items():
        if fld == "Tag" or values.get(fld) is None:
            continue
        if fld == "Email" and len(values[fld] or "") > limit:
            values[fld] = None
            notes.append(contact_note(head.owner_id, head.contact_id, head.label, "emailAddresses",
                                      f"e-mail address longer than {limit} characters left out"))
            continue
        cut, changed = truncate(values[fld], limit)
        if changed:
            values[fld] = cut
            notes.append(contact_note(head.owner_id, head.contact_id, head.label, fld,
                                      f"{fld} truncated to {limit} characters"))
    values["Tag"] = params.tag_prefix + key
    row: dict[str, Any] = {"contact_key": key}
    row.update({FIELD_COLUMNS[f]: values.get(f) for f in MANAGED_FIELDS})
    row["owner_ids"] = sorted({c.owner_id for c in copies})
    row["copies"] = len(copies)
    row["state"] = "active"
    return row


def _owners(users: pd.DataFrame, *, every: bool = False) -> dict[str, tuple[str, str | None]]:
    """In-scope, not deleted users (``every``: all staged users): id -> (UPN or id, usageLocation)."""
    u = ensure_columns(users, ["user_id", "user_principal_name", "usage_location", "in_scope", "deleted"])
    owners: dict[str, tuple[str, str | None]] = {}
    for row in u.to_dict("records"):
        uid = text(row["user_id"])
        if uid is None or (not every and (not as_bool(row["in_scope"], False) or as_bool(row["deleted"], False))):
            continue
        owners[uid] = (text(row["user_principal_name"]) or uid, text(row["usage_location"]))
    return owners


SOURCE_COLUMNS: Final = ("owner_id", "contact_id", "source", "deleted", "categories", "given_name", "surname",
                         "display_name", "file_as", "company_name", "job_title", "department", "email_addresses",
                         "mobile_phone", "business_phones", "home_phones")
"""The ``stg_contacts`` columns the transform reads (load no others)."""


class PhonebookBuilder:
    """:func:`desired_phonebook` fed contact by chunk: only the normalised copies of usable contacts
    are kept between chunks, never every staged row at once.

    The result does not depend on how the contacts are cut into chunks; notes come in the order the
    contacts were given (the staging order is the primary key), then the merge notes by entry key.
    """

    def __init__(self, users: pd.DataFrame, params: PhonebookParams) -> None:
        self._params = params
        self._owners = _owners(users)
        self._mailboxes = _owners(users, every=True)
        self._notes: list[Note] = []
        self._groups: dict[str, list[_Copy]] = {}
        self._used = self._skipped = self._excluded = 0

    def add(self, contacts: pd.DataFrame) -> None:
        """Take a chunk of ``stg_contacts`` rows (deleted rows are ignored)."""
        params, owners, mailboxes = self._params, self._owners, self._mailboxes
        c = ensure_columns(contacts, list(SOURCE_COLUMNS))
        for row in c.to_dict("records"):
            if as_bool(row["deleted"], False) or text(row["owner_id"]) is None or text(row["contact_id"]) is None:
                continue
            source = text(row["source"]) or "personal"
            if source == "personal":
                if params.personal_contacts == "off" or str(row["owner_id"]) not in owners:
                    continue
                label, region = owners[str(row["owner_id"])]
            elif source == "shared":  # owner "shared:<mailbox id>"; the mailbox need not be in scope
                mailbox = str(row["owner_id"]).removeprefix("shared:")
                upn, region = mailboxes.get(mailbox, (mailbox, None))
                label = f"shared mailbox {upn}"
            else:
                label, region = "organisation", None
            if _has_category(row["categories"], params.exclude_category):
                self._excluded += 1
                continue
            copy = _copy_from_row(row, label, region, params, self._notes)
            if copy is None:
                self._skipped += 1
                continue
            self._used += 1
            key = dedup_key(copy.name_key, copy.primary, copy.email)
            self._groups.setdefault(key, []).append(copy)

    def result(self) -> PhonebookResult:
        """The desired entries of every contact taken so far."""
        groups, notes = self._groups, self._notes
        rows = [_merge(key, groups[key], self._params, notes) for key in sorted(groups)]
        frame = (pd.DataFrame(rows, columns=list(TARGET_COLUMNS)) if rows
                 else pd.DataFrame(columns=list(TARGET_COLUMNS)))
        sources = [(c.owner_id, c.contact_id, key) for key in sorted(groups) for c in groups[key]]
        return PhonebookResult(frame=frame, notes=notes, contacts_used=self._used, skipped=self._skipped,
                               excluded=self._excluded, sources=sources)


def desired_phonebook(contacts: pd.DataFrame, users: pd.DataFrame, params: PhonebookParams) -> PhonebookResult:
    """Compute the desired company phonebook from staged contacts.

    :param contacts: ``stg_contacts`` frame (deleted rows are ignored; :data:`SOURCE_COLUMNS` are read).
    :param users: ``stg_users`` frame (owners: UPN for notes, ``usageLocation``, scope).
    :param params: see :class:`PhonebookParams`.
    :return: the desired entries and the per-record notes. Never raises on bad data.
    """
    builder = PhonebookBuilder(users, params)
    builder.add(contacts)
    return builder.result()


def params_fingerprint(params: PhonebookParams) -> str:
    """A short hash of everything besides the data that shapes entries: an incremental transform is
    only valid while the fingerprint it was built with still holds (else everything is recomputed).

    :param params: the transform parameters.
    :return: 16 hex characters.
    """
    basis = "\x1f".join(str(getattr(params, f)) for f in sorted(params.__dataclass_fields__))
    return hashlib.sha256(f"phonebook-v1\x1f{basis}".encode()).hexdigest()[:16]


def managed_values(fields: Mapping[str, object]) -> tuple[str | None, ...]:
    """The managed fields exactly as the phonebook diff compares them, in :data:`MANAGED_FIELDS` order.

    Each value goes through :func:`~m365_3cx.transform.values.text` (stripped; blank or missing is
    ``None``); keys other than the managed fields are ignored.

    :param fields: ``Pbx.Contact`` field -> value (a desired entry via :func:`target_fields`, or the
        fields last read from 3CX).
    :return: one normalised value per managed field.
    """
    return tuple(text(fields.get(f)) for f in MANAGED_FIELDS)


def managed_fingerprint(fields: Mapping[str, object] | None) -> str | None:
    """The fingerprint of an entry's managed fields: the SHA-256 of :func:`managed_values`.

    Stored as ``tgt_phonebook.fields_hash`` (desired) and ``phonebook_map.current_hash`` (as read from
    3CX): equal fingerprints mean equal normalised values, so the diff of such an entry is empty and
    the plan need not load it.

    :param fields: as for :func:`managed_values`; ``None`` (nothing read) has no fingerprint.
    :return: 64 hex characters, or ``None``.
    """
    if fields is None:
        return None
    payload = json.dumps(managed_values(fields), separators=(",", ":"))  # ASCII: any string encodes
    return hashlib.sha256(payload.encode("ascii")).hexdigest()


def target_fields(row: Mapping[str, Any]) -> dict[str, Any]:
    """The managed fields of a ``tgt_phonebook`` row, keyed by ``Pbx.Contact`` field (missing ones ``None``)."""
    return {f: row.get(FIELD_COLUMNS[f]) for f in MANAGED_FIELDS}
