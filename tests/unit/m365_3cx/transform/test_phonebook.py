from __future__ import annotations

from typing import Any

import pandas as pd
import pytest

from m365_3cx.transform.phonebook import (
    FIELD_LIMITS,
    TAG_PREFIX,
    TARGET_COLUMNS,
    PhonebookBuilder,
    PhonebookParams,
    dedup_key,
    desired_phonebook,
    managed_fingerprint,
    managed_values,
    target_fields,
    truncate,
)

PARAMS = PhonebookParams(default_region="US", exclude_category="Private", personal_contacts="all")


def owner(uid: str, **kw: Any) -> dict[str, Any]:
    row = {"user_id": uid, "user_principal_name": f"{uid}@contoso.example", "usage_location": "US",
           "in_scope": True, "deleted": False}
    row.update(kw)
    return row


def contact(owner_id: str, cid: str, **kw: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "owner_id": owner_id, "contact_id": cid, "source": "personal", "folder_id": None,
        "display_name": "Ann Lee", "given_name": "Ann", "surname": "Lee", "middle_name": None, "file_as": None,
        "company_name": None, "department": None, "job_title": None, "mobile_phone": None,
        "business_phones": [], "home_phones": [], "email_addresses": [], "categories": [], "deleted": False,
    }
    row.update(kw)
    return row


USERS = pd.DataFrame([owner("u1"), owner("u2"), owner("u3", usage_location="DE")])


def run(*rows: dict[str, Any], users: pd.DataFrame = USERS, params: PhonebookParams = PARAMS):
    return desired_phonebook(pd.DataFrame(list(rows)), users, params)


def entries(*rows: dict[str, Any], **kw: Any) -> list[dict[str, Any]]:
    return run(*rows, **kw).frame.to_dict("records")


def messages(result: Any) -> list[str]:
    return [n.message for n in result.notes]


def test_columns_names_company_title_department_email_and_tag() -> None:
    result = run(contact("u1", "c1", mobile_phone="(650) 253-0000", company_name="Fabrikam", job_title="CFO",
                         department="Finance", email_addresses=["ann@fabrikam.example", "x@y.example"]))
    assert list(result.frame.columns) == list(TARGET_COLUMNS)
    row = result.frame.iloc[0].to_dict()
    key = dedup_key("Ann Lee", "+16502530000", None)
    assert row == {
        "contact_key": key, "first_name": "Ann", "last_name": "Lee", "company_name": "Fabrikam", "title": "CFO",
        "department": "Finance", "email": "ann@fabrikam.example", "phone_number": "+16502530000",
        "mobile2": None, "business": None, "business2": None, "home": None, "business_fax": None, "other": None,
        "tag": TAG_PREFIX + key, "owner_ids": ["u1"], "copies": 1, "state": "active",
    }
    assert result.notes == []


def test_primary_is_mobile_then_business_then_home_and_slots_fill_in_order() -> None:
    row = entries(contact("u1", "c1", mobile_phone="650 253 0000",
                          business_phones=["650 253 0001", "650 253 0002", "650 253 0003"],
                          home_phones=["650 253 0004", "650 253 0005"]))[0]
    assert row["phone_number"] == "+16502530000"
    assert (row["business"], row["business2"]) == ("+16502530001", "+16502530002")
    assert row["home"] == "+16502530004"
    assert row["other"] == "+16502530003"  # first number that fits nowhere else
    assert row["mobile2"] is None and row["business_fax"] is None


def test_more_numbers_than_slots_are_noted() -> None:
    result = run(contact("u1", "c1", mobile_phone="650 253 0000",
                         business_phones=["650 253 0001", "650 253 0002", "650 253 0003", "650 253 0006"],
                         home_phones=["650 253 0004", "650 253 0005"]))
    assert any("2 number(s) did not fit" in m for m in messages(result))


def test_primary_falls_back_to_business_then_home() -> None:
    business = entries(contact("u1", "c1", business_phones=["650 253 0001", "650 253 0002"]))[0]
    assert business["phone_number"] == "+16502530001" and business["business"] == "+16502530002"
    home = entries(contact("u1", "c1", home_phones=["650 253 0004"]))[0]
    assert home["phone_number"] == "+16502530004" and home["home"] is None


def test_national_numbers_use_the_owners_usage_location_else_default_region() -> None:
    de = entries(contact("u3", "c1", mobile_phone="0171 1234567"))[0]
    assert de["phone_number"] == "+491711234567"
    users = pd.DataFrame([owner("u4", usage_location=None)])
    us = entries(contact("u4", "c1", mobile_phone="(650) 253-0000"), users=users)[0]
    assert us["phone_number"] == "+16502530000"


def test_vanity_numbers_are_converted() -> None:
    assert entries(contact("u1", "c1", business_phones=["1-800-FLOWERS"]))[0]["phone_number"] == "+18003569377"


def test_extension_is_dropped_with_a_note_naming_owner_contact_and_field() -> None:
    result = run(contact("u1", "c1", business_phones=["+1 650 253 0000 x23"]))
    assert result.frame.iloc[0]["phone_number"] == "+16502530000"
    (note,) = result.notes
    assert note.field == "businessPhones[0]" and note.object_type == "contact"
    assert "u1@contoso.example" in note.message and "c1" in note.message and "extension 23" in note.message


def test_unusable_number_is_dropped_but_the_others_are_kept() -> None:
    result = run(contact("u1", "c1", mobile_phone="call me", business_phones=["650 253 0001"]))
    assert result.frame.iloc[0]["phone_number"] == "+16502530001"
    assert [n.field for n in result.notes] == ["mobilePhone"]


@pytest.mark.parametrize("extra", [{"email_addresses": ["only@mail.example"]}, {}])
def test_contact_without_dialable_number_is_skipped_with_a_note(extra: dict[str, Any]) -> None:
    result = run(contact("u1", "c9", mobile_phone="n/a", **extra))
    assert result.frame.empty and result.skipped == 1
    skipped = [n for n in result.notes if "contact skipped" in n.message]
    assert len(skipped) == 1
    assert skipped[0].severity == "info"  # nothing to fix: a phonebook holds dialable entries only
    assert skipped[0].field == "mobilePhone/businessPhones/homePhones"
    assert "c9" in skipped[0].message and "u1@contoso.example" in skipped[0].message
    if extra:
        assert "only an e-mail address" in skipped[0].message


def test_name_fallbacks_display_name_file_as_company() -> None:
    base = {"given_name": None, "surname": None, "mobile_phone": "650 253 0000"}
    row = entries(contact("u1", "c1", **base, display_name="Dr. Who"))[0]
    assert (row["first_name"], row["last_name"]) == ("Dr. Who", None)
    row = entries(contact("u1", "c1", **base, display_name=None, file_as="Who, Doctor"))[0]
    assert row["first_name"] == "Who, Doctor"
    row = entries(contact("u1", "c1", **base, display_name=None, company_name="Tardis Ltd"))[0]
    assert (row["first_name"], row["last_name"], row["company_name"]) == (None, None, "Tardis Ltd")
    result = run(contact("u1", "c1", **base, display_name=None))
    assert result.frame.empty and result.notes[0].field == "displayName"


def test_same_person_held_by_several_users_is_one_entry_with_merged_numbers() -> None:
    result = run(
        contact("u2", "b", mobile_phone="+1 650 253 0000", business_phones=["650 253 0009"], job_title="CEO"),
        contact("u1", "a", mobile_phone="(650) 253-0000", home_phones=["650 253 0008"], given_name=" ann ",
                surname="LEE"),
        contact("u3", "c", mobile_phone="+16502530000", business_phones=["+1 650 253 0009"]),
    )
    assert len(result.frame) == 1
    row = result.frame.iloc[0].to_dict()
    assert row["copies"] == 3 and row["owner_ids"] == ["u1", "u2", "u3"]
    assert (row["first_name"], row["last_name"]) == ("ann", "LEE")  # first copy by (owner, id)
    assert row["title"] == "CEO"  # first copy that has one
    assert (row["phone_number"], row["business"], row["home"]) == ("+16502530000", "+16502530009", "+16502530008")


def test_merge_is_deterministic_whatever_the_input_order() -> None:
    rows = [contact(f"u{i}", f"c{i}", mobile_phone="650 253 0000", business_phones=[f"650 253 000{i}"])
            for i in (1, 2, 3)]
    users = pd.DataFrame([owner(f"u{i}") for i in (1, 2, 3)])
    first = desired_phonebook(pd.DataFrame(rows), users, PARAMS).frame
    second = desired_phonebook(pd.DataFrame(rows[::-1]), users, PARAMS).frame
    pd.testing.assert_frame_equal(first, second)
    assert first.iloc[0]["business"] == "+16502530001" and first.iloc[0]["business2"] == "+16502530002"


def test_builder_fed_in_chunks_gives_what_one_frame_gives() -> None:
    rows = [contact(f"u{1 + i % 3}", f"c{i:02d}", mobile_phone=f"650 253 {i % 4:04d}", given_name=f"N{i % 5}",
                    business_phones=["not a number"] if i % 7 == 0 else [f"650 253 1{i:03d}"],
                    categories=["Private"] if i % 9 == 0 else [])
            for i in range(30)]
    rows.append(contact("u1", "no-number"))
    users = pd.DataFrame([owner(f"u{i}") for i in (1, 2, 3)])
    whole = desired_phonebook(pd.DataFrame(rows), users, PARAMS)
    builder = PhonebookBuilder(users, PARAMS)
    for start in range(0, len(rows), 7):
        builder.add(pd.DataFrame(rows[start:start + 7]))
    chunked = builder.result()
    pd.testing.assert_frame_equal(chunked.frame, whole.frame)
    assert chunked.notes == whole.notes and chunked.sources == whole.sources
    assert (chunked.contacts_used, chunked.skipped, chunked.excluded) == (whole.contacts_used, whole.skipped,
                                                                          whole.excluded)
    assert whole.excluded == 4 and whole.skipped == 1 and len(whole.frame) > 1


def test_second_mobile_from_another_copy_goes_to_mobile2() -> None:
    rows = [contact("u1", "a", mobile_phone="650 253 0000", business_phones=["650 253 0003"]),
            contact("u2", "b", business_phones=["650 253 0000"])]
    assert len(entries(*rows)) == 1  # primary of both is +16502530000
    rows = [contact("u1", "a", mobile_phone="650 253 0000"),
            contact("u2", "b", mobile_phone="650 253 0000"),
            contact("u2", "c", given_name="Bob", mobile_phone="650 253 0007")]
    assert len(entries(*rows)) == 2


def test_different_people_with_the_same_number_stay_apart() -> None:
    rows = [contact("u1", "a", mobile_phone="650 253 0000"),
            contact("u1", "b", given_name="Bo", mobile_phone="650 253 0000")]
    assert len(entries(*rows)) == 2


def test_excluded_category_never_becomes_an_entry() -> None:
    result = run(contact("u1", "a", mobile_phone="650 253 0000", categories=["Work", " private "]),
                 contact("u1", "b", given_name="Bo", mobile_phone="650 253 0001", categories=["Work"]))
    assert list(result.frame["first_name"]) == ["Bo"] and result.excluded == 1


def test_deleted_rows_out_of_scope_owners_and_mode_off_are_ignored() -> None:
    users = pd.DataFrame([owner("u1"), owner("u2", in_scope=False), owner("u3", deleted=True)])
    rows = [contact("u1", "a", mobile_phone="650 253 0000", deleted=True),
            contact("u2", "b", mobile_phone="650 253 0001"),
            contact("u3", "c", mobile_phone="650 253 0002"),
            contact("ghost", "d", mobile_phone="650 253 0003")]
    assert run(*rows, users=users).frame.empty
    live = contact("u1", "e", mobile_phone="650 253 0004")
    off = PhonebookParams(personal_contacts="off")
    assert run(live, params=off).frame.empty
    assert len(run(live).frame) == 1


def test_org_contacts_count_without_an_owner() -> None:
    row = entries(contact("org", "o1", source="org", mobile_phone="+44 20 7946 0018"))[0]
    assert row["phone_number"] == "+442079460018" and row["owner_ids"] == ["org"]


def test_emoji_and_right_to_left_names_survive() -> None:
    row = entries(contact("u1", "a", given_name="נועה", surname="כהן 🎉", mobile_phone="650 253 0000"),
                  contact("u1", "b", given_name="محمد", surname="علي", mobile_phone="650 253 0001"))
    names = {(r["first_name"], r["last_name"]) for r in row}
    assert names == {("נועה", "כהן 🎉"), ("محمد", "علي")}


def test_very_long_fields_are_truncated_with_a_note_and_long_email_left_out() -> None:
    result = run(contact("u1", "a", given_name="A" * 300, company_name="C" * 500, job_title="T" * 101,
                         mobile_phone="650 253 0000", email_addresses=["x" * 300 + "@example.com"]))
    row = result.frame.iloc[0].to_dict()
    assert len(row["first_name"]) == FIELD_LIMITS["FirstName"]
    assert len(row["company_name"]) == FIELD_LIMITS["CompanyName"]
    assert len(row["title"]) == FIELD_LIMITS["Title"]
    assert row["email"] is None
    fields = sorted(n.field for n in result.notes)
    assert fields == ["CompanyName", "FirstName", "Title", "emailAddresses"]


def test_truncate_never_leaves_a_dangling_joiner_or_mark() -> None:
    family = "\U0001F468\u200d\U0001F469\u200d\U0001F467"
    cut, changed = truncate("ab" + family, 4)
    assert changed and not cut.endswith("\u200d")
    cut, changed = truncate("cafe\u0301s", 4)  # 'e' + combining acute would be split
    assert changed and cut == "caf"
    assert truncate("short", 10) == ("short", False)
    assert truncate(None, 3) == (None, False)


def test_dedup_key_is_stable_and_normalised() -> None:
    assert dedup_key("Ann  Lee", "+1", None) == dedup_key("ANN LEE", "+1", None)
    assert dedup_key("\uff21nn Lee", "+1", None) == dedup_key("ann lee", "+1", None)  # NFKC full-width
    assert dedup_key(None, None, "A@X.example") == dedup_key("", None, "a@x.example")
    assert dedup_key("Ann Lee", "+1", None) != dedup_key("Ann Lee", "+2", None)
    assert len(dedup_key("x", "+1", None)) == 32


def test_messy_corpus_loses_nothing_usable_and_notes_every_problem() -> None:
    users = pd.DataFrame([owner("u1"), owner("u2", usage_location="GB")])
    corpus = [
        contact("u1", "ext", business_phones=["(650) 253-0000 ext. 12"]),
        contact("u1", "vanity", given_name="Flo", business_phones=["1-800-FLOWERS"]),
        contact("u2", "national", given_name="Gus", mobile_phone="020 7946 0018"),
        contact("u2", "dup", mobile_phone="+1 650 253 0000", home_phones=["+1 650 253 0004"]),
        contact("u1", "mail-only", given_name="Em", email_addresses=["em@x.example"]),
        contact("u1", "emoji", given_name="😀", surname="Smile", mobile_phone="650 253 0005"),
        contact("u2", "rtl", given_name="דנה", surname=None, mobile_phone="07400 123456"),
        contact("u1", "long", given_name="L" * 80, mobile_phone="650 253 0006"),
        contact("u1", "junk", given_name="Jay", mobile_phone="+", business_phones=["?"]),
    ]
    result = run(*corpus, users=users)
    frame = result.frame
    assert len(frame) == 6  # ext+dup merged; mail-only and junk skipped
    numbers = set(frame[["phone_number", "home"]].stack())
    assert {"+16502530000", "+16502530004", "+18003569377", "+442079460018", "+16502530005",
            "+447400123456", "+16502530006"} <= numbers
    skipped = {n.object_key for n in result.notes if "contact skipped" in n.message}
    assert skipped == {"u1/mail-only", "u1/junk"}
    assert not [n for n in result.notes if n.severity == "error"]
    noted = {n.object_key for n in result.notes}
    assert {"u1/ext", "u1/long", "u1/junk", "u1/mail-only"} <= noted
    assert result.contacts_used == 7 and result.skipped == 2


def test_shared_mailbox_contacts_count_outside_scope_and_are_named_by_the_mailbox() -> None:
    users = pd.DataFrame([owner("u1"), owner("sm", user_principal_name="reception@contoso.example",
                                            in_scope=False, usage_location="DE")])
    result = run(contact("shared:sm", "c1", given_name="Lena", surname="Lock", business_phones=["030 5550100"],
                         source="shared"),
                 contact("shared:sm", "c2", given_name="Nina", surname="Nonumber", source="shared"),
                 contact("shared:sm", "c3", given_name="Pia", mobile_phone="+1 206 555 0100", source="shared",
                         categories=["Private"]),
                 users=users, params=PhonebookParams(personal_contacts="off"))
    (entry,) = result.frame.to_dict("records")
    assert (entry["first_name"], entry["phone_number"], entry["owner_ids"]) == ("Lena", "+49305550100", ["shared:sm"])
    assert any("shared mailbox reception@contoso.example" in m for m in messages(result))  # Nina: no number
    assert result.excluded == 1  # exclude_category applies to shared mailboxes too


def test_org_contacts_and_shared_contacts_merge_with_personal_copies() -> None:
    result = run(contact("u1", "c1", mobile_phone="+1 206 555 0100"),
                 contact("org", "o1", mobile_phone="+1 206 555 0100", source="org", job_title="Buyer"),
                 contact("shared:sm", "s1", mobile_phone="+1 206 555 0100", source="shared"))
    (entry,) = result.frame.to_dict("records")
    assert entry["copies"] == 3 and entry["owner_ids"] == ["org", "shared:sm", "u1"]


def test_fingerprint_is_of_the_values_the_diff_compares() -> None:
    base = {"FirstName": "Ann", "LastName": "Lee", "PhoneNumber": "+16505550101", "Tag": f"{TAG_PREFIX}k"}
    folded = {"FirstName": " Ann\t", "LastName": "Lee  ", "PhoneNumber": "+16505550101", "Tag": f"{TAG_PREFIX}k",
              "Email": "  ", "Title": None, "Notes": "not managed"}
    assert managed_values(folded) == managed_values(base)
    assert managed_fingerprint(folded) == managed_fingerprint(base)
    assert len(managed_fingerprint(base) or "") == 64
    moved = {**base, "FirstName": None, "LastName": "Ann Lee"}  # same text, other fields
    for other in ({**base, "Title": "CTO"}, {**base, "FirstName": "ann"}, moved, {**base, "LastName": None}):
        assert managed_fingerprint(other) != managed_fingerprint(base)
    assert managed_fingerprint(None) is None
    row = {"first_name": " Ann", "last_name": "Lee", "phone_number": "+16505550101", "tag": f"{TAG_PREFIX}k"}
    assert managed_fingerprint(target_fields(row)) == managed_fingerprint(base)
