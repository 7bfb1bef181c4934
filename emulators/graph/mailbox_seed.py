"""Deterministic mailbox content: a messy contact corpus, realistic calendars, automatic replies.

Each mailbox draws from ``random.Random(f"{seed}/mailbox/{user id}")``, so the same seed gives the
same content (times are relative to the store's ``now``). Quotas are index based so every
category shows up in a small tenant:

* contacts: ``contacts_per_user`` per mailbox (the first mailbox ``2n + 2``, every 7th none), starting
  with items of the special corpus (rotated by mailbox index): extensions, vanity and national
  numbers, e-mail-only, emoji and right-to-left names, a 300-character company, "Private"
  categories, the same external person in several mailboxes; a "3CX" folder for every 3rd mailbox
  and a "Private stuff" folder for every 4th.
* events: ``events_per_user`` entries per mailbox from the template list (rotated by index):
  back-to-back and overlapping meetings, an all-day out-of-office, a business trip across the next
  DST change, a private appointment, a weekly series with one cancelled and one moved occurrence,
  tentative and working-elsewhere entries, a daily stand-up series.
* automatic replies: index % 5 == 2 scheduled (yesterday .. in 3 days), index % 5 == 4 alwaysEnabled.
"""

from __future__ import annotations

import datetime as dt
import random
from typing import TYPE_CHECKING, Any

from emulators.graph import calendar as cal
from emulators.graph.seed import GIVEN_NAMES, SURNAMES, ascii_fold

if TYPE_CHECKING:
    from emulators.graph.mailbox import Mailbox, MailboxStore

LONG_COMPANY = ("Global Consolidated Interplanetary Logistics, Warehousing, Freight Forwarding and "
                "Customs Brokerage Services International Holding Company Limited Partnership "
                "(Europe, Middle East and Africa Regional Headquarters) - Department of Extremely "
                "Long Names and Redundant Descriptions for Testing Field Length Limits in Phonebooks")[:300]

SHARED_PERSON: dict[str, Any] = {
    "givenName": "Hans", "surname": "Zimmermann", "companyName": "Zimmermann Elektro GmbH",
    "businessPhones": ["+49 89 12345678"], "emailAddresses": [{"name": "Hans Zimmermann",
                                                               "address": "hans@zimmermann-elektro.example"}],
}
"""The same external person, stored by several users (duplicate across mailboxes)."""

SPECIAL_CONTACTS: list[dict[str, Any]] = [
    {"givenName": "Bob", "surname": "Kelly", "companyName": "Northwind Traders",
     "businessPhones": ["+1 555 0100 x23"], "mobilePhone": "(425) 555-0123 ext. 7"},
    SHARED_PERSON,
    {"displayName": "1-800-FLOWERS", "companyName": "1-800-FLOWERS", "businessPhones": ["1-800-FLOWERS"]},
    {"givenName": "Klaus", "surname": "Becker", "companyName": "Becker Sanitär", "businessPhones": ["030 1234567"]},
    {"givenName": "Oliver", "surname": "Twist", "companyName": "Dickens & Co", "businessPhones": ["020 7946 0958"]},
    {"givenName": "Emailonly", "surname": "Person",
     "emailAddresses": [{"name": "Emailonly Person", "address": "only.mail@example.org"}]},
    {"displayName": "😀 Party Line", "givenName": "😀 Party", "surname": "Line", "mobilePhone": "+44 7700 900123"},
    {"displayName": "محمد الأحمد", "givenName": "محمد", "surname": "الأحمد", "mobilePhone": "+971 50 123 4567"},
    {"displayName": "דוד לוי", "givenName": "דוד", "surname": "לוי", "businessPhones": ["+972 3 123 4567"]},
    {"givenName": "Very", "surname": "Longcompany", "companyName": LONG_COMPANY,
     "businessPhones": ["+33 1 23 45 67 89"]},
    {"givenName": "Secret", "surname": "Friend", "categories": ["Private"], "mobilePhone": "+49 170 1234567"},
    {**SHARED_PERSON, "businessPhones": [], "mobilePhone": "+49 171 7654321"},
    {"givenName": "Dr. Anna", "middleName": "Maria", "surname": "von Stein", "jobTitle": "Chief Physician",
     "department": "Cardiology", "companyName": "Charité", "businessPhones": ["+49 30 450 50", "+49 30 450 51"],
     "homePhones": ["+49 30 9999999"], "imAddresses": ["sip:anna.vonstein@charite.example"]},
]

_COMPANIES = ("Fabrikam", "Northwind Traders", "Adventure Works", "Tailspin Toys", "Litware", "Woodgrove Bank",
              "Proseware", "Wide World Importers")


def _phone(rng: random.Random) -> str:
    digits = "".join(str(rng.randrange(10)) for _ in range(7))
    return rng.choice((f"+49 30 {digits}", f"+1 206 555 01{digits[:2]}", f"+44 20 7946 {digits[:4]}",
                       f"+33 1 {digits[:2]} {digits[2:4]} {digits[4:6]} 00", f"0{digits[:3]} {digits[3:]}"))


def _plain_contact(rng: random.Random) -> dict[str, Any]:
    given, surname = rng.choice(GIVEN_NAMES), rng.choice(SURNAMES)
    company = rng.choice(_COMPANIES)
    domain = ascii_fold(company).lower().replace(" ", "") + ".example"
    contact: dict[str, Any] = {"givenName": given, "surname": surname, "companyName": company,
                               "jobTitle": rng.choice(("Buyer", "Sales", "CEO", "Technician", None))}
    if rng.random() < 0.8:
        contact["businessPhones"] = [_phone(rng)]
    if rng.random() < 0.5 or not contact.get("businessPhones"):
        contact["mobilePhone"] = _phone(rng)
    if rng.random() < 0.7:
        address = f"{ascii_fold(given).lower()}.{ascii_fold(surname).lower()}@{domain}"
        contact["emailAddresses"] = [{"name": f"{given} {surname}", "address": address}]
    return contact


def fill(store: MailboxStore, mbx: Mailbox, index: int, user: dict[str, Any]) -> None:
    """Seed one mailbox (called by :meth:`MailboxStore.reseed` under its lock)."""
    rng = random.Random(f"{store.seed}/mailbox/{user['id']}")
    _fill_contacts(store, mbx, index, rng)
    _fill_events(store, mbx, index, rng)
    if index % 5 == 2:
        mbx.automatic_replies.update({
            "status": "scheduled", "externalAudience": "contactsOnly",
            "scheduledStartDateTime": cal.format_graph_datetime(store.now - dt.timedelta(days=1), "UTC"),
            "scheduledEndDateTime": cal.format_graph_datetime(store.now + dt.timedelta(days=3), "UTC"),
            "internalReplyMessage": f"<html><body>{mbx.display_name} is out of office until further notice."
                                    "</body></html>",
            "externalReplyMessage": "<html><body>I am out of office.</body></html>"})
    elif index % 5 == 4:
        mbx.automatic_replies.update({
            "status": "alwaysEnabled", "externalAudience": "all",
            "internalReplyMessage": "<html><body>On parental leave.</body></html>",
            "externalReplyMessage": "<html><body>On leave, please contact the team.</body></html>"})


def _fill_contacts(store: MailboxStore, mbx: Mailbox, index: int, rng: random.Random) -> None:
    per_user = store.options.contacts_per_user
    count = 0 if index % 7 == 6 else (2 * per_user + 2 if index == 0 else per_user)
    specials = [SPECIAL_CONTACTS[(index * 2 + k) % len(SPECIAL_CONTACTS)] for k in range(3)]
    if index % 5 == 1:
        specials.insert(0, SHARED_PERSON)
    created_base = store.now - dt.timedelta(days=400)
    for k in range(count):
        body = dict(specials[k]) if k < len(specials) else _plain_contact(rng)
        folder = None
        if index % 3 == 0 and k in (1, 3):
            folder = "3CX"
        elif index % 4 == 1 and k == count - 1:
            folder = "Private stuff"
            body = {**body, "categories": ["Private"]}
        stamp = cal.iso_utc(created_base + dt.timedelta(days=rng.randrange(390), minutes=rng.randrange(1440)))
        store.create_contact(mbx, body, folder, created=stamp)


def _local(day: dt.date, hour: int, minute: int, tz: str) -> dict[str, str]:
    return {"dateTime": f"{day.isoformat()}T{hour:02d}:{minute:02d}:00", "timeZone": tz}


def next_dst_change(after: dt.datetime, zone_name: str) -> dt.date:
    """Local date of the next UTC-offset change in ``zone_name`` after ``after`` (within ~400 days)."""
    tz = cal.zone(zone_name)
    probe = after.astimezone(tz)
    offset = probe.utcoffset()
    for days in range(1, 400):
        candidate = (after + dt.timedelta(days=days)).astimezone(tz)
        if candidate.utcoffset() != offset:
            return candidate.date()
    return probe.date() + dt.timedelta(days=30)


def _event_templates(mbx: Mailbox, today: dt.date, now: dt.datetime) -> list[list[dict[str, Any]]]:
    tz = mbx.time_zone
    trip_zone = "Pacific Standard Time" if tz == "Pacific Standard Time" else "W. Europe Standard Time"
    switch = next_dst_change(now, trip_zone)
    weekday = cal.DAY_NAMES[today.weekday()]
    tomorrow = today + dt.timedelta(days=1)
    return [
        [{"subject": "Project sync", "start": _local(today, 9, 0, tz), "end": _local(today, 10, 0, tz)},
         {"subject": "Customer call", "start": _local(today, 10, 0, tz), "end": _local(today, 11, 0, tz)}],
        [{"subject": "Budget review", "start": _local(today, 14, 0, tz), "end": _local(today, 15, 0, tz)},
         {"subject": "Vendor demo", "showAs": "tentative", "start": _local(today, 14, 30, tz),
          "end": _local(today, 15, 30, tz)}],
        [{"subject": "Out of office", "showAs": "oof", "isAllDay": True,
          "start": _local(tomorrow + dt.timedelta(days=1), 0, 0, tz),
          "end": _local(tomorrow + dt.timedelta(days=2), 0, 0, tz)}],
        [{"subject": "Business trip", "showAs": "oof", "location": {"displayName": "Munich"},
          "start": _local(switch - dt.timedelta(days=2), 8, 0, trip_zone),
          "end": _local(switch + dt.timedelta(days=2), 18, 0, trip_zone)}],
        [{"subject": "Doctor appointment", "sensitivity": "private", "showAs": "oof",
          "start": _local(tomorrow, 8, 0, tz), "end": _local(tomorrow, 9, 0, tz)}],
        [{"subject": "Weekly team meeting", "start": _local(today - dt.timedelta(days=14), 11, 0, tz),
          "end": _local(today - dt.timedelta(days=14), 12, 0, tz),
          "recurrence": {"pattern": {"type": "weekly", "interval": 1, "daysOfWeek": [weekday]},
                         "range": {"type": "numbered", "numberOfOccurrences": 10,
                                   "startDate": (today - dt.timedelta(days=14)).isoformat()}},
          "_cancel": today + dt.timedelta(days=7), "_move": today + dt.timedelta(days=14)}],
        [{"subject": "Maybe: lunch and learn", "showAs": "tentative", "start": _local(tomorrow, 12, 0, tz),
          "end": _local(tomorrow, 13, 0, tz)}],
        [{"subject": "Working from home", "showAs": "workingElsewhere",
          "start": _local(today + dt.timedelta(days=3), 8, 0, tz),
          "end": _local(today + dt.timedelta(days=3), 17, 0, tz)}],
        [{"subject": "Daily stand-up", "start": _local(today - dt.timedelta(days=3), 9, 30, tz),
          "end": _local(today - dt.timedelta(days=3), 9, 45, tz),
          "recurrence": {"pattern": {"type": "daily", "interval": 1},
                         "range": {"type": "endDate", "startDate": (today - dt.timedelta(days=3)).isoformat(),
                                   "endDate": (today + dt.timedelta(days=10)).isoformat()}}}],
        [{"subject": "Focus time", "showAs": "free", "start": _local(today, 16, 0, tz),
          "end": _local(today, 17, 0, tz)}],
    ]


def _fill_events(store: MailboxStore, mbx: Mailbox, index: int, rng: random.Random) -> None:
    per_user = store.options.events_per_user
    if per_user <= 0:
        return
    today = store.now.astimezone(cal.zone(mbx.time_zone)).date()
    templates = _event_templates(mbx, today, store.now)
    order = [templates[(index + k) % len(templates)] for k in range(len(templates))]
    made = 0
    for group in order:
        for spec in group:
            if made >= per_user:
                return
            body = {k: v for k, v in spec.items() if not k.startswith("_")}
            stamp = cal.iso_utc(store.now - dt.timedelta(days=30 + rng.randrange(60)))
            event = store.create_event(mbx, body, created=stamp)
            if "_cancel" in spec:
                store.cancel_occurrence(mbx, event.id, spec["_cancel"])
            if "_move" in spec:
                day = spec["_move"]
                store.update_event(mbx, _occurrence(event.id, day), {
                    "start": _local(day, 15, 0, mbx.time_zone), "end": _local(day, 16, 0, mbx.time_zone),
                    "subject": "Weekly team meeting (moved)"})
            made += 1


def _occurrence(master_id: str, day: dt.date) -> str:
    from emulators.graph.mailbox import occurrence_id

    return occurrence_id(master_id, day)
