"""PostgreSQL parity (issue 9): any Unicode in any Graph string field never fails extract -> transform -> plan.

Property tests over the functions the extract tasks call for every Graph page
(:func:`m365_3cx.pipeline.users.stage_users_page`,
:func:`m365_3cx.pipeline.contacts.stage_contacts_page`,
:func:`m365_3cx.staging.presence.stage_calendars`) and the real transform and plan steps,
on a throwaway PostgreSQL database: text of any Unicode category (NUL, bidi controls, zero-width
characters, lone surrogates, astral characters), up to and beyond Graph's documented lengths,
odd phone strings, shared e-mail addresses. Asserted: no exception; every record is either
staged and planned, or named by a note; nothing staged or planned holds a control character, a
surrogate, or more than the 3CX limits. The HTTP side of the same data is the DAG test
``tests/dags/test_hostile_data_dags.py``.

Examples per property: ``M365_3CX_PG_EXAMPLES`` (default 12; each example is a few statements
on PostgreSQL, so a property takes a few seconds).
"""

from __future__ import annotations

import datetime as dt
import os
import unicodedata
from collections.abc import Iterator
from typing import Any

import pytest
import sqlalchemy as sa
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from m365_3cx.graph.calendar import CalendarEvent, UserCalendar
from m365_3cx.pipeline import contacts as contacts_pipeline
from m365_3cx.pipeline import users as users_pipeline
from m365_3cx.sanitize import utf16_length
from m365_3cx.settings import Settings
from m365_3cx.staging import presence as stage
from m365_3cx.staging.db import make_engine
from m365_3cx.staging.schema import create_schema, metadata
from m365_3cx.staging.users import set_scope
from m365_3cx.transform.extensions import EMAIL_MAX, NAME_MAX
from m365_3cx.transform.phonebook import FIELD_LIMITS

pytestmark = [pytest.mark.postgres]

PROPERTY = settings(
    max_examples=int(os.environ.get("M365_3CX_PG_EXAMPLES", "12")),
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow, HealthCheck.data_too_large],
)
NOW = dt.datetime(2026, 6, 1, 9, 0, tzinfo=dt.UTC)
SETTINGS = Settings.from_mapping({
    "numbering": {"policy": "attribute", "attribute": "extensionAttribute1", "fallback_to_pool": True,
                  "pool_first": "200", "pool_last": "899"},
    "contacts": {"personal_contacts": "all"},
})

#: Any code point of any category, surrogates included.
CHARS = st.characters(codec=None, exclude_categories=())
HOSTILE_BITS = st.sampled_from(["\x00", "\u202e", "\u2066", "\u200b", "\u200d", "\ufeff", "\ud800", "\udfff",
                                "\n", "\u00ad", "😀", "e\u0301", "\U000e0041", "\x85", "\u2028"])


def hostile_text(max_size: int) -> st.SearchStrategy[str]:
    """Any text up to ``max_size`` code points, often with the characters that broke PostgreSQL."""
    plain = st.text(CHARS, max_size=max_size)
    mixed = st.lists(st.one_of(HOSTILE_BITS, st.text(CHARS, max_size=8)), max_size=12).map("".join)
    long = st.builds(lambda c, n, tail: (c * n)[:max_size] + tail, st.sampled_from(["a", "é", "😀", "李"]),
                     st.integers(max_size - 2, max_size + 60), HOSTILE_BITS)
    return st.one_of(st.none(), plain, mixed, long)


PHONE_TEXT = st.one_of(
    st.text(st.sampled_from([*"0123456789+()-. /x#*ext", *"\u0660\u0661\u0662\uff16\uff19", "\x00", "\u200b",
                             "\u202e"]), max_size=40),
    st.sampled_from(["+1 425 555 0100", "(650) 253-0000 x12", "1-800-FLOWERS", "+49 (0)30 1234567",
                     "+", "", "00", "+999 999", "tel:+15555550100"]),
    st.text(CHARS, max_size=64),
)
PHONES = st.one_of(st.none(), PHONE_TEXT)
MAILS = st.one_of(st.none(), st.sampled_from(["twin@contoso.example", "Twin@Contoso.Example", "TWIN@contoso.example"]),
                  st.builds(lambda t: f"{t}@contoso.example", st.text(CHARS, max_size=20)),
                  st.text(CHARS, min_size=250, max_size=330))


@st.composite
def graph_users(draw: Any) -> list[dict[str, Any]]:
    count = draw(st.integers(1, 6))
    users = []
    for i in range(count):
        attributes = {f"extensionAttribute{n}": None for n in range(1, 16)}
        odd_numbers = st.sampled_from(["201", "202", "2\x0003", "\uff19\uff19\uff19"])
        attributes["extensionAttribute1"] = draw(st.one_of(st.none(), st.text(CHARS, max_size=12), odd_numbers))
        users.append({
            "id": f"00000000-0000-4000-8000-{i:012d}",
            "userPrincipalName": draw(st.one_of(
                st.builds(lambda t, i=i: f"u{i}{t}@contoso.example", st.text(CHARS, max_size=10)),
                hostile_text(113))),
            "displayName": draw(hostile_text(256)),
            "givenName": draw(hostile_text(64)),
            "surname": draw(hostile_text(64)),
            "mail": draw(MAILS),
            "mobilePhone": draw(PHONES),
            "businessPhones": draw(st.lists(PHONE_TEXT, max_size=2)),
            "accountEnabled": draw(st.sampled_from([True, True, True, False, None])),
            "userType": draw(st.sampled_from(["Member", "Member", "Guest", None])),
            "usageLocation": draw(st.one_of(st.sampled_from(["US", "DE", "GB", None]), st.text(CHARS, max_size=4))),
            "department": draw(hostile_text(64)),
            "jobTitle": draw(hostile_text(128)),
            "onPremisesExtensionAttributes": attributes,
        })
    return users


def _clean(value: object) -> bool:
    """No control, format or surrogate character anywhere in a (JSON) value."""
    if isinstance(value, str):
        return all(unicodedata.category(ch) not in ("Cc", "Cf", "Cs") for ch in value)
    if isinstance(value, dict):
        return all(_clean(k) and _clean(v) for k, v in value.items())
    if isinstance(value, list):
        return all(_clean(v) for v in value)
    return True


@pytest.fixture
def pg_engine(pg_database: str) -> Iterator[sa.Engine]:
    """The staging schema in the suite's throwaway PostgreSQL database (one per property)."""
    engine = make_engine(pg_database)
    create_schema(engine)
    yield engine
    engine.dispose()


def _truncate(engine: sa.Engine) -> None:
    with engine.begin() as conn:
        names = ", ".join(t.name for t in metadata.sorted_tables if t.name != "schema_version")
        conn.execute(sa.text(f"TRUNCATE {names}"))


@PROPERTY
@given(users=graph_users())
def test_any_user_data_is_staged_and_planned_or_noted(pg_engine: sa.Engine, users: list[dict[str, Any]]) -> None:
    _truncate(pg_engine)
    run_key = "m365_3cx_full_sync/prop"
    half = len(users) // 2
    with pg_engine.begin() as conn:  # two Graph pages, as the full extract commits them
        users_pipeline.stage_users_page(conn, users[:half], run_key, NOW)
    with pg_engine.begin() as conn:
        users_pipeline.stage_users_page(conn, users[half:], run_key, NOW)
        set_scope(conn, None, run_key, NOW)
    users_pipeline.transform_users(pg_engine, SETTINGS, run_key, NOW)
    users_pipeline.plan_users(pg_engine, SETTINGS, run_key, None, NOW)

    with pg_engine.connect() as conn:
        staged = {r["user_id"]: r for r in conn.execute(sa.text("SELECT * FROM stg_users")).mappings()}
        desired = {r["user_id"]: r for r in conn.execute(sa.text("SELECT * FROM tgt_extensions")).mappings()}
        planned = {r["object_key"]: r for r in conn.execute(sa.text(
            "SELECT object_key, action, changes FROM sync_plan WHERE run_key = :k"), {"k": run_key}).mappings()}
        noted = {r[0] for r in conn.execute(sa.text("SELECT object_key FROM sync_notes"))}
    assert set(staged) == {u["id"] for u in users}
    for row in staged.values():
        assert all(_clean(v) for v in row.values()), row
    for uid, row in desired.items():
        assert row["first_name"] is None or utf16_length(row["first_name"]) <= NAME_MAX
        assert row["last_name"] is None or utf16_length(row["last_name"]) <= NAME_MAX
        assert row["email"] is None or utf16_length(row["email"]) <= EMAIL_MAX
        active = row["state"] == "active"
        assert not active or uid in planned or uid in noted, (uid, row)
    mails = [str(p["changes"]["EmailAddress"][1]).casefold() for p in planned.values()
             if p["changes"].get("EmailAddress", [None, None])[1]]
    assert len(mails) == len(set(mails)), "two extensions planned with one e-mail address"
    for p in planned.values():
        assert _clean(p["changes"]), p


@st.composite
def graph_contacts(draw: Any) -> list[dict[str, Any]]:
    contacts = []
    for i in range(draw(st.integers(1, 6))):
        contacts.append({
            "id": f"AAMkAD{i}=",
            **{prop: draw(hostile_text(limit)) for prop, limit in (
                ("displayName", 256), ("givenName", 256), ("middleName", 64), ("surname", 256), ("fileAs", 256),
                ("companyName", 512), ("department", 256), ("jobTitle", 256))},
            "mobilePhone": draw(PHONES),
            "businessPhones": draw(st.lists(PHONE_TEXT, max_size=3)),
            "homePhones": draw(st.lists(PHONE_TEXT, max_size=2)),
            "emailAddresses": draw(st.lists(st.fixed_dictionaries({"name": st.text(CHARS, max_size=10),
                                                                    "address": MAILS}), max_size=3)),
            "categories": draw(st.lists(st.one_of(st.sampled_from(["Private", "Pri\u200bvate", "Work"]),
                                                  st.text(CHARS, max_size=10)), max_size=2)),
            "changeKey": draw(st.text(CHARS, max_size=300)),
        })
    return contacts


@PROPERTY
@given(contacts=graph_contacts())
def test_any_contact_data_is_staged_and_planned_or_noted(pg_engine: sa.Engine,
                                                        contacts: list[dict[str, Any]]) -> None:
    _truncate(pg_engine)
    run_key = "m365_3cx_full_sync/prop"
    owner = {"id": "00000000-0000-4000-8000-000000000001", "userPrincipalName": "owner@contoso.example",
             "displayName": "Owner", "mail": "owner@contoso.example", "usageLocation": "US", "accountEnabled": True}
    with pg_engine.begin() as conn:
        users_pipeline.stage_users_page(conn, [owner], run_key, NOW)
        set_scope(conn, None, run_key, NOW)
        counts = contacts_pipeline.stage_contacts_page(
            conn, {"user_id": owner["id"], "user_principal_name": owner["userPrincipalName"]}, None,
            {"value": contacts}, "Private", run_key, NOW)
    result = contacts_pipeline.transform_phonebook(pg_engine, SETTINGS, run_key, NOW)
    plan = contacts_pipeline.plan_phonebook(pg_engine, run_key)

    with pg_engine.connect() as conn:
        staged = [dict(r) for r in conn.execute(sa.text("SELECT * FROM stg_contacts")).mappings()]
        entries = [dict(r) for r in conn.execute(sa.text("SELECT * FROM tgt_phonebook")).mappings()]
        noted = {r[0] for r in conn.execute(sa.text(
            "SELECT object_key FROM sync_notes WHERE step = 'transform_phonebook'"))}
        planned = [dict(r) for r in conn.execute(sa.text(
            "SELECT changes FROM sync_plan WHERE object_type = 'contact'")).mappings()]
    assert len(staged) + counts["excluded"] == len(contacts)
    for row in staged:
        assert all(_clean(v) for v in row.values()), row
    assert result["contacts"] + result["skipped"] + result["excluded"] == len(staged)
    skipped_keys = {f"{r['owner_id']}/{r['contact_id']}" for r in staged} & noted
    assert len(skipped_keys) >= result["skipped"]  # every skipped contact is named by a note
    assert plan["create"] == len(entries) == result["entries"]
    column_of = {"FirstName": "first_name", "LastName": "last_name", "CompanyName": "company_name",
                 "Title": "title", "Department": "department", "Email": "email"}
    for entry in entries:
        assert _clean(entry)
        for fld, column in column_of.items():
            assert entry[column] is None or utf16_length(entry[column]) <= FIELD_LIMITS[fld]
    assert all(_clean(p["changes"]) for p in planned)


@PROPERTY
@given(subjects=st.lists(st.tuples(hostile_text(300), st.one_of(st.none(), hostile_text(40))), min_size=1,
                         max_size=5))
def test_any_event_text_is_staged_or_noted(pg_engine: sa.Engine, subjects: list[tuple[str | None, str | None]]) -> None:
    _truncate(pg_engine)
    events = tuple(CalendarEvent(event_id=f"ev{i % 3}", start_utc=NOW, end_utc=NOW + dt.timedelta(hours=1),
                                 is_all_day=False, time_zone=None, show_as=show_as, is_cancelled=False,
                                 sensitivity="normal", event_type="singleInstance", series_master_id=None,
                                 change_key="ck", subject=subject)
                   for i, (subject, show_as) in enumerate(subjects))
    with pg_engine.begin() as conn:
        counts = stage.stage_calendars(conn, [UserCalendar("u1", events=events, complete=True)], "r", NOW)["u1"]
    with pg_engine.connect() as conn:
        staged = [dict(r) for r in conn.execute(sa.text("SELECT * FROM stg_events")).mappings()]
    assert {r["event_id"] for r in staged} == {e.event_id for e in events}
    assert counts.upserted == len(staged)
    assert all(_clean(v) for row in staged for v in row.values())
