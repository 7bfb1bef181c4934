"""Organisational contacts (``microsoft.graph.orgContact``) and their change log (no HTTP).

Documented: learn.microsoft.com/graph/api/resources/orgcontact (properties), orgcontact-list
(``GET /contacts``: ``$select``, ``$top``, paging), orgcontact-get, orgcontact-delta (``GET
/contacts/delta``: ``$select`` remembered by the links, ``@removed`` for deleted contacts);
application permission ``OrgContact.Read.All``. Microsoft's delta page shows no ``phones`` and
a long-standing feedback item (techcommunity "Get OrgContacts delta with their Addresses and
Phones") reports that delta does not return them: this emulator's delta never returns
``phones`` either, so a client must read them from ``GET /contacts`` or ``GET /contacts/{id}``.
"""

from __future__ import annotations

import copy
import threading
import uuid
from dataclasses import dataclass
from typing import Any, Final

PROPERTIES: Final = ("id", "displayName", "givenName", "surname", "companyName", "department", "jobTitle", "mail",
                     "mailNickname", "phones", "addresses", "proxyAddresses", "onPremisesSyncEnabled")
DEFAULT_SELECT: Final = ("id", "displayName", "givenName", "surname", "companyName", "department", "jobTitle",
                         "mail", "mailNickname", "phones")
NOT_IN_DELTA: Final = frozenset({"phones", "addresses"})
PHONE_TYPES: Final = ("home", "business", "mobile", "other", "assistant", "homeFax", "businessFax", "otherFax",
                      "pager", "radio")


class UnknownContact(KeyError):
    """No such organisational contact."""


@dataclass
class _Entry:
    props: dict[str, Any]
    generation: int
    deleted: bool = False


class OrgContactStore:
    """The tenant's organisational contacts; thread safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.clear()

    def clear(self) -> None:
        """No contacts; a new epoch (delta tokens issued before are refused)."""
        self._entries: dict[str, _Entry] = {}
        self.generation = 0
        self.epoch = uuid.uuid4().hex[:8]

    def _check(self, data: dict[str, Any]) -> None:
        unknown = set(data) - set(PROPERTIES)
        if unknown:
            raise ValueError(f"unknown orgContact properties: {', '.join(sorted(unknown))}")
        for phone in data.get("phones") or []:
            if not isinstance(phone, dict) or phone.get("type") not in PHONE_TYPES:
                raise ValueError(f"phones[].type must be one of {', '.join(PHONE_TYPES)}")

    def create(self, data: dict[str, Any]) -> dict[str, Any]:
        """Add a contact (``id`` optional). :raises ValueError: unknown properties or phone types."""
        self._check(data)
        with self._lock:
            contact_id = str(data.get("id") or uuid.uuid4())
            if contact_id in self._entries and not self._entries[contact_id].deleted:
                raise ValueError(f"orgContact {contact_id} exists")
            props: dict[str, Any] = dict.fromkeys(PROPERTIES)
            props.update({"phones": [], "addresses": [], "proxyAddresses": [], "onPremisesSyncEnabled": True})
            props.update(copy.deepcopy(data))
            props["id"] = contact_id
            self.generation += 1
            self._entries[contact_id] = _Entry(props, self.generation)
            return copy.deepcopy(props)

    def update(self, contact_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        """:raises UnknownContact: :raises ValueError:"""
        self._check(changes)
        with self._lock:
            entry = self._live(contact_id)
            entry.props.update({k: copy.deepcopy(v) for k, v in changes.items() if k != "id"})
            self.generation += 1
            entry.generation = self.generation
            return copy.deepcopy(entry.props)

    def delete(self, contact_id: str) -> None:
        """:raises UnknownContact:"""
        with self._lock:
            entry = self._live(contact_id)
            entry.deleted = True
            self.generation += 1
            entry.generation = self.generation

    def _live(self, contact_id: str) -> _Entry:
        entry = self._entries.get(contact_id)
        if entry is None or entry.deleted:
            raise UnknownContact(contact_id)
        return entry

    def get(self, contact_id: str) -> dict[str, Any]:
        """:raises UnknownContact:"""
        with self._lock:
            return copy.deepcopy(self._live(contact_id).props)

    def list(self) -> list[dict[str, Any]]:
        """Live contacts in creation order."""
        with self._lock:
            return [copy.deepcopy(e.props) for e in self._entries.values() if not e.deleted]

    def changes(self, since: int, upto: int) -> list[tuple[dict[str, Any], bool]]:
        """``(props, deleted)`` for a delta round: every live contact when ``since`` is 0 (initial
        round), else the contacts changed or deleted in ``(since, upto]``; creation order."""
        with self._lock:
            if since == 0:
                return [(copy.deepcopy(e.props), False) for e in self._entries.values() if not e.deleted]
            return [(copy.deepcopy(e.props), e.deleted) for e in self._entries.values()
                    if since < e.generation <= upto]
