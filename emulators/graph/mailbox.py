"""Exchange Online mailboxes: contact folders, contacts, events, mailbox settings, Outlook delta (no HTTP).

One :class:`MailboxStore` per tenant holds a :class:`Mailbox` per member user with a ``mail``.
Outlook delta works like Exchange's sync states: every round stores a snapshot
``{item key: changeKey}`` under a generation number, and the token names that generation. The
next round diffs the current folder (or calendar window) against it: new or edited items come
back in full, items that left (deleted, moved away, cancelled, moved out of the window) come
back as ``@removed``. A token whose sync state is gone (expired via the admin API, older than
``token_max_age``, pruned, or from before a reset) raises :class:`SyncStateGone` (410).
Every public method takes the store's lock.
"""

from __future__ import annotations

import base64
import binascii
import copy
import datetime as dt
import hashlib
import json
import random
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from emulators.graph import calendar as cal

CONTACT_FIELDS: tuple[str, ...] = (
    "displayName", "givenName", "middleName", "surname", "nickName", "initials", "title", "generation",
    "companyName", "department", "jobTitle", "officeLocation", "profession", "manager", "assistantName",
    "businessHomePage", "businessPhones", "homePhones", "mobilePhone", "emailAddresses", "imAddresses",
    "categories", "fileAs", "personalNotes", "birthday", "spouseName", "children", "businessAddress",
    "homeAddress", "otherAddress", "yomiGivenName", "yomiSurname", "yomiCompanyName",
)
"""Writable ``microsoft.graph.contact`` properties the emulator stores."""

_CONTACT_LISTS = frozenset({"businessPhones", "homePhones", "emailAddresses", "imAddresses", "categories",
                            "children"})
_CONTACT_OBJECTS = frozenset({"businessAddress", "homeAddress", "otherAddress"})
CONTACT_PROPERTIES: tuple[str, ...] = ("id", "createdDateTime", "lastModifiedDateTime", "changeKey",
                                       "parentFolderId", *CONTACT_FIELDS)

EVENT_FIELDS: tuple[str, ...] = ("subject", "showAs", "sensitivity", "isAllDay", "isCancelled", "categories",
                                 "location", "importance", "bodyPreview", "isOnlineMeeting")
SHOW_AS = ("free", "tentative", "busy", "oof", "workingElsewhere", "unknown")
SENSITIVITY = ("normal", "personal", "private", "confidential")
EVENT_PROPERTIES: tuple[str, ...] = (
    "id", "createdDateTime", "lastModifiedDateTime", "changeKey", "categories", "originalStartTimeZone",
    "originalEndTimeZone", "iCalUId", "subject", "bodyPreview", "importance", "sensitivity", "isAllDay",
    "isCancelled", "isOrganizer", "seriesMasterId", "showAs", "type", "webLink", "isOnlineMeeting",
    "recurrence", "responseStatus", "start", "end", "location", "locations", "attendees", "organizer",
)
AUTO_REPLY_STATUS = ("disabled", "alwaysEnabled", "scheduled")
EXTERNAL_AUDIENCE = ("none", "contactsOnly", "all")
MAX_SYNC_STATES = 30
ChangeListener = Callable[[str, str, str, str, "str | None"], None]
"""``(kind "contacts"/"events", user id, change created/updated/deleted, REST id, immutable id)``."""
MAILBOX_CONCURRENCY = 4


class MailboxError(Exception):
    """Base of the mailbox errors the routes translate."""


class UnknownUser(MailboxError):
    """No such user (404 ``ErrorInvalidUser``)."""


class MailboxNotEnabled(MailboxError):
    """Guest, user without mail, or soft-deleted user (404 ``MailboxNotEnabledForRESTAPI``)."""


class ItemNotFound(MailboxError):
    """No such folder, contact or event (404 ``ErrorItemNotFound``)."""


class SyncStateGone(MailboxError):
    """The delta token's sync state is gone (410 ``SyncStateNotFound``)."""

    def __init__(self, generation: int, highest: int) -> None:
        super().__init__(generation)
        self.generation = generation
        self.highest = highest


class BadSyncToken(MailboxError):
    """A ``$skiptoken``/``$deltatoken`` that is not one of ours or not for this folder."""


@dataclass
class MailboxOptions:
    """Seed and delta settings (``start(**opts)``/CLI).

    :param contacts_per_user: contacts per seeded mailbox (the first mailbox gets ``2n + 2``).
    :param events_per_user: calendar entries per seeded mailbox (single events or series).
    :param now: the seed's "now" (aware); ``None`` = current time rounded down to the hour.
    :param token_max_age: seconds an Outlook sync state stays valid.
    """

    contacts_per_user: int = 5
    events_per_user: int = 8
    now: dt.datetime | None = None
    token_max_age: float = 7 * 24 * 3600


@dataclass
class Folder:
    id: str
    displayName: str
    parentFolderId: str

    def public(self) -> dict[str, Any]:
        return {"id": self.id, "displayName": self.displayName, "parentFolderId": self.parentFolderId}


@dataclass
class Contact:
    """A contact: ``rest_id`` changes on a folder move, ``immutable_id`` never does."""

    immutable_id: str
    rest_id: str
    folder_id: str
    props: dict[str, Any]
    created: str
    modified: str
    change_key: str
    seq: int

    def snapshot(self) -> Contact:
        """A copy of this moment's contact sharing ``props`` (replaced on edit, never changed in place)."""
        return Contact(self.immutable_id, self.rest_id, self.folder_id, self.props, self.created, self.modified,
                       self.change_key, self.seq)


@dataclass
class Event:
    """A single instance or a series master (``recurrence`` set) with its exceptions and cancellations."""

    id: str
    ical_uid: str
    props: dict[str, Any]
    start: dt.datetime
    end: dt.datetime
    start_zone: str
    end_zone: str
    created: str
    modified: str
    change_key: str
    seq: int
    recurrence: dict[str, Any] | None = None
    exceptions: dict[dt.date, dict[str, Any]] = field(default_factory=dict)
    cancelled: set[dt.date] = field(default_factory=set)


@dataclass
class SyncState:
    generation: int
    scope: str
    snapshot: dict[str, tuple[str, str]]
    items: list[tuple[str, Any]]
    issued: float
    window: tuple[dt.datetime, dt.datetime] | None = None
    select: tuple[str, ...] | None = None
    source_version: int | None = None  # the mailbox's contacts/events version the snapshot was taken at


@dataclass
class Mailbox:
    user_id: str
    address: str
    display_name: str
    time_zone: str
    root_folder_id: str
    folders: dict[str, Folder] = field(default_factory=dict)
    contacts: dict[str, Contact] = field(default_factory=dict)
    events: dict[str, Event] = field(default_factory=dict)
    automatic_replies: dict[str, Any] = field(default_factory=dict)
    working_hours: dict[str, Any] = field(default_factory=dict)
    language: str = "en-US"
    sync: dict[int, SyncState] = field(default_factory=dict)
    generation: int = 0
    # bumped by every contact/event change: a delta round over an unchanged mailbox reuses the
    # previous snapshot instead of rebuilding it (no per-request cost in the mailbox's size)
    versions: dict[str, int] = field(default_factory=lambda: {"contacts": 0, "events": 0})


@dataclass(frozen=True)
class DeltaPage:
    """One page of an Outlook delta round: ``("item", payload)``/``("removed", ids)`` entries."""

    entries: list[tuple[str, Any]]
    next_token: str | None
    delta_token: str | None
    select: tuple[str, ...] | None


@dataclass(frozen=True)
class Instance:
    """An event as calendarView returns it (single instance, occurrence or exception)."""

    id: str
    kind: str
    event: Event
    start: dt.datetime
    end: dt.datetime
    change_key: str
    ical_uid: str
    props: dict[str, Any]
    start_zone: str
    end_zone: str


class ConcurrencyTracker:
    """Outlook's 4-concurrent-requests-per-mailbox limit, with peaks and a rejection count."""

    def __init__(self, limit: int = MAILBOX_CONCURRENCY) -> None:
        self.limit = limit
        self._lock = threading.Lock()
        self._in_flight: dict[str, int] = {}
        self._peak: dict[str, int] = {}
        self.rejected = 0

    def try_acquire(self, user_id: str) -> bool:
        with self._lock:
            current = self._in_flight.get(user_id, 0)
            if current >= self.limit:
                self.rejected += 1
                return False
            self._in_flight[user_id] = current + 1
            self._peak[user_id] = max(self._peak.get(user_id, 0), current + 1)
            return True

    def release(self, user_id: str) -> None:
        with self._lock:
            self._in_flight[user_id] = max(0, self._in_flight.get(user_id, 0) - 1)

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            return {"peak": dict(self._peak), "rejected": self.rejected,
                    "in_flight": {k: v for k, v in self._in_flight.items() if v}, "limit": self.limit}

    def reset(self) -> None:
        with self._lock:
            self._peak.clear()
            self.rejected = 0


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _now_iso() -> str:
    return dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _derived_key(*parts: str) -> str:
    return "DwAAABYAAA" + _b64(hashlib.sha1("|".join(parts).encode()).digest())[:18]


def occurrence_id(master_id: str, day: dt.date) -> str:
    """Deterministic id of a series occurrence (stable across calls, as Graph's are)."""
    return "AAMkAOcc" + _b64(f"{master_id}|{day.isoformat()}".encode())


def parse_occurrence_id(value: str) -> tuple[str, dt.date] | None:
    if not value.startswith("AAMkAOcc"):
        return None
    body = value[len("AAMkAOcc"):]
    try:
        master, _, day = base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)).decode().rpartition("|")
        return master, dt.date.fromisoformat(day)
    except (ValueError, binascii.Error, UnicodeDecodeError):
        return None


class MailboxStore:
    """All mailboxes of the tenant.

    :param seed: tenant seed (mailbox content is drawn from ``Random(f"{seed}/mailbox/...")``).
    :param options: :class:`MailboxOptions`.
    """

    def __init__(self, seed: int, options: MailboxOptions | None = None) -> None:
        self._lock = threading.RLock()
        self.seed = seed
        self.options = options or MailboxOptions()
        self.concurrency = ConcurrencyTracker()
        self._mailboxes: dict[str, Mailbox] = {}
        self.epoch = uuid.uuid4().hex[:10]
        self._rng = random.Random(f"{seed}/mailbox-runtime")
        self._seq = 0
        self.now = self._resolve_now()
        self.on_change: ChangeListener | None = None

    def _changed(self, kind: str, mbx: Mailbox, change: str, rest_id: str, immutable_id: str | None = None) -> None:
        """Count the change and tell the change-notification hub (it only queues; delivery runs on its own thread)."""
        mbx.versions[kind] = mbx.versions.get(kind, 0) + 1
        if self.on_change is not None:
            self.on_change(kind, mbx.user_id, change, rest_id, immutable_id)

    def _resolve_now(self) -> dt.datetime:
        if self.options.now is not None:
            now = self.options.now
            return (now if now.tzinfo else now.replace(tzinfo=dt.UTC)).astimezone(dt.UTC)
        return dt.datetime.now(dt.UTC).replace(minute=0, second=0, microsecond=0)

    # ------------------------------------------------------------ lifecycle
    def reseed(self, seed: int, users: list[dict[str, Any]]) -> None:
        """Rebuild every mailbox from the seed; old delta tokens become invalid (new epoch)."""
        from emulators.graph import mailbox_seed

        with self._lock:
            self.seed = seed
            self._rng = random.Random(f"{seed}/mailbox-runtime")
            self._mailboxes = {}
            self._seq = 0
            self.epoch = uuid.uuid4().hex[:10]
            self.now = self._resolve_now()
            self.concurrency = ConcurrencyTracker()
            index = 0
            for user in users:
                if not has_mailbox(user):
                    continue
                mbx = self._new_mailbox(user)
                self._mailboxes[user["id"]] = mbx
                mailbox_seed.fill(self, mbx, index, user)
                index += 1

    def _new_mailbox(self, user: dict[str, Any]) -> Mailbox:
        country = (user.get("usageLocation") or "US").upper()
        tz = cal.COUNTRY_ZONES.get(country, "UTC")
        mbx = Mailbox(user_id=user["id"], address=user.get("mail") or "", display_name=user.get("displayName") or "",
                      time_zone=tz, root_folder_id=self.new_id("AAMkAFld"), language=user.get("preferredLanguage")
                      or "en-US")
        mbx.folders[mbx.root_folder_id] = Folder(mbx.root_folder_id, "Contacts", self.new_id("AAMkARoot"))
        mbx.automatic_replies = {
            "status": "disabled", "externalAudience": "all",
            "scheduledStartDateTime": cal.format_graph_datetime(self.now, "UTC"),
            "scheduledEndDateTime": cal.format_graph_datetime(self.now + dt.timedelta(days=1), "UTC"),
            "internalReplyMessage": "", "externalReplyMessage": ""}
        mbx.working_hours = {"daysOfWeek": list(cal.DAY_NAMES[:5]), "startTime": "08:00:00.0000000",
                             "endTime": "17:00:00.0000000", "timeZone": {"name": tz}}
        return mbx

    def new_id(self, prefix: str = "AAMkA") -> str:
        return prefix + _b64(self._rng.getrandbits(192).to_bytes(24, "big"))

    def _change_key(self) -> str:
        return "EQAAABYAAAD" + _b64(self._rng.getrandbits(96).to_bytes(12, "big"))

    def _next_seq(self) -> int:
        self._seq += 1
        return self._seq

    def mailbox(self, user: dict[str, Any]) -> Mailbox:
        """The user's mailbox (created empty on first use for a member with mail).

        :raises MailboxNotEnabled: for guests and users without mail.
        """
        with self._lock:
            if not has_mailbox(user):
                raise MailboxNotEnabled(user["id"])
            mbx = self._mailboxes.get(user["id"])
            if mbx is None:
                mbx = self._mailboxes[user["id"]] = self._new_mailbox(user)
            return mbx

    # ------------------------------------------------------------ folders and contacts
    def folder_by_name(self, mbx: Mailbox, name: str | None, *, create: bool) -> Folder:
        """The root folder for ``None``/``"Contacts"``, else a child folder by display name.

        :raises ItemNotFound: when missing and not ``create``.
        """
        with self._lock:
            if name is None or name == "" or name.lower() == "contacts":
                return mbx.folders[mbx.root_folder_id]
            found = next((f for f in mbx.folders.values() if f.displayName == name
                          and f.id != mbx.root_folder_id), None)
            if found is None:
                if not create:
                    raise ItemNotFound(name)
                found = Folder(self.new_id("AAMkAFld"), name, mbx.root_folder_id)
                mbx.folders[found.id] = found
            return found

    def folder(self, mbx: Mailbox, folder_id: str) -> Folder:
        """A folder by id (or the well-known name ``contacts``). :raises ItemNotFound:"""
        with self._lock:
            if folder_id.lower() == "contacts":
                return mbx.folders[mbx.root_folder_id]
            if folder_id not in mbx.folders:
                raise ItemNotFound(folder_id)
            return mbx.folders[folder_id]

    def child_folders(self, mbx: Mailbox) -> list[dict[str, Any]]:
        with self._lock:
            return [f.public() for f in mbx.folders.values() if f.id != mbx.root_folder_id]

    def contacts_in(self, mbx: Mailbox, folder_id: str) -> list[Contact]:
        """The folder's contacts by creation, as of now: shallow copies (a contact's ``props`` is replaced on
        every edit, never changed in place, so a copy keeps this moment's content without a deep copy)."""
        with self._lock:
            return [c.snapshot() for c in sorted(mbx.contacts.values(), key=lambda c: c.seq)
                    if c.folder_id == folder_id]

    def find_contact(self, mbx: Mailbox, contact_id: str) -> Contact:
        """By immutable or current REST id. :raises ItemNotFound:"""
        with self._lock:
            found = mbx.contacts.get(contact_id) or next(
                (c for c in mbx.contacts.values() if c.rest_id == contact_id), None)
            if found is None:
                raise ItemNotFound(contact_id)
            return found

    def create_contact(self, mbx: Mailbox, body: dict[str, Any], folder: str | None = None,
                       *, created: str | None = None) -> Contact:
        """Store a new contact and return it (the stored object: render it, do not edit it).

        :raises ValueError: for unknown or mistyped properties.
        """
        with self._lock:
            props = _contact_props(body, {})
            target = self.folder_by_name(mbx, folder, create=True)
            stamp = created or _now_iso()
            contact = Contact(self.new_id("AAkALgAA"), self.new_id("AAMkA"), target.id, props, stamp, stamp,
                              self._change_key(), self._next_seq())
            mbx.contacts[contact.immutable_id] = contact
            self._changed("contacts", mbx, "created", contact.rest_id, contact.immutable_id)
            return contact

    def update_contact(self, mbx: Mailbox, contact_id: str, changes: dict[str, Any]) -> Contact:
        """:raises ItemNotFound: :raises ValueError:"""
        with self._lock:
            contact = self.find_contact(mbx, contact_id)
            contact.props = _contact_props(changes, contact.props)
            contact.modified = _now_iso()
            contact.change_key = self._change_key()
            self._changed("contacts", mbx, "updated", contact.rest_id, contact.immutable_id)
            return copy.deepcopy(contact)

    def delete_contact(self, mbx: Mailbox, contact_id: str) -> None:
        """:raises ItemNotFound:"""
        with self._lock:
            contact = self.find_contact(mbx, contact_id)
            del mbx.contacts[contact.immutable_id]
            self._changed("contacts", mbx, "deleted", contact.rest_id, contact.immutable_id)

    def move_contact(self, mbx: Mailbox, contact_id: str, folder: str | None) -> Contact:
        """Move to the folder named ``folder`` (created if missing): new REST id, same immutable id."""
        with self._lock:
            contact = self.find_contact(mbx, contact_id)
            target = self.folder_by_name(mbx, folder, create=True)
            if target.id != contact.folder_id:
                contact.folder_id = target.id
                contact.rest_id = self.new_id("AAMkA")
                contact.change_key = self._change_key()
                contact.modified = _now_iso()
                self._changed("contacts", mbx, "updated", contact.rest_id, contact.immutable_id)
            return copy.deepcopy(contact)

    # ------------------------------------------------------------ events
    def create_event(self, mbx: Mailbox, body: dict[str, Any], *, created: str | None = None) -> Event:
        """Store an event from Graph JSON (``start``/``end`` required, optional ``recurrence``); return it.

        :raises ValueError: for bad times, zones, enums or recurrence.
        """
        with self._lock:
            start, start_zone = cal.parse_graph_datetime(body.get("start"))
            end, end_zone = cal.parse_graph_datetime(body.get("end"))
            # Graph holds events that end before they start (e.g. written by other clients): stored as given
            props = _event_props(body, {"subject": "", "showAs": "busy", "sensitivity": "normal",
                                        "isAllDay": False, "isCancelled": False, "categories": [],
                                        "location": {"displayName": ""}, "importance": "normal",
                                        "bodyPreview": "", "isOnlineMeeting": False})
            if props["isAllDay"]:
                _check_all_day(start, end, start_zone)
            recurrence = cal.validate_recurrence(body["recurrence"]) if body.get("recurrence") else None
            if recurrence is not None and recurrence["range"]["startDate"] is None:
                recurrence["range"]["startDate"] = start.astimezone(cal.zone(start_zone)).date().isoformat()
            stamp = created or _now_iso()
            event = Event(self.new_id("AAMkAEvt"), "040000008200E00074C5B7101A82E008" + uuid.UUID(
                int=self._rng.getrandbits(128)).hex.upper(), props, start, end, start_zone, end_zone,
                stamp, stamp, self._change_key(), self._next_seq(), recurrence)
            mbx.events[event.id] = event
            self._changed("events", mbx, "created", event.id)
            return event

    def _event_or_occurrence(self, mbx: Mailbox, event_id: str) -> tuple[Event, dt.date | None]:
        event = mbx.events.get(event_id)
        if event is not None:
            return event, None
        parsed = parse_occurrence_id(event_id)
        if parsed and parsed[0] in mbx.events and mbx.events[parsed[0]].recurrence is not None:
            return mbx.events[parsed[0]], parsed[1]
        raise ItemNotFound(event_id)

    def update_event(self, mbx: Mailbox, event_id: str, changes: dict[str, Any]) -> dict[str, Any]:
        """Edit an event or series (all occurrences), or one occurrence (becomes an exception).

        ``isCancelled: true`` on an occurrence cancels that occurrence.

        :raises ItemNotFound: :raises ValueError:
        """
        with self._lock:
            event, day = self._event_or_occurrence(mbx, event_id)
            if day is not None:
                if changes.get("isCancelled") is True:
                    event.cancelled.add(day)
                else:
                    override = dict(event.exceptions.get(day, {}))
                    for key in ("start", "end"):
                        if key in changes:
                            override[key] = cal.parse_graph_datetime(changes[key])
                    props = {k: v for k, v in changes.items() if k not in ("start", "end")}
                    override["props"] = _event_props(props, dict(override.get("props", {})), partial=True)
                    override["change_key"] = self._change_key()
                    event.exceptions[day] = override
            else:
                if "start" in changes:
                    event.start, event.start_zone = cal.parse_graph_datetime(changes["start"])
                if "end" in changes:
                    event.end, event.end_zone = cal.parse_graph_datetime(changes["end"])
                props = {k: v for k, v in changes.items() if k not in ("start", "end", "recurrence")}
                event.props = _event_props(props, event.props)
                if "recurrence" in changes:
                    event.recurrence = cal.validate_recurrence(changes["recurrence"]) if changes["recurrence"] \
                        else None
            event.change_key = self._change_key()
            event.modified = _now_iso()
            self._changed("events", mbx, "updated", event_id)
            return self.render_event_master(event)

    def delete_event(self, mbx: Mailbox, event_id: str) -> None:
        """Delete an event or series; an occurrence id deletes (cancels) that occurrence."""
        with self._lock:
            event, day = self._event_or_occurrence(mbx, event_id)
            if day is None:
                del mbx.events[event.id]
                self._changed("events", mbx, "deleted", event.id)
            else:
                event.cancelled.add(day)
                event.change_key = self._change_key()
                self._changed("events", mbx, "deleted", event_id)

    def cancel_occurrence(self, mbx: Mailbox, series_id: str, day: dt.date) -> dict[str, Any]:
        """:raises ItemNotFound: for an unknown series or a date without an occurrence."""
        with self._lock:
            event = mbx.events.get(series_id)
            if event is None or event.recurrence is None:
                raise ItemNotFound(series_id)
            horizon = dt.datetime.combine(day + dt.timedelta(days=2), dt.time(), dt.UTC)
            dates = {o.original_date for o in self._occurrences(event, horizon)}
            if day not in dates:
                raise ItemNotFound(f"{series_id} has no occurrence on {day}")
            event.cancelled.add(day)
            event.change_key = self._change_key()
            event.modified = _now_iso()
            self._changed("events", mbx, "deleted", occurrence_id(series_id, day))
            return self.render_event_master(event)

    def _occurrences(self, event: Event, until: dt.datetime) -> list[cal.Occurrence]:
        assert event.recurrence is not None
        duration = cal.local_duration(event.start, event.end, event.start_zone)
        return cal.expand(event.recurrence, event.start, duration, event.start_zone, until)

    def instances(self, mbx: Mailbox, window_start: dt.datetime, window_end: dt.datetime) -> list[Instance]:
        """calendarView: single instances, occurrences and exceptions overlapping the window, by start."""
        with self._lock:
            out: list[Instance] = []
            for event in mbx.events.values():
                if event.recurrence is None:
                    out.append(Instance(event.id, "singleInstance", event, event.start, event.end,
                                        event.change_key, event.ical_uid, dict(event.props), event.start_zone,
                                        event.end_zone))
                    continue
                until = window_end + dt.timedelta(days=1)
                for occ in self._occurrences(event, until):
                    if occ.original_date in event.cancelled:
                        continue
                    iid = occurrence_id(event.id, occ.original_date)
                    override = event.exceptions.get(occ.original_date)
                    props = dict(event.props)
                    start, end, kind = occ.start, occ.end, "occurrence"
                    start_zone, end_zone = event.start_zone, event.end_zone
                    change_key = _derived_key(event.change_key, iid)
                    if override is not None:
                        kind = "exception"
                        props.update(override.get("props", {}))
                        if "start" in override:
                            start, start_zone = override["start"]
                        if "end" in override:
                            end, end_zone = override["end"]
                        change_key = _derived_key(event.change_key, iid, override["change_key"])
                    ical = event.ical_uid + occ.original_date.strftime("%Y%m%d")
                    out.append(Instance(iid, kind, event, start, end, change_key, ical, props, start_zone, end_zone))
            hits = [i for i in out if _overlaps(i.start, i.end, window_start, window_end)]
            return sorted(hits, key=lambda i: (i.start, i.end, i.id))

    def render_event_master(self, event: Event) -> dict[str, Any]:
        """Admin view of a stored event or series master (UTC times, recurrence, cancellations)."""
        with self._lock:
            out = render_instance(Instance(event.id, "seriesMaster" if event.recurrence else "singleInstance",
                                           event, event.start, event.end, event.change_key, event.ical_uid,
                                           dict(event.props), event.start_zone, event.end_zone), None)
            out["start"] = cal.format_graph_datetime(event.start, event.start_zone)
            out["end"] = cal.format_graph_datetime(event.end, event.end_zone)
            out["recurrence"] = copy.deepcopy(event.recurrence)
            out["cancelledOccurrences"] = sorted(d.isoformat() for d in event.cancelled)
            out["exceptionDates"] = sorted(d.isoformat() for d in event.exceptions)
            return out

    # ------------------------------------------------------------ settings
    def set_automatic_replies(self, mbx: Mailbox, body: dict[str, Any]) -> dict[str, Any]:
        """Merge an ``automaticRepliesSetting``; enums compared case-insensitively. :raises ValueError:"""
        with self._lock:
            current = dict(mbx.automatic_replies)
            for key, value in body.items():
                if key.startswith("@odata"):
                    continue
                if key == "status":
                    current[key] = _enum(value, AUTO_REPLY_STATUS, key)
                elif key == "externalAudience":
                    current[key] = _enum(value, EXTERNAL_AUDIENCE, key)
                elif key in ("scheduledStartDateTime", "scheduledEndDateTime"):
                    cal.parse_graph_datetime(value)
                    current[key] = {"dateTime": value["dateTime"], "timeZone": value.get("timeZone") or "UTC"}
                elif key in ("internalReplyMessage", "externalReplyMessage"):
                    current[key] = str(value or "")
                else:
                    raise ValueError(f"unknown automaticRepliesSetting property: {key}")
            mbx.automatic_replies = current
            return copy.deepcopy(current)

    def automatic_replies(self, mbx: Mailbox) -> dict[str, Any]:
        """The ``automaticRepliesSetting`` (a fresh copy)."""
        with self._lock:
            return fresh(mbx.automatic_replies)

    def settings(self, mbx: Mailbox) -> dict[str, Any]:
        with self._lock:
            return {
                "archiveFolder": None, "timeZone": mbx.time_zone,
                "automaticRepliesSetting": copy.deepcopy(mbx.automatic_replies),
                "language": {"locale": mbx.language, "displayName": mbx.language},
                "workingHours": copy.deepcopy(mbx.working_hours), "dateFormat": "yyyy-MM-dd",
                "timeFormat": "HH:mm", "userPurpose": "user", "delegateMeetingMessageDeliveryOptions":
                    "sendToDelegateOnly",
            }

    # ------------------------------------------------------------ delta
    def _new_state(self, mbx: Mailbox, scope: str, snapshot: dict[str, tuple[str, str]],
                   items: list[tuple[str, Any]], window: tuple[dt.datetime, dt.datetime] | None,
                   select: tuple[str, ...] | None) -> SyncState:
        mbx.generation += 1
        state = SyncState(mbx.generation, scope, snapshot, items, time.time(), window, select)
        mbx.sync[state.generation] = state
        same = sorted(g for g, s in mbx.sync.items() if s.scope == scope)
        for old in same[:-MAX_SYNC_STATES]:
            del mbx.sync[old]
        return state

    def _token(self, mbx: Mailbox, state: SyncState, phase: str, offset: int) -> str:
        raw = json.dumps({"u": mbx.user_id, "s": state.scope, "g": state.generation, "p": phase, "o": offset,
                          "e": self.epoch}, separators=(",", ":"))
        return _b64(raw.encode())

    def _state_for(self, mbx: Mailbox, scope: str, token: str, phase: str) -> tuple[SyncState, int]:
        try:
            data = json.loads(base64.urlsafe_b64decode(token + "=" * (-len(token) % 4)))
            user, tscope, gen, tphase, offset, epoch = (data["u"], data["s"], int(data["g"]), data["p"],
                                                         int(data["o"]), data["e"])
        except (ValueError, KeyError, TypeError, binascii.Error) as exc:
            raise BadSyncToken(token) from exc
        if user != mbx.user_id or tscope != scope or tphase != phase:
            raise BadSyncToken(token)
        highest = max((g for g, s in mbx.sync.items() if s.scope == scope), default=0)
        state = mbx.sync.get(gen)
        if epoch != self.epoch or state is None:
            raise SyncStateGone(gen, highest)
        if time.time() - state.issued > self.options.token_max_age:
            del mbx.sync[gen]
            raise SyncStateGone(gen, highest)
        return state, offset

    def _page(self, mbx: Mailbox, state: SyncState, offset: int, limit: int) -> DeltaPage:
        entries = state.items[offset:offset + limit]
        end = offset + limit
        if end < len(state.items):
            return DeltaPage(entries, self._token(mbx, state, "i", end), None, state.select)
        return DeltaPage(entries, None, self._token(mbx, state, "d", 0), state.select)

    def contacts_delta(self, mbx: Mailbox, folder_id: str, *, skiptoken: str | None, deltatoken: str | None,
                       select: list[str] | None, limit: int) -> DeltaPage:
        """One page of a contacts delta round over one folder.

        :raises SyncStateGone: :raises BadSyncToken:
        """
        with self._lock:
            scope = f"contacts:{folder_id}"
            if skiptoken:
                state, offset = self._state_for(mbx, scope, skiptoken, "i")
                return self._page(mbx, state, offset, limit)
            version = mbx.versions.get("contacts", 0)
            if deltatoken:
                previous, _ = self._state_for(mbx, scope, deltatoken, "d")
                if previous.source_version == version:  # nothing changed in the mailbox since
                    state = self._new_state(mbx, scope, previous.snapshot, [], None, previous.select)
                    state.source_version = version
                    return self._page(mbx, state, 0, limit)
            current = {c.immutable_id: c for c in self.contacts_in(mbx, folder_id)}
            snapshot = {k: (c.change_key, c.rest_id) for k, c in current.items()}
            if deltatoken:
                items: list[tuple[str, Any]] = []
                for key, contact in current.items():
                    if previous.snapshot.get(key, ("", ""))[0] != contact.change_key:
                        items.append(("item", contact))
                for key, (_, rest_id) in previous.snapshot.items():
                    if key not in current:
                        items.append(("removed", (key, rest_id)))
                state = self._new_state(mbx, scope, snapshot, items, None, previous.select)
            else:
                state = self._new_state(mbx, scope, snapshot, [("item", c) for c in current.values()], None,
                                        tuple(select) if select else None)
            state.source_version = version
            return self._page(mbx, state, 0, limit)

    def events_delta(self, mbx: Mailbox, *, window: tuple[dt.datetime, dt.datetime] | None,
                     skiptoken: str | None, deltatoken: str | None, limit: int) -> DeltaPage:
        """One page of a calendarView delta round (cancelled events count as removed).

        :raises SyncStateGone: :raises BadSyncToken: :raises ValueError: without a window on an initial round.
        """
        with self._lock:
            scope = "events"
            if skiptoken:
                state, offset = self._state_for(mbx, scope, skiptoken, "i")
                return self._page(mbx, state, offset, limit)
            previous = self._state_for(mbx, scope, deltatoken, "d")[0] if deltatoken else None
            version = mbx.versions.get("events", 0)
            if previous is not None and previous.source_version == version:  # nothing changed since
                state = self._new_state(mbx, scope, previous.snapshot, [], previous.window, None)
                state.source_version = version
                return self._page(mbx, state, 0, limit)
            bounds = previous.window if previous is not None else window
            if bounds is None:
                raise ValueError("window required")
            current = {i.id: i for i in self.instances(mbx, *bounds) if not i.props.get("isCancelled")}
            snapshot = {k: (i.change_key, k) for k, i in current.items()}
            if previous is None:
                items: list[tuple[str, Any]] = [("item", i) for i in current.values()]
            else:
                items = [("item", i) for k, i in current.items()
                         if previous.snapshot.get(k, ("", ""))[0] != i.change_key]
                items += [("removed", (k, k)) for k in previous.snapshot if k not in current]
            state = self._new_state(mbx, scope, snapshot, items, bounds, None)
            state.source_version = version
            return self._page(mbx, state, 0, limit)

    def expire(self, user_id: str | None, kind: str | None, folder: str | None = None) -> int:
        """Drop sync states (all, one user's, one kind's, one folder's); return how many went."""
        with self._lock:
            dropped = 0
            for mbx in self._mailboxes.values():
                if user_id is not None and mbx.user_id != user_id:
                    continue
                folder_ids: set[str] | None = None
                if folder is not None:
                    folder_ids = {f.id for f in mbx.folders.values() if folder in (f.id, f.displayName)}
                for gen, state in list(mbx.sync.items()):
                    state_kind = "events" if state.scope == "events" else "contacts"
                    if kind is not None and kind != state_kind:
                        continue
                    if folder_ids is not None and state.scope.split(":", 1)[-1] not in folder_ids:
                        continue
                    del mbx.sync[gen]
                    dropped += 1
            return dropped

    # ------------------------------------------------------------ admin view
    def dump(self, mbx: Mailbox) -> dict[str, Any]:
        """``GET /_emulator/users/{id}/mailbox``."""
        with self._lock:
            folders = [{**f.public(), "isRoot": f.id == mbx.root_folder_id} for f in mbx.folders.values()]
            names = {f.id: f.displayName for f in mbx.folders.values()}
            contacts = [{**render_contact(c, immutable=True), "restId": c.rest_id, "folder": names[c.folder_id]}
                        for c in sorted(mbx.contacts.values(), key=lambda c: c.seq)]
            events = [self.render_event_master(e) for e in sorted(mbx.events.values(), key=lambda e: e.seq)]
            return {"userId": mbx.user_id, "address": mbx.address, "timeZone": mbx.time_zone,
                    "now": cal.iso_utc(self.now), "folders": folders, "contacts": contacts, "events": events,
                    "automaticReplies": copy.deepcopy(mbx.automatic_replies),
                    "syncStates": sorted(mbx.sync)}


# ---------------------------------------------------------------- helpers

def has_mailbox(user: dict[str, Any]) -> bool:
    """Member users with a ``mail`` have an Exchange Online mailbox; guests and others do not."""
    return bool(user.get("mail")) and user.get("userType", "Member") == "Member"


def _overlaps(start: dt.datetime, end: dt.datetime, ws: dt.datetime, we: dt.datetime) -> bool:
    if start == end:
        return ws <= start < we
    return start < we and end > ws


def _enum(value: Any, allowed: tuple[str, ...], name: str) -> str:
    match = next((a for a in allowed if isinstance(value, str) and a.lower() == value.lower()), None)
    if match is None:
        raise ValueError(f"{name} must be one of {', '.join(allowed)}")
    return match


def _check_all_day(start: dt.datetime, end: dt.datetime, zone_name: str) -> None:
    tz = cal.zone(zone_name)
    for value in (start, end):
        if value.astimezone(tz).time() != dt.time():
            raise ValueError("an all-day event must start and end at midnight in its time zone")
    if end <= start:
        raise ValueError("an all-day event lasts at least one day")


def _contact_props(body: dict[str, Any], base: dict[str, Any]) -> dict[str, Any]:
    props = copy.deepcopy(base)
    for key, value in body.items():
        if key.startswith("@odata") or key in ("id", "parentFolderId", "changeKey", "createdDateTime",
                                               "lastModifiedDateTime"):
            continue
        if key not in CONTACT_FIELDS:
            raise ValueError(f"unknown contact property: {key}")
        if key in _CONTACT_LISTS:
            if value is not None and not isinstance(value, list):
                raise ValueError(f"{key} must be a list")
            value = list(value or [])
        elif key in _CONTACT_OBJECTS:
            if value is not None and not isinstance(value, dict):
                raise ValueError(f"{key} must be an object")
            value = dict(value or {})
        elif value is not None and not isinstance(value, str):
            raise ValueError(f"{key} must be a string")
        props[key] = copy.deepcopy(value)
    for key in CONTACT_FIELDS:
        if key not in props:
            props[key] = [] if key in _CONTACT_LISTS else {} if key in _CONTACT_OBJECTS else None
    if props.get("emailAddresses"):
        for item in props["emailAddresses"]:
            if not isinstance(item, dict) or "address" not in item:
                raise ValueError("emailAddresses items need an address")
            item.setdefault("name", item["address"])
    if not props.get("displayName"):
        names = " ".join(p for p in (props.get("givenName"), props.get("middleName"), props.get("surname")) if p)
        first_mail = props["emailAddresses"][0]["address"] if props["emailAddresses"] else None
        props["displayName"] = names or props.get("companyName") or first_mail or ""
    if props.get("fileAs") is None:
        given, surname = props.get("givenName"), props.get("surname")
        props["fileAs"] = f"{surname}, {given}" if given and surname else props["displayName"]
    if props.get("personalNotes") is None:
        props["personalNotes"] = ""
    return props


def _event_props(body: dict[str, Any], base: dict[str, Any], *, partial: bool = False) -> dict[str, Any]:
    props = dict(base)
    for key, value in body.items():
        if key.startswith("@odata") or key in ("id", "type", "start", "end", "recurrence", "originalStartTimeZone",
                                               "originalEndTimeZone", "iCalUId", "changeKey"):
            continue
        if key not in EVENT_FIELDS:
            raise ValueError(f"unknown event property: {key}")
        if key == "showAs":  # stored as given: Graph can hold PascalCase and values newer than this enum
            if not isinstance(value, str) or not value:
                raise ValueError(f"showAs must be a non-empty string (known: {', '.join(SHOW_AS)})")
        elif key == "sensitivity":
            value = _enum(value, SENSITIVITY, key)
        elif key in ("isAllDay", "isCancelled", "isOnlineMeeting") and not isinstance(value, bool):
            raise ValueError(f"{key} must be a boolean")
        elif key == "location" and isinstance(value, str):
            value = {"displayName": value}
        props[key] = copy.deepcopy(value)
    return props


def fresh(value: Any) -> Any:
    """A copy of a JSON value sharing nothing mutable with it (lists, dicts and tuples copied, scalars
    shared): what ``copy.deepcopy`` gives for JSON data, without its memo bookkeeping."""
    cls = type(value)
    if cls is dict:
        return {k: fresh(v) for k, v in value.items()}
    if cls is list:
        return [fresh(v) for v in value]
    if cls is tuple:
        return tuple(fresh(v) for v in value)
    return value


def render_contact(contact: Contact, *, immutable: bool,
                   select: list[str] | tuple[str, ...] | None = None) -> dict[str, Any]:
    """Graph JSON of a contact (fresh objects); ``immutable`` picks the id format (``Prefer:
    IdType="ImmutableId"``); ``select`` keeps only those properties (with ``@odata.etag`` and ``id``), as
    ``project(render_contact(c, immutable=...), select)`` would."""
    out: dict[str, Any] = {
        "@odata.etag": f'W/"{contact.change_key}"',
        "id": contact.immutable_id if immutable else contact.rest_id,
        "createdDateTime": contact.created, "lastModifiedDateTime": contact.modified,
        "changeKey": contact.change_key, "parentFolderId": contact.folder_id,
    }
    if select is None:
        for key, value in contact.props.items():
            out[key] = fresh(value)
        return out
    keep = {"@odata.etag", "@odata.type", "id", *select}
    out = {k: v for k, v in out.items() if k in keep}
    for key, value in contact.props.items():
        if key in keep:
            out[key] = fresh(value)
    return out


def render_instance(inst: Instance, zone_name: str | None) -> dict[str, Any]:
    """Graph JSON of a calendarView item, times in ``zone_name`` (UTC when ``None``)."""
    event, props = inst.event, inst.props
    master = inst.kind in ("occurrence", "exception")
    organizer = {"emailAddress": {"name": "", "address": ""}}
    return {
        "@odata.etag": f'W/"{inst.change_key}"', "id": inst.id, "createdDateTime": event.created,
        "lastModifiedDateTime": event.modified, "changeKey": inst.change_key,
        "categories": list(props.get("categories") or []), "originalStartTimeZone": inst.start_zone,
        "originalEndTimeZone": inst.end_zone, "iCalUId": inst.ical_uid, "subject": props.get("subject", ""),
        "bodyPreview": props.get("bodyPreview", ""), "importance": props.get("importance", "normal"),
        "sensitivity": props.get("sensitivity", "normal"), "isAllDay": bool(props.get("isAllDay")),
        "isCancelled": bool(props.get("isCancelled")), "isOrganizer": True,
        "seriesMasterId": event.id if master else None, "showAs": props.get("showAs", "busy"),
        "type": inst.kind, "webLink": f"https://outlook.office365.com/owa/?itemid={inst.id}&exvsurl=1",
        "isOnlineMeeting": bool(props.get("isOnlineMeeting")), "recurrence": None,
        "responseStatus": {"response": "organizer", "time": "0001-01-01T00:00:00Z"},
        "start": cal.format_graph_datetime(inst.start, zone_name or "UTC"),
        "end": cal.format_graph_datetime(inst.end, zone_name or "UTC"),
        "location": fresh(props.get("location") or {"displayName": ""}),
        "locations": [], "attendees": [], "organizer": organizer,
    }
