"""The staging boundary (issue 9 #1-#2): one hostile record never fails its page, on SQLite and PostgreSQL."""

from __future__ import annotations

import datetime as dt
from typing import Any

from hypothesis import given
from hypothesis import strategies as st
from sqlalchemy import Engine, func, select

from m365_3cx.graph.calendar import CalendarEvent, UserCalendar
from m365_3cx.pipeline.users import SANITIZE_STEP, clean_users
from m365_3cx.sanitize import clean_json, clean_text
from m365_3cx.staging import boundary
from m365_3cx.staging import contacts as crepo
from m365_3cx.staging import presence as stage
from m365_3cx.staging.extensions import pbx_row_from_xapi, replace_snapshot
from m365_3cx.staging.runs import add_audit, add_record_notes
from m365_3cx.staging.schema import cur_extensions, stg_contacts, stg_events, stg_users, sync_notes
from m365_3cx.staging.users import merge_users, user_row_from_graph
from m365_3cx.transform.notes import note_rows

NOW = dt.datetime(2026, 2, 3, 4, 5, tzinfo=dt.UTC)


def user(i: int, **extra: Any) -> dict[str, Any]:
    return {"id": f"00000000-0000-4000-8000-{i:012d}", "userPrincipalName": f"u{i}@contoso.example",
            "displayName": f"User {i}", "givenName": "User", "surname": str(i), "mail": f"u{i}@contoso.example",
            "mobilePhone": None, "businessPhones": [], "accountEnabled": True, "userType": "Member",
            "usageLocation": "US", "department": None, "jobTitle": None,
            "onPremisesExtensionAttributes": {"extensionAttribute1": None}, **extra}


HOSTILE = [
    user(1, givenName="Nul\x00l", surname="S" * 300, displayName="D" * 600),
    user(2, givenName="\u202eevil\u202c", surname="Zero\u200bWidth\ufeff", department="x" * 300),
    user(3, displayName="lone \ud800 surrogate", jobTitle="t\x00" * 200, mail="m\x00@contoso.example"),
    user(4, businessPhones=["+1\x00 425", "\ud83d"], onPremisesExtensionAttributes={"extensionAttribute1": "2\x0001"}),
    user(5, givenName={"odd": "object"}, accountEnabled="maybe", usageLocation="United States of America"),
    user(6, id="x" * 65),  # does not fit the key column: refused
    user(7, id="bad\x00id"),
    user(8),  # a plain user, on the same page
    user(8, surname="Again"),  # the same user twice on one page: the last one wins
]


def test_a_page_of_hostile_users_commits_with_notes(engine: Engine) -> None:
    clean, notes, keys = clean_users(HOSTILE)
    rows = [user_row_from_graph(item) for item in clean]
    with engine.begin() as conn:
        merged = merge_users(conn, rows, "r1", NOW)
        add_record_notes(conn, "r1", note_rows(notes, "r1", NOW), step=SANITIZE_STEP, object_type="user",
                         object_keys=keys, now=NOW)
    with engine.connect() as conn:
        staged = {r.user_id: r for r in conn.execute(select(stg_users))}
        noted = conn.execute(select(sync_notes.c.object_key, sync_notes.c.field, sync_notes.c.severity,
                                    sync_notes.c.message)).all()
    assert merged.inserted == 6 and len(staged) == 6
    one, two, three = (staged[user(i)["id"]] for i in (1, 2, 3))
    assert one.given_name == "Null" and one.surname == "S" * 256 and len(one.display_name) == 512
    assert (two.given_name, two.surname, len(two.department)) == ("evil", "ZeroWidth", 256)
    assert "\ufffd" in three.display_name and three.mail == "m@contoso.example" and "\x00" not in three.job_title
    four = staged[user(4)["id"]]
    assert four.business_phones == ["+1 425", "\ufffd"]
    assert four.extension_attributes["extensionAttribute1"] == "201"
    five = staged[user(5)["id"]]
    assert (five.given_name, five.account_enabled, five.usage_location) == (None, None, "United S")
    assert staged[user(8)["id"]].surname == "Again"
    by_field = {(key, fld): (sev, msg) for key, fld, sev, msg in noted}
    assert by_field[(user(1)["id"], "surname")][1].endswith("surname: is 300 characters; truncated to 256")
    assert "U+0000" in by_field[(user(1)["id"], "givenName")][1]
    assert "U+202E" in by_field[(user(2)["id"], "givenName")][1]
    assert "lone surrogate" in by_field[(user(3)["id"], "displayName")][1]
    assert (user(4)["id"], "businessPhones[0]") in by_field
    assert by_field[(user(5)["id"], "accountEnabled")][0] == "warning"
    refused = {key: sev for (key, fld), (sev, _) in by_field.items() if fld == "id"}
    assert refused == {"x" * 65: "error", "badid": "error"}
    assert all(msg.startswith("user ") for _, _, _, msg in noted)


def test_record_notes_are_replaced_per_record_on_a_retried_page(engine: Engine) -> None:
    _clean, notes, keys = clean_users([*HOSTILE[:2], user(9, givenName="ok\x00")])
    for _ in range(2):  # a retry writes the same page again
        with engine.begin() as conn:
            add_record_notes(conn, "r1", note_rows(notes, "r1", NOW), step=SANITIZE_STEP,
                             object_type="user", object_keys=keys, now=NOW)
    _fixed, fixed_notes, fixed_keys = clean_users([user(9)])  # user 9 was fixed meanwhile
    with engine.begin() as conn:
        add_record_notes(conn, "r1", note_rows(fixed_notes, "r1", NOW), step=SANITIZE_STEP,
                         object_type="user", object_keys=fixed_keys, now=NOW)
        count = conn.execute(select(func.count()).select_from(sync_notes)).scalar_one()
        users = {r[0] for r in conn.execute(select(sync_notes.c.object_key))}
    assert count == len(notes) - 1 and user(9)["id"] not in users


def test_hostile_contacts_stage_and_refused_ones_are_named(engine: Engine) -> None:
    items = [
        {"id": "c1", "givenName": "A\x00nn", "surname": "L" * 5000, "companyName": "\u202eACME",
         "businessPhones": ["+1 650\x00 555"], "emailAddresses": [{"name": "\x00", "address": "a\u200b@x.example"}],
         "categories": ["Wo\x00rk"], "changeKey": "k\x00"},
        {"id": "c2", "displayName": "\ud800", "homePhones": "not a list", "emailAddresses": "odd"},
        {"id": "c" * 257, "displayName": "too long an id"},
        {"id": "c3", "displayName": "Plain"},
        {"id": "c3", "displayName": "Plain twice"},
    ]
    results = [boundary.clean_contact_item(i) for i in items]
    rows = [crepo.contact_row_from_graph(r.item, "owner", None) for r in results if r.item is not None]
    with engine.begin() as conn:
        merged = crepo.merge_contacts(conn, rows, "r1", NOW)
    with engine.connect() as conn:
        staged = {r.contact_id: r for r in conn.execute(select(stg_contacts))}
    assert merged.inserted == 3 and set(staged) == {"c1", "c2", "c3"}
    c1 = staged["c1"]
    assert (c1.given_name, len(c1.surname), c1.company_name) == ("Ann", 5000, "ACME")
    assert c1.business_phones == ["+1 650 555"] and c1.email_addresses == ["a@x.example"]
    assert c1.categories == ["Work"] and c1.change_key == "k"
    assert staged["c2"].display_name == "\ufffd" and staged["c3"].display_name == "Plain twice"
    fields = {f.field for f in results[0].findings}
    assert {"givenName", "companyName", "businessPhones[0]", "emailAddresses[0]", "categories[0]"} <= fields
    assert [f.rejected for f in results[2].findings] == [True]


def test_hostile_events_stage_and_duplicates_collapse(engine: Engine) -> None:
    start = NOW
    def event(eid: str, **kw: Any) -> CalendarEvent:
        base = {"event_id": eid, "start_utc": start, "end_utc": start + dt.timedelta(hours=1), "is_all_day": False,
                "time_zone": None, "show_as": "busy", "is_cancelled": False, "sensitivity": "normal",
                "event_type": "singleInstance", "series_master_id": None, "change_key": "ck", "subject": None}
        base.update(kw)
        return CalendarEvent(**base)

    calendar = UserCalendar(user_id="u1", events=[
        event("e1", subject="Se\x00cret \ud800", show_as="SomeVeryLongUnknownShowAsValueFromTheFuture"),
        event("e1", show_as="oof"),  # the same event twice in one round
        event("e" * 513),
        event("e2", change_key="k" * 300),
    ], removed=["gone\x00"], complete=True, delta_link=None, auto_replies=None)
    with engine.begin() as conn:
        counts = stage.stage_calendars(conn, [calendar], "r1", NOW)["u1"]
        single = stage.stage_user_calendar(conn, calendar, "r2", NOW)  # the one-user path agrees
    assert single.upserted == counts.upserted and single.findings == counts.findings
    with engine.connect() as conn:
        staged = {r.event_id: r for r in conn.execute(select(stg_events))}
    assert set(staged) == {"e1", "e2"} and staged["e1"].show_as == "oof" and len(staged["e2"].change_key) == 256
    assert counts.upserted == 2
    findings = {(eid, f.field, f.rejected) for eid, f in counts.findings}
    assert ("e1", "subject", False) in findings and ("e1", "show_as", False) in findings
    assert ("e" * 256, "id", True) in findings


def test_3cx_snapshot_rows_are_storable_and_still_differ(engine: Engine) -> None:
    """A hand-made 3CX extension with a NUL or a 300-character name never fails the snapshot."""
    xapi = {"Id": 7, "Number": "207", "FirstName": "Ha\x00nd", "LastName": "L" * 300, "DisplayName": "\ud800",
            "EmailAddress": "a\u200b@x.example", "Tags": ["t\x00"]}
    row = boundary.storable_row(cur_extensions, pbx_row_from_xapi(xapi))
    assert row["first_name"] == "Ha\ufffdnd" and len(row["last_name"]) == 256 and row["tags"] == ["t\ufffd"]
    assert row["email"] == "a\u200b@x.example"  # kept as is: it must still differ from the desired address
    with engine.begin() as conn:
        assert replace_snapshot(conn, [row], "r1", NOW) == 1


def test_usable_keys_and_audit_rows_with_3cx_values(engine: Engine) -> None:
    assert boundary.usable_key("AAMkAD=", 256) and not boundary.usable_key("x" * 257, 256)
    assert not boundary.usable_key("a\x00b", 256) and not boundary.usable_key("", 256)
    assert not boundary.usable_key(None, 256)
    with engine.begin() as conn:
        written = add_audit(conn, [{"run_key": "r1", "at": NOW, "action": "update", "object_type": "contact",
                                    "object_key": "k", "number": None, "threecx_id": 3, "field": "FirstName",
                                    "before": "Ha\x00nd", "after": "Hand", "result": "ok", "error": None}])
    assert written == 1


_ODD_CHARS = "aZ 9é\u00a0\ue000\u0378\u200b\x00\t\ud800\u0301\U0001f642"
_ODD_TEXT = st.lists(st.sampled_from(list(_ODD_CHARS)), max_size=8).map("".join)
_ODD_VALUE = st.none() | st.booleans() | st.integers() | _ODD_TEXT | st.lists(_ODD_TEXT | st.integers() | st.none(),
                                                                              max_size=3)


@given(st.dictionaries(st.sampled_from([*boundary.CONTACT_PROPERTY_COLUMNS, "businessPhones", "categories",
                                        "changeKey"]), _ODD_VALUE),
       _ODD_TEXT, st.lists(st.dictionaries(st.just("address"), _ODD_VALUE) | _ODD_TEXT, max_size=3))
def test_contact_values_come_out_as_clean_text_and_clean_json_make_them(props: dict[str, Any], cid: str,
                                                                        addresses: list[Any]) -> None:
    """Every value, printable or not (NBSP, private use and unassigned characters are not printable yet stay),
    comes out of the contact boundary as :func:`clean_text` / :func:`clean_json` make it, with their findings."""
    result = boundary.clean_contact_item({"id": "c" + cid, **props, "emailAddresses": addresses})
    if not boundary.usable_key("c" + cid, 256):
        assert result.rejected
        return
    assert result.item is not None
    expected: list[tuple[str, str]] = []
    for prop, value in props.items():
        got = result.item[prop]
        if prop == "changeKey":
            assert got == (clean_text(value).value if isinstance(value, str) else value)
        elif prop in boundary.CONTACT_PROPERTY_COLUMNS:
            if isinstance(value, str | int) and not isinstance(value, bool):
                cleaned = clean_text(str(value))
                assert got == cleaned.value
                expected += [(prop, cleaned.describe())] if cleaned.changed else []
            else:
                assert got is None
                expected += [(prop, f"is a {type(value).__name__}, not text; left empty")] if value is not None else []
        else:
            value = value if isinstance(value, list) else None
            cleaned_json, found = clean_json(value, prop)
            assert got == cleaned_json and (got is not value or value is None)
            expected += [(f.field, f.message) for f in found]
    for index, entry in enumerate(addresses):
        address = entry.get("address") if isinstance(entry, dict) else entry
        cleaned_json, found = clean_json(address, f"emailAddresses[{index}]")
        assert result.item["emailAddresses"][index] == ({"address": cleaned_json} if isinstance(entry, dict)
                                                        else cleaned_json)
        expected += [(f.field, f.message) for f in found]
    assert sorted((f.field, f.message) for f in result.findings) == sorted(expected)


def test_unprintable_but_clean_values_stay_without_a_note() -> None:
    nbsp = "Ann\u00a0Lee"  # not str.isprintable(), but nothing the boundary removes
    result = boundary.clean_contact_item({"id": "id\u00a0\ue000", "givenName": nbsp, "businessPhones": [nbsp, 7, None],
                                          "emailAddresses": [{"address": nbsp}, nbsp], "changeKey": nbsp})
    assert result.item == {"id": "id\u00a0\ue000", "givenName": nbsp, "businessPhones": [nbsp, 7, None],
                           "emailAddresses": [{"address": nbsp}, nbsp], "changeKey": nbsp}
    assert result.findings == []
    user_result = boundary.clean_user_item(user(9, onPremisesExtensionAttributes={nbsp: nbsp, "k\x00": 1, 5: "x"}))
    assert user_result.item is not None
    assert user_result.item["onPremisesExtensionAttributes"] == {nbsp: nbsp, "k": 1, "5": "x"}
    assert [f.field for f in user_result.findings] == ["onPremisesExtensionAttributes.<key>"]


def test_event_ids_and_texts_clean_as_clean_text_says() -> None:
    base = {"user_id": "u", "subject": "a\u00a0b", "show_as": "bu\x00sy", "time_zone": "Europe/Berlin"}
    kept = boundary.clean_event_row({**base, "event_id": "e\u00a0\ue000"})  # unprintable, yet nothing to remove
    assert kept.item is not None and kept.item["event_id"] == "e\u00a0\ue000"
    assert (kept.item["subject"], kept.item["show_as"]) == ("a\u00a0b", "busy")
    assert [f.field for f in kept.findings] == ["show_as"]
    for bad in ("e\x00", "e\u200b", "", "e" * 1_000):
        assert boundary.clean_event_row({**base, "event_id": bad}).rejected
