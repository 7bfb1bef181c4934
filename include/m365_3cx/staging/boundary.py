"""Where Graph data enters staging: every item made fit for its table before the bulk insert.

A page of users, contacts or events is written with one bulk statement, so a single value
PostgreSQL refuses (NUL, a lone surrogate, a string longer than its ``varchar(n)``, a value of
the wrong type for its column, the same key twice in one ``INSERT ... ON CONFLICT``) would fail
the whole page, and the retries the same way. The functions here clean each item *before* the
row builders of :mod:`.repo`, :mod:`.contacts` and :mod:`.presence` see it, with
:func:`m365_3cx.sanitize.clean_text`:

* every string anywhere in the item (JSON columns too) loses its control/format characters and
  lone surrogates;
* every string bound for a ``String(n)`` column is clipped to ``n`` characters. The columns are
  sized for what Graph documents (``docs/internals.md``; e.g. ``givenName``/``surname`` 64,
  ``displayName`` 256, ``jobTitle`` 128, ``department`` 64, ``mobilePhone`` 64 characters, per
  the Graph v1.0 *user* resource) with room to spare; clipping only catches what Graph should
  never send;
* a value of the wrong JSON type (an object where Graph sends a string, a string where it sends
  a boolean) becomes ``None``;
* an item whose key does not fit its column is *rejected*: it cannot be stored without
  changing its identity.

Each change is a :class:`~m365_3cx.sanitize.Finding` (property and what was done); the caller
turns findings into ``sync_notes`` rows naming the record. The rest of the page commits.
"""

from __future__ import annotations

import datetime as dt
import functools
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from sqlalchemy import String, Table

from m365_3cx.sanitize import REPLACEMENT, Finding, clean_json, clean_text
from m365_3cx.staging.schema import stg_contacts, stg_events, stg_users

__all__ = [
    "CONTACT_PROPERTY_COLUMNS",
    "USER_PROPERTY_COLUMNS",
    "CleanItem",
    "clean_contact_item",
    "clean_event_row",
    "clean_user_item",
    "column_limit",
    "dedupe",
    "printable_key",
    "storable_row",
    "usable_key",
]

#: Graph user property -> ``stg_users`` column, for the string properties.
USER_PROPERTY_COLUMNS: Final[Mapping[str, str]] = {
    "userPrincipalName": "user_principal_name",
    "displayName": "display_name",
    "givenName": "given_name",
    "surname": "surname",
    "mail": "mail",
    "mobilePhone": "mobile_phone",
    "userType": "user_type",
    "usageLocation": "usage_location",
    "department": "department",
    "jobTitle": "job_title",
}
_USER_BOOLEANS: Final = ("accountEnabled",)
_USER_JSON: Final = ("businessPhones", "onPremisesExtensionAttributes")

#: Graph contact property -> ``stg_contacts`` column, for the string properties.
CONTACT_PROPERTY_COLUMNS: Final[Mapping[str, str]] = {
    "displayName": "display_name",
    "givenName": "given_name",
    "middleName": "middle_name",
    "surname": "surname",
    "fileAs": "file_as",
    "companyName": "company_name",
    "department": "department",
    "jobTitle": "job_title",
    "mobilePhone": "mobile_phone",
}
_CONTACT_LISTS: Final = ("businessPhones", "homePhones", "categories")

#: ``stg_events`` text columns (from :class:`m365_3cx.graph.calendar.CalendarEvent`).
_EVENT_TEXT: Final = ("time_zone", "show_as", "sensitivity", "event_type", "series_master_id", "change_key",
                      "subject")


@functools.cache
def _limit(table: Table, column: str) -> int | None:
    kind = table.c[column].type
    return kind.length if isinstance(kind, String) else None


def column_limit(table: Table, column: str) -> int | None:
    """The length of a ``String(n)`` column, ``None`` for unbounded text."""
    return _limit(table, column)


@dataclass
class CleanItem:
    """An item after the boundary.

    :param item: the clean item (a copy), or ``None`` when it was rejected.
    :param findings: what was changed (or why it was rejected), per property.
    """

    item: dict[str, Any] | None
    findings: list[Finding] = field(default_factory=list)

    @property
    def rejected(self) -> bool:
        """The item cannot be staged."""
        return self.item is None


def _text(out: dict[str, Any], prop: str, limit: int | None, findings: list[Finding]) -> None:
    value = out.get(prop)
    if value is None or (type(value) is str and (limit is None or len(value) <= limit) and value.isprintable()):
        return  # nothing for clean_text to do (its own fast test)
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        out[prop] = None
        findings.append(Finding(prop, f"is a {type(value).__name__}, not text; left empty"))
        return
    cleaned = clean_text(str(value), limit=limit)
    if cleaned.changed:
        findings.append(Finding(prop, cleaned.describe()))
    out[prop] = cleaned.value


def usable_key(raw: object, limit: int | None) -> bool:
    """Whether ``raw`` can be stored as a key as it is: text, not empty, no control character, fits."""
    return (isinstance(raw, str) and bool(raw) and not clean_text(raw).changed
            and (limit is None or len(raw) <= limit))


def _key(item: Mapping[str, Any], limit: int | None, findings: list[Finding]) -> str | None:
    raw = item.get("id")
    if not isinstance(raw, str) or not raw:
        findings.append(Finding("id", "has no usable id; not staged", rejected=True))
        return None
    if type(raw) is str and raw.isprintable() and (limit is None or len(raw) <= limit):
        return raw
    cleaned = clean_text(raw)
    if cleaned.changed or (limit is not None and len(raw) > limit):
        why = "holds control characters" if cleaned.changed else f"is {len(raw)} characters, over {limit}"
        findings.append(Finding("id", f"{why}; not staged", rejected=True))
        return None
    return raw


def _json(out: dict[str, Any], prop: str, findings: list[Finding]) -> None:
    if prop in out:
        out[prop], found = clean_json(out[prop], prop)
        findings.extend(found)


def clean_user_item(item: Mapping[str, Any]) -> CleanItem:
    """Clean one Graph user (``GRAPH_USER_SELECT`` properties) for ``stg_users``.

    :param item: the user as Graph returns it (also a partial delta item).
    :return: the clean copy and the findings; rejected when the id is unusable.
    """
    findings: list[Finding] = []
    if _key(item, column_limit(stg_users, "user_id"), findings) is None:
        return CleanItem(None, findings)
    if "@removed" in item:
        return CleanItem(dict(item))
    out = dict(item)
    for prop, column in USER_PROPERTY_COLUMNS.items():
        _text(out, prop, column_limit(stg_users, column), findings)
    for prop in _USER_BOOLEANS:
        if out.get(prop) is not None and not isinstance(out[prop], bool):
            findings.append(Finding(prop, f"is a {type(out[prop]).__name__}, not a boolean; left empty"))
            out[prop] = None
    for prop in _USER_JSON:
        _json(out, prop, findings)
    return CleanItem(out, findings)


def clean_contact_item(item: Mapping[str, Any]) -> CleanItem:
    """Clean one Graph contact (``GRAPH_CONTACT_SELECT`` properties) for ``stg_contacts``.

    Only the stored parts of ``emailAddresses`` (the addresses) are reported; display names
    are dropped by the row builder anyway.

    :param item: the contact as Graph returns it.
    :return: the clean copy and the findings; rejected when the id is unusable.
    """
    findings: list[Finding] = []
    if _key(item, column_limit(stg_contacts, "contact_id"), findings) is None:
        return CleanItem(None, findings)
    if "@removed" in item:
        return CleanItem(dict(item))
    out = dict(item)
    for prop, limit in _contact_text_limits():
        _text(out, prop, limit, findings)
    for prop in _CONTACT_LISTS:
        if out.get(prop) is not None and not isinstance(out[prop], list):
            out[prop] = None
        _json(out, prop, findings)
    addresses = out.get("emailAddresses")
    if isinstance(addresses, list):
        clean: list[Any] = []
        for index, entry in enumerate(addresses):
            mapping = type(entry) is dict or isinstance(entry, Mapping)
            address = entry.get("address") if mapping else entry
            if address is None or (type(address) is str and address.isprintable()):
                value = address  # what clean_json would return, with no finding
            else:
                value, found = clean_json(address, f"emailAddresses[{index}]")
                findings.extend(found)
            clean.append({"address": value} if mapping else value)
        out["emailAddresses"] = clean
    elif addresses is not None:
        out["emailAddresses"] = None
    for prop in ("changeKey", "parentFolderId"):
        value = out.get(prop)
        if isinstance(value, str) and not value.isprintable():
            out[prop] = clean_text(value).value
    return CleanItem(out, findings)


@functools.cache
def _contact_text_limits() -> tuple[tuple[str, int | None], ...]:
    """``(Graph property, String length or None)`` of the contact text properties (looked up once)."""
    return tuple((prop, column_limit(stg_contacts, column)) for prop, column in CONTACT_PROPERTY_COLUMNS.items())


def clean_event_row(row: Mapping[str, Any]) -> CleanItem:
    """Clean one ``stg_events`` row (keys ``user_id``, ``event_id`` and the event columns).

    :return: the clean copy and the findings (named by column); rejected when the event id
        does not fit.
    """
    findings: list[Finding] = []
    event_id = row.get("event_id")
    limit, columns = _event_limits()
    if not isinstance(event_id, str) or not event_id or (limit is not None and len(event_id) > limit) \
            or (not event_id.isprintable() and clean_text(event_id).changed):
        return CleanItem(None, [Finding("id", "event id is unusable or too long; not staged", rejected=True)])
    out = dict(row)
    for column, column_limit_ in columns:
        _text(out, column, column_limit_, findings)
    return CleanItem(out, findings)


@functools.cache
def _event_limits() -> tuple[int | None, tuple[tuple[str, int | None], ...]]:
    """The ``event_id`` limit and ``(column, limit)`` of the event text columns (looked up once)."""
    return column_limit(stg_events, "event_id"), tuple((c, column_limit(stg_events, c)) for c in _EVENT_TEXT)


def _storable_text(value: str, limit: int | None) -> str:
    if not value.isprintable():
        value = "".join(REPLACEMENT if ch == "\x00" or "\ud800" <= ch <= "\udfff" else ch for ch in value)
    return value[:limit] if limit is not None else value


_SCALARS: Final = frozenset({type(None), bool, int, float, dt.date, dt.datetime})
"""Exact types :func:`_storable` keeps as they are without the (slower) ``Mapping`` check."""


def _storable(value: Any, limit: int | None = None) -> Any:
    if isinstance(value, str):
        return _storable_text(value, limit)
    if type(value) in _SCALARS:
        return value
    if isinstance(value, Mapping):
        return {_storable_text(str(k), None): _storable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [_storable(v) for v in value]
    return value


def storable_row(table: Table, row: Mapping[str, Any]) -> dict[str, Any]:
    """A row read from 3CX made storable as it is: NUL and lone surrogates become U+FFFD, strings are cut
    to their ``String(n)`` column.

    Unlike the Graph boundary nothing else is removed, so a value that differs from what the sync
    wants (an invisible character typed into 3CX by hand) still differs and is put back.

    :param table: the target table (``cur_extensions``).
    :param row: the row (keys are column names).
    :return: a copy.
    """
    limits = _limits(table)
    return {key: _storable(value, limits.get(key)) for key, value in row.items()}


@functools.cache
def _limits(table: Table) -> dict[str, int | None]:
    """``{column: String length or None}`` of a table (once per table: every audit row needs it)."""
    return {column.key: _limit(table, column.key) for column in table.c}


def printable_key(raw: object, limit: int = 256) -> str:
    """A record key as a note may show it: cleaned and clipped (for keys that were refused)."""
    return clean_text(str(raw or ""), limit=limit).value or "?"


def dedupe(rows: Iterable[dict[str, Any]], key_cols: tuple[str, ...]) -> list[dict[str, Any]]:
    """Keep the last row per key: one ``INSERT ... ON CONFLICT DO UPDATE`` may touch a row only once.

    :param rows: rows to insert.
    :param key_cols: the conflict target.
    :return: rows in first-seen order, each key once (its last value).
    """
    latest: dict[tuple[Any, ...], dict[str, Any]] = {}
    for row in rows:
        latest[tuple(row.get(c) for c in key_cols)] = row
    return list(latest.values())
