from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import pytest

from m365_3cx.transform.extensions import DESIRED_COLUMNS, ExtensionParams, desired_extensions
from m365_3cx.transform.numbering import NumberingPolicy

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)
EMPTY_MAP = pd.DataFrame(columns=["user_id", "number", "threecx_id", "status", "released_at"])
EMPTY_PBX = pd.DataFrame(columns=["threecx_id", "number"])
PARAMS = ExtensionParams()


def user(uid: str, **kw: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "user_id": uid,
        "user_principal_name": f"{uid}@contoso.example",
        "display_name": "Ann Lee",
        "given_name": "Ann",
        "surname": "Lee",
        "mail": f"{uid}@contoso.example",
        "mobile_phone": None,
        "business_phones": [],
        "account_enabled": True,
        "user_type": "Member",
        "usage_location": "US",
        "department": None,
        "job_title": None,
        "extension_attributes": {},
        "in_scope": True,
        "deleted": False,
        "deleted_at": None,
        "first_seen_at": NOW - timedelta(days=1),
    }
    row.update(kw)
    return row


def run(*rows: dict[str, Any], params: ExtensionParams = PARAMS, mapping: pd.DataFrame = EMPTY_MAP):
    return desired_extensions(pd.DataFrame(list(rows)), mapping, EMPTY_PBX, params, NOW)


def one(*rows: dict[str, Any], **kw: Any) -> dict[str, Any]:
    return run(*rows, **kw).frame.iloc[0].to_dict()


def test_columns_and_active_row() -> None:
    result = run(user("a", mail="Ann.Lee@Contoso.Example", mobile_phone="(650) 253-0000"))
    assert list(result.frame.columns) == DESIRED_COLUMNS
    assert result.frame.iloc[0].to_dict() == {
        "user_id": "a",
        "number": "200",
        "first_name": "Ann",
        "last_name": "Lee",
        "email": "ann.lee@contoso.example",
        "mobile": "+16502530000",
        "outbound_caller_id": None,
        "enabled": True,
        "state": "active",
        "removal_reason": None,
        "protection": None,
    }
    assert result.new_assignments[0]["number"] == "200"
    assert result.notes == []


def test_names_fall_back_to_display_name() -> None:
    row = one(user("a", given_name=None, surname="  ", display_name="  Mary Ann  van Dyke "))
    assert (row["first_name"], row["last_name"]) == ("Mary Ann van", "Dyke")


def test_single_token_display_name() -> None:
    row = one(user("a", given_name=None, surname=None, display_name="Reception"))
    assert (row["first_name"], row["last_name"]) == ("Reception", None)


def test_names_fall_back_to_upn_local_part() -> None:
    row = one(user("a", given_name=None, surname=None, display_name=None, user_principal_name="front.desk@x.io"))
    assert (row["first_name"], row["last_name"]) == ("front.desk", None)


def test_partial_names_are_kept() -> None:
    row = one(user("a", given_name="Cher", surname=None, display_name="Cher Sarkisian"))
    assert (row["first_name"], row["last_name"]) == ("Cher", None)


def test_non_ascii_names_kept() -> None:
    row = one(user("a", given_name=" Zoë ", surname="Øster-Ñúñez 李"))
    assert (row["first_name"], row["last_name"]) == ("Zoë", "Øster-Ñúñez 李")


def test_long_names_truncated_with_note() -> None:
    result = run(user("a", given_name="A" * 60, surname="B" * 51))
    row = result.frame.iloc[0]
    assert row["first_name"] == "A" * 50
    assert row["last_name"] == "B" * 50
    assert [(n.field, n.severity) for n in result.notes] == [("givenName", "warning"), ("surname", "warning")]
    assert "FirstName is 60 characters; truncated to 50" in result.notes[0].message


def test_missing_mail_is_none() -> None:
    assert one(user("a", mail=None))["email"] is None
    assert one(user("a", mail="  "))["email"] is None


def test_bad_mobile_note_and_empty() -> None:
    result = run(user("a", mobile_phone="+1 555"))
    assert result.frame.iloc[0]["mobile"] is None
    (note,) = result.notes
    assert note.field == "mobilePhone"
    assert note.record_label == "a@contoso.example"
    assert note.message == (
        "user a@contoso.example: mobilePhone '+1 555' is not a valid number for region US (too short); "
        "Mobile left empty"
    )


def test_mobile_uses_usage_location_then_default_region() -> None:
    assert one(user("a", mobile_phone="07911 123456", usage_location="GB"))["mobile"] == "+447911123456"
    params = ExtensionParams(default_region="DE")
    assert one(user("a", mobile_phone="0151 23456789", usage_location=None), params=params)["mobile"] == (
        "+4915123456789"
    )


def test_outbound_caller_id_only_when_managed() -> None:
    u = user("a", business_phones=["+1 650 253 0000 x12"])
    assert one(u)["outbound_caller_id"] is None
    result = run(u, params=ExtensionParams(manage_outbound_caller_id=True))
    assert result.frame.iloc[0]["outbound_caller_id"] == "+16502530000"
    assert result.notes[0].field == "businessPhones"
    assert "dropped" in result.notes[0].message


@pytest.mark.parametrize(
    ("kw", "reason"),
    [
        ({"deleted": True}, "deleted"),
        ({"in_scope": False}, "out_of_scope"),
        ({"user_type": "Guest"}, "out_of_scope"),
        ({"account_enabled": False}, "disabled"),
        ({"deleted": True, "account_enabled": False, "in_scope": False}, "deleted"),
        ({"in_scope": False, "account_enabled": False}, "out_of_scope"),
    ],
)
def test_removed_states(kw: dict[str, Any], reason: str) -> None:
    result = run(user("a", mobile_phone="garbage", **kw))
    row = result.frame.iloc[0]
    assert row["state"] == "removed"
    assert row["removal_reason"] == reason
    assert not row["enabled"]
    assert row["number"] is None  # not mapped: no number
    assert row["first_name"] == "Ann"  # values kept
    assert result.new_assignments == []
    assert result.notes == []  # no noise about removed users


def test_guests_included_when_configured() -> None:
    row = one(user("a", user_type="Guest"), params=ExtensionParams(include_guests=True))
    assert row["state"] == "active"


def test_missing_account_enabled_counts_as_enabled() -> None:
    assert one(user("a", account_enabled=None))["state"] == "active"


def test_removed_mapped_user_keeps_number() -> None:
    m = pd.DataFrame([{"user_id": "a", "number": "250", "threecx_id": 7, "status": "active", "released_at": None}])
    row = one(user("a", deleted=True), mapping=m)
    assert (row["number"], row["state"], row["enabled"]) == ("250", "removed", False)


def test_numbering_notes_are_included() -> None:
    params = ExtensionParams(numbering=NumberingPolicy(policy="attribute", fallback_to_pool=False))
    result = run(user("a"), params=params)
    assert result.frame.iloc[0]["number"] is None
    assert result.notes[0].field == "extensionAttribute1"


def test_missing_optional_columns() -> None:
    frame = pd.DataFrame([{"user_id": "a", "user_principal_name": "a@x.io", "display_name": "A B"}])
    result = desired_extensions(frame, EMPTY_MAP, EMPTY_PBX, PARAMS, NOW)
    row = result.frame.iloc[0]
    assert (row["first_name"], row["last_name"], row["state"], row["number"]) == ("A", "B", "active", "200")


def test_from_settings() -> None:
    class Numbering:
        policy = "pool"
        attribute = "extensionAttribute1"
        suffix_digits = 3
        pool_first = "200"
        pool_last = "899"
        min_length = 2
        max_length = 7
        fallback_to_pool = True
        quarantine_days = 30

    class Extensions:
        removal_policy = "disable"
        manage_outbound_caller_id = True
        default_region = "GB"
        group_name = "Synced"

    class Scope:
        group_id = None
        include_guests = True
        user_filter = None

    class S:
        numbering = Numbering()
        extensions = Extensions()
        scope = Scope()

    params = ExtensionParams.from_settings(S())
    assert params == ExtensionParams(NumberingPolicy(), "GB", True, True)


def test_many_users() -> None:
    rows = [user(f"u{i:05d}", mobile_phone=f"+1 650 253 {i % 10000:04d}") for i in range(2000)]
    result = run(*rows)
    assert result.frame["number"].dropna().is_unique
    assert len(result.new_assignments) == 700  # pool 200..899
    assert sum(n.message.endswith("no extension created") for n in result.notes) == 1300


def _emails(result: Any) -> dict[str, Any]:
    return dict(zip(result.frame["user_id"], result.frame["email"], strict=True))


def test_mails_differing_only_in_case_keep_the_first_synced_user_and_note_the_other() -> None:
    """Issue 9 #4: never two extensions with one address, never silently."""
    result = run(
        user("b", user_principal_name="twin2@contoso.example", mail="twin@contoso.example",
             first_seen_at=NOW - timedelta(days=1)),
        user("a", user_principal_name="twin1@contoso.example", mail="Twin@Contoso.Example",
             first_seen_at=NOW - timedelta(days=3)),
        user("c", user_principal_name="twin3@contoso.example", mail="twin@contoso.example",
             first_seen_at=NOW - timedelta(days=1)),
    )
    assert _emails(result) == {"b": None, "a": "twin@contoso.example", "c": None}
    mail_notes = [n for n in result.notes if n.field == "mail"]
    assert [(n.object_key, n.severity) for n in mail_notes] == [("b", "warning"), ("c", "warning")]
    assert all("twin1@contoso.example" in n.message and n.record_label in n.message for n in mail_notes)
    assert "EmailAddress left empty" in mail_notes[0].message


def test_duplicate_mail_rule_is_stable_and_only_active_users_compete() -> None:
    same_run = [user("b", mail="x@contoso.example"), user("a", mail="X@contoso.example")]
    assert _emails(run(*same_run)) == {"b": None, "a": "x@contoso.example"}  # same first_seen_at: lower id
    assert _emails(run(*reversed(same_run))) == {"a": "x@contoso.example", "b": None}
    gone = run(user("a", mail="x@contoso.example", account_enabled=False), user("b", mail="x@contoso.example"))
    assert _emails(gone) == {"a": "x@contoso.example", "b": "x@contoso.example"}
    assert not [n for n in gone.notes if n.field == "mail"]


def test_hostile_names_reach_3cx_clean_with_notes() -> None:
    result = run(user("a", given_name="\u202eA\u200bnn\x00" + "a" * 300, surname="\ufeffLee\u2066"),
                 user("b", given_name="\u200b", surname=None, display_name="Bob\u200d Stone"))
    rows = result.frame.set_index("user_id")
    assert rows.loc["a", "first_name"] == "Ann" + "a" * 47 and rows.loc["a", "last_name"] == "Lee"
    assert (rows.loc["b", "first_name"], rows.loc["b", "last_name"]) == ("Bob", "Stone")
    messages = {(n.object_key, n.field): n.message for n in result.notes}
    assert "U+202E" in messages[("a", "givenName")] or "truncated" in messages[("a", "givenName")]
    assert any(f == "givenName" and "truncated to 50" in m for (k, f), m in messages.items() if k == "a")
    assert "U+FEFF" in messages[("a", "surname")]
    assert "U+200D" in messages[("b", "displayName")]


def test_overlong_mail_is_left_out_with_a_note() -> None:
    result = run(user("a", mail="a" * 250 + "@x.example"))
    assert _emails(result) == {"a": None}
    assert [n.field for n in result.notes] == ["mail"] and "254" in result.notes[0].message


def test_protected_users_get_no_number_and_one_info_note_each() -> None:
    from m365_3cx.transform.scope import ProtectionParams

    params = ExtensionParams(protection=ProtectionParams(upns=frozenset({"p@contoso.example"}),
                                                         opt_out_attribute="extensionAttribute5"))
    result = run(user("p", user_principal_name="P@contoso.example"),
                 user("o", extension_attributes={"extensionAttribute5": "No-3CX-Sync"}),
                 user("n"), params=params)
    rows = {r["user_id"]: r for r in result.frame.to_dict("records")}
    assert (rows["p"]["protection"], rows["o"]["protection"], rows["n"]["protection"]) == \
        ("protected_upn", "opted_out", None)
    assert rows["p"]["number"] is None and rows["o"]["number"] is None and rows["n"]["number"] == "200"
    assert [a["user_id"] for a in result.new_assignments] == ["n"]
    info = [(n.object_key, n.severity) for n in result.notes]
    assert info == [("p", "info"), ("o", "info")]
    assert "scope.protected_upns" in result.notes[0].message
