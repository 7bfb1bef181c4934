"""The company phonebook (``/Contacts``, ``Pbx.Contact``): records, validation and seed (no HTTP).

A :class:`ContactStore` lives on the :class:`~emulators.threecx.state.PbxBackend` and is rebuilt by
its ``reset()``. It takes no lock of its own: the backend calls it under ``backend.lock``.
Validation errors use the XAPI envelope of :mod:`emulators.threecx.errors` (``details[].target``).
"""

from __future__ import annotations

import copy
import re
from collections.abc import Sequence
from typing import Any

from emulators.threecx import errors as e
from emulators.threecx.errors import BadRequest, NotFound, ValidationError
from emulators.threecx.odata import EntityType, LazyViews, register

CONTACT_SOURCES = ("3CX", "CRM", "Google", "M365")
"""``Pbx.ContactSource`` (20.0.9+)."""

PHONE_FIELDS = ("PhoneNumber", "Mobile2", "Home", "Business", "Business2", "BusinessFax", "Other", "Pager")
NAME_FIELDS = ("FirstName", "LastName", "CompanyName")

CONTACT_MAX_LENGTHS: dict[str, int] = {
    "FirstName": 50, "LastName": 50, "CompanyName": 100, "Title": 50, "Department": 100, "Email": 255,
    "Tag": 255, **{name: 40 for name in PHONE_FIELDS},
}
"""Invented but plausible limits (the swagger gives none)."""

_DIALABLE = re.compile(r"^\+?[0-9][0-9 \-]*$")
_EMAIL = re.compile(r"^[^@\s]+@[^@\s]+\.[^@\s]+$")

CONTACT_TYPE = register(EntityType("Pbx.Contact", {
    "Id": int, "FirstName": str, "LastName": str, "CompanyName": str, "Title": str, "Department": str,
    "Email": str, "PhoneNumber": str, "Mobile2": str, "Home": str, "Business": str, "Business2": str,
    "BusinessFax": str, "Other": str, "Pager": str, "Tag": str, "ContactType": str,
}))

SEED_CONTACTS: list[dict[str, Any]] = [
    {"CompanyName": "Contoso Facility Management", "PhoneNumber": "+49 30 1234567",
     "Email": "facility@contoso.example"},
    {"FirstName": "Pizza", "LastName": "Service", "CompanyName": "Pizzeria Roma", "PhoneNumber": "+49 30 9876543"},
    {"FirstName": "IT", "LastName": "Helpdesk", "CompanyName": "Fabrikam Managed Services",
     "Business": "+44 20 7946 0000", "Email": "helpdesk@fabrikam.example"},
    {"FirstName": "Megan", "LastName": "Bowen", "CompanyName": "Contoso", "PhoneNumber": "+1 425 555 0109",
     "Email": "MeganB@contoso.example", "ContactType": "M365"},
    {"FirstName": "Alex", "LastName": "Wilber", "CompanyName": "Contoso", "Business": "+1 425 555 0110",
     "Email": "AlexW@contoso.example", "ContactType": "M365"},
]
"""Hand-made company contacts (``3CX``, no Tag) and two created by 3CX's own M365 integration."""


def _empty(contact_type: str) -> dict[str, Any]:
    record: dict[str, Any] = {name: "" for name, kind in CONTACT_TYPE.props.items() if kind is str}
    record.update({"Id": 0, "ContactType": contact_type})
    return record


class ContactStore:
    """``Pbx.Contact`` records by id (own id sequence, starting at 1).

    :param default_type: ``ContactType`` of a contact created without one (undocumented by 3CX).
    """

    def __init__(self, default_type: str = "3CX") -> None:
        if default_type not in CONTACT_SOURCES:
            raise ValueError(f"default_contact_type must be one of {CONTACT_SOURCES}")
        self._contacts: dict[int, dict[str, Any]] = {}
        self._order: list[int] | None = []  # the ids in id order; None after a delete (rebuilt when read)
        self._by_tag: dict[str, set[int]] = {}  # Tag -> ids, for ``$filter=Tag eq ..`` reads
        self._next_id = 1
        self.default_type = default_type

    def seed(self) -> None:
        for body in SEED_CONTACTS:
            self.create({"ContactType": "3CX", **body})  # hand-made in the 3CX UI

    def list(self) -> list[dict[str, Any]]:
        """Every contact, by id: the stored records themselves, read-only (no copies, no sort).

        Ids only grow and records are replaced, never changed in place (:meth:`update`), so the dict's
        insertion order is id order and a page read costs O(page) copies, not O(phonebook).
        """
        return list(self._contacts.values())

    def view(self) -> Sequence[dict[str, Any]]:
        """Every contact, by id, as :meth:`list` gives them, without copying the phonebook: slicing a page
        costs O(page). Read it before the store changes (the routes do, under ``backend.lock``)."""
        if self._order is None:
            self._order = list(self._contacts)
        return LazyViews(self._order, self._contacts.__getitem__)

    def by_ids(self, ids: Any) -> list[dict[str, Any]]:
        """The stored records with these ids, by id (read-only); unknown ids are left out."""
        return [self._contacts[i] for i in sorted(set(ids)) if i in self._contacts]

    def by_tags(self, tags: Any) -> list[dict[str, Any]]:
        """The stored records whose ``Tag`` is one of ``tags``, by id (read-only): an index lookup."""
        ids: set[int] = set()
        for tag in set(tags):
            ids |= self._by_tag.get(tag, set())
        return [self._contacts[i] for i in sorted(ids)]

    def _index(self, record: dict[str, Any]) -> None:
        self._by_tag.setdefault(record["Tag"], set()).add(record["Id"])

    def _unindex(self, record: dict[str, Any]) -> None:
        ids = self._by_tag.get(record["Tag"])
        if ids is not None:
            ids.discard(record["Id"])
            if not ids:
                del self._by_tag[record["Tag"]]

    def get(self, contact_id: int) -> dict[str, Any]:
        """:raises NotFound:"""
        found = self._contacts.get(contact_id)
        if found is None:
            raise NotFound("Contact")
        return copy.deepcopy(found)

    def create(self, body: Any) -> dict[str, Any]:
        """Create from a ``Pbx.Contact`` body. :raises ValidationError: :raises BadRequest:"""
        record = _empty(self.default_type)
        record.update(self._validated(body, record, self.default_type))
        _require_name(record)
        record["Id"] = self._next_id
        self._next_id += 1
        self._contacts[record["Id"]] = record
        self._index(record)
        if self._order is not None:
            self._order.append(record["Id"])
        return copy.deepcopy(record)

    def update(self, contact_id: int, body: Any) -> dict[str, Any]:
        """PATCH semantics, atomic. :raises NotFound: :raises ValidationError:"""
        current = self._contacts.get(contact_id)
        if current is None:
            raise NotFound("Contact")
        draft = {**current, **self._validated(body, current, self.default_type)}
        _require_name(draft)
        self._unindex(current)
        self._contacts[contact_id] = draft
        self._index(draft)
        return copy.deepcopy(draft)

    def delete(self, contact_id: int) -> None:
        """:raises NotFound:"""
        gone = self._contacts.pop(contact_id, None)
        if gone is None:
            raise NotFound("Contact")
        self._unindex(gone)
        self._order = None

    def delete_many(self, ids: Any) -> int:
        """Delete every listed id that exists (unknown ids are ignored); return how many went.

        :raises BadRequest: when ``ids`` is not a list of integers.
        """
        if not isinstance(ids, list) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise BadRequest("The parameter 'ids' must be an array of integers.")
        removed = [r for r in (self._contacts.pop(i, None) for i in ids) if r is not None]
        for record in removed:
            self._unindex(record)
        gone = len(removed)
        if gone:
            self._order = None
        return gone

    @staticmethod
    def _validated(body: Any, current: dict[str, Any], default_type: str) -> dict[str, Any]:
        if not isinstance(body, dict):
            raise BadRequest("The request body must be a JSON object.")
        changes: dict[str, Any] = {}
        for name, value in body.items():
            if name.startswith("@odata") or name == "Id":
                continue
            if name not in CONTACT_TYPE.props:
                raise ValidationError(name, e.UNKNOWN_PROPERTY)
            if value is None:
                value = default_type if name == "ContactType" else ""
            if not isinstance(value, str):
                raise ValidationError(name, e.INVALID_VALUE)
            limit = CONTACT_MAX_LENGTHS.get(name)
            if limit is not None and len(value) > limit:
                raise ValidationError(name, e.TOO_LONG)
            if name in PHONE_FIELDS and value and not _DIALABLE.match(value):
                raise ValidationError(name, e.INVALID_PHONE)
            if name == "Email" and value and not _EMAIL.match(value):
                raise ValidationError(name, e.INVALID_EMAIL)
            if name == "ContactType" and value not in CONTACT_SOURCES:
                raise ValidationError(name, e.INVALID_VALUE)
            changes[name] = value
        return changes


def _require_name(record: dict[str, Any]) -> None:
    if not any((record.get(n) or "").strip() for n in NAME_FIELDS):
        raise ValidationError("FirstName", e.REQUIRED)
