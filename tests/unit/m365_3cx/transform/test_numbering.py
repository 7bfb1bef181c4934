from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import pandas as pd
import pytest

from m365_3cx.errors import ConfigError
from m365_3cx.transform.numbering import NumberingPolicy, allocate_numbers

NOW = datetime(2025, 3, 1, 12, 0, tzinfo=UTC)


def user(uid: str, seen_days_ago: int = 10, **kw: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "user_id": uid,
        "user_principal_name": f"{uid}@contoso.example",
        "first_seen_at": NOW - timedelta(days=seen_days_ago),
        "extension_attributes": {},
        "business_phones": [],
        "account_enabled": True,
        "in_scope": True,
        "deleted": False,
        "user_type": "Member",
    }
    row.update(kw)
    return row


def users(*rows: dict[str, Any]) -> pd.DataFrame:
    return pd.DataFrame(list(rows))


def mapping(*rows: tuple[str, str, str, datetime | None]) -> pd.DataFrame:
    return pd.DataFrame(
        [
            {"user_id": u, "number": n, "threecx_id": None, "status": s, "assigned_at": NOW, "released_at": r}
            for u, n, s, r in rows
        ],
        columns=["user_id", "number", "threecx_id", "status", "assigned_at", "released_at", "adopted"],
    )


def pbx(*numbers: str) -> pd.DataFrame:
    return pd.DataFrame({"threecx_id": range(1000, 1000 + len(numbers)), "number": list(numbers)})


EMPTY_MAP = mapping()
EMPTY_PBX = pd.DataFrame(columns=["threecx_id", "number"])
POOL = NumberingPolicy(policy="pool", pool_first="200", pool_last="205")
ATTR = NumberingPolicy(policy="attribute", pool_first="200", pool_last="205")
SUFFIX = NumberingPolicy(policy="phone_suffix", suffix_digits=3, pool_first="200", pool_last="205")


def test_pool_gives_lowest_free_in_first_seen_order() -> None:
    u = users(user("b", 5), user("a", 9), user("c", 1))
    result = allocate_numbers(u, EMPTY_MAP, EMPTY_PBX, POOL, NOW)
    assert result.numbers == {"a": "200", "b": "201", "c": "202"}
    assert [a["user_id"] for a in result.new_assignments] == ["a", "b", "c"]
    assert result.new_assignments[0] == {
        "user_id": "a",
        "number": "200",
        "status": "active",
        "assigned_at": NOW,
        "replaces_user_id": None,
    }
    assert result.notes == []


def test_ties_on_first_seen_broken_by_user_id() -> None:
    u = users(user("z", 3), user("m", 3), user("a", 3))
    assert allocate_numbers(u, EMPTY_MAP, EMPTY_PBX, POOL, NOW).numbers == {"a": "200", "m": "201", "z": "202"}


def test_pool_skips_mapped_unmanaged_and_quarantined() -> None:
    m = mapping(("old", "200", "active", None), ("gone", "202", "released", NOW - timedelta(days=3)))
    u = users(user("old"), user("new1"), user("new2"))
    result = allocate_numbers(u, m, pbx("201"), POOL, NOW)
    assert result.numbers["old"] == "200"
    assert result.numbers["new1"] == "203"
    assert result.numbers["new2"] == "204"
    assert [a["user_id"] for a in result.new_assignments] == ["new1", "new2"]


def test_number_reusable_after_quarantine() -> None:
    m = mapping(("gone", "200", "released", NOW - timedelta(days=31)))
    result = allocate_numbers(users(user("new")), m, EMPTY_PBX, POOL, NOW)
    assert result.numbers == {"new": "200"}
    assert result.new_assignments[0]["replaces_user_id"] == "gone"


def test_released_number_still_in_pbx_is_not_reused() -> None:
    m = mapping(("gone", "200", "released", NOW - timedelta(days=90)))
    result = allocate_numbers(users(user("new")), m, pbx("200"), POOL, NOW)
    assert result.numbers["new"] == "201"


def test_released_user_coming_back_keeps_number() -> None:
    m = mapping(("back", "204", "released", NOW - timedelta(days=90)))
    result = allocate_numbers(users(user("back"), user("new")), m, EMPTY_PBX, POOL, NOW)
    assert result.numbers == {"back": "204", "new": "200"}
    assert [a["user_id"] for a in result.new_assignments] == ["new"]


def test_stable_across_runs() -> None:
    u = users(user("a", 3), user("b", 2))
    first = allocate_numbers(u, EMPTY_MAP, EMPTY_PBX, POOL, NOW)
    m = mapping(*[(a["user_id"], a["number"], "active", None) for a in first.new_assignments])
    # a new, earlier-seen user arrives: existing users keep their numbers
    u2 = users(user("a", 3), user("b", 2), user("0", 100))
    second = allocate_numbers(u2, m, EMPTY_PBX, POOL, NOW + timedelta(days=1))
    assert second.numbers == {"a": "200", "b": "201", "0": "202"}
    assert [a["user_id"] for a in second.new_assignments] == ["0"]


def test_deterministic_regardless_of_row_order() -> None:
    rows = [user(f"u{i}", i % 3) for i in range(6)]
    a = allocate_numbers(users(*rows), EMPTY_MAP, EMPTY_PBX, POOL, NOW)
    b = allocate_numbers(users(*reversed(rows)), EMPTY_MAP, EMPTY_PBX, POOL, NOW)
    assert a.numbers == b.numbers
    assert a.new_assignments == b.new_assignments


def test_pool_exhausted_note() -> None:
    small = NumberingPolicy(policy="pool", pool_first="200", pool_last="201")
    u = users(user("a", 3), user("b", 2), user("c", 1))
    result = allocate_numbers(u, EMPTY_MAP, EMPTY_PBX, small, NOW)
    assert result.numbers == {"a": "200", "b": "201"}
    assert len(result.notes) == 1
    note = result.notes[0]
    assert note.object_key == "c"
    assert note.severity == "error"
    assert "c@contoso.example" in note.message
    assert "exhausted" in note.message


def test_zero_padded_pool() -> None:
    pol = NumberingPolicy(policy="pool", pool_first="0100", pool_last="0199")
    assert allocate_numbers(users(user("a")), EMPTY_MAP, EMPTY_PBX, pol, NOW).numbers == {"a": "0100"}


def test_removed_users_without_mapping_get_no_number() -> None:
    u = users(
        user("gone", deleted=True),
        user("off", account_enabled=False),
        user("out", in_scope=False),
        user("guest", user_type="Guest"),
        user("ok"),
    )
    result = allocate_numbers(u, EMPTY_MAP, EMPTY_PBX, POOL, NOW)
    assert result.numbers == {"ok": "200"}


def test_active_ids_override() -> None:
    u = users(user("guest", user_type="Guest"), user("ok"))
    result = allocate_numbers(u, EMPTY_MAP, EMPTY_PBX, POOL, NOW, active_ids={"guest"})
    assert result.numbers == {"guest": "200"}


def test_removed_mapped_user_keeps_number_in_result() -> None:
    m = mapping(("gone", "205", "active", None))
    result = allocate_numbers(users(user("gone", deleted=True)), m, EMPTY_PBX, POOL, NOW)
    assert result.numbers == {"gone": "205"}
    assert result.new_assignments == []


# --- attribute policy ------------------------------------------------------


def test_attribute_policy() -> None:
    u = users(user("a", extension_attributes={"extensionAttribute1": " 4711 "}))
    assert allocate_numbers(u, EMPTY_MAP, EMPTY_PBX, ATTR, NOW).numbers == {"a": "4711"}


@pytest.mark.parametrize("value", [None, "", "12a", "1", "12345678", "+4711", "47 11"])
def test_attribute_invalid_falls_back_to_pool_with_note(value: str | None) -> None:
    u = users(user("a", extension_attributes={"extensionAttribute1": value}))
    result = allocate_numbers(u, EMPTY_MAP, EMPTY_PBX, ATTR, NOW)
    assert result.numbers == {"a": "200"}
    (note,) = result.notes
    assert note.field == "extensionAttribute1"
    assert note.severity == "warning"
    assert note.message.startswith("user a@contoso.example: extensionAttribute1")
    assert "allocated 200 from the pool" in note.message


def test_attribute_invalid_without_fallback_skips_user() -> None:
    pol = NumberingPolicy(policy="attribute", fallback_to_pool=False)
    u = users(user("a", extension_attributes={"extensionAttribute1": "x"}), user("b"))
    result = allocate_numbers(u, EMPTY_MAP, EMPTY_PBX, pol, NOW)
    assert result.numbers == {}
    assert [n.object_key for n in result.notes] == ["a", "b"]
    assert all(n.severity == "error" and "no extension created" in n.message for n in result.notes)


def test_attribute_custom_key_and_missing_dict() -> None:
    pol = NumberingPolicy(policy="attribute", attribute="extensionAttribute7", fallback_to_pool=False)
    u = users(user("a", extension_attributes={"extensionAttribute7": "301"}), user("b", extension_attributes=None))
    result = allocate_numbers(u, EMPTY_MAP, EMPTY_PBX, pol, NOW)
    assert result.numbers == {"a": "301"}
    assert result.notes[0].field == "extensionAttribute7"


def test_attribute_collision_with_unmanaged_extension() -> None:
    u = users(user("a", extension_attributes={"extensionAttribute1": "300"}))
    result = allocate_numbers(u, EMPTY_MAP, pbx("300"), ATTR, NOW)
    assert result.numbers == {"a": "200"}
    assert "unmanaged 3CX extension" in result.notes[0].message


def test_attribute_collision_with_quarantined_number() -> None:
    m = mapping(("gone", "300", "released", NOW - timedelta(days=29)))
    u = users(user("a", extension_attributes={"extensionAttribute1": "300"}))
    result = allocate_numbers(u, m, EMPTY_PBX, ATTR, NOW)
    assert result.numbers["a"] == "200"
    assert "quarantine until 2025-03-02" in result.notes[0].message


def test_attribute_collision_in_run_earlier_user_wins() -> None:
    u = users(
        user("late", 1, extension_attributes={"extensionAttribute1": "300"}),
        user("early", 5, extension_attributes={"extensionAttribute1": "300"}),
    )
    result = allocate_numbers(u, EMPTY_MAP, EMPTY_PBX, ATTR, NOW)
    assert result.numbers == {"early": "300", "late": "200"}
    assert result.notes[0].object_key == "late"
    assert "another user in this run" in result.notes[0].message


def test_attribute_collision_without_fallback_skips() -> None:
    pol = NumberingPolicy(policy="attribute", fallback_to_pool=False)
    m = mapping(("x", "300", "active", None))
    u = users(user("a", extension_attributes={"extensionAttribute1": "300"}))
    result = allocate_numbers(u, m, EMPTY_PBX, pol, NOW)
    assert "a" not in result.numbers
    assert result.notes[0].severity == "error"
    assert "mapped to another user" in result.notes[0].message


def test_mapped_user_keeps_number_when_attribute_changes() -> None:
    m = mapping(("a", "300", "active", None))
    u = users(user("a", extension_attributes={"extensionAttribute1": "301"}))
    result = allocate_numbers(u, m, EMPTY_PBX, ATTR, NOW)
    assert result.numbers == {"a": "300"}
    assert result.new_assignments == []
    (note,) = result.notes
    assert note.severity == "warning"
    assert "keeping 300" in note.message


def test_fallback_and_pool_exhausted() -> None:
    pol = NumberingPolicy(policy="attribute", pool_first="200", pool_last="200")
    u = users(user("a", 2), user("b", 1))
    result = allocate_numbers(u, EMPTY_MAP, EMPTY_PBX, pol, NOW)
    assert result.numbers == {"a": "200"}
    assert result.notes[-1].object_key == "b"
    assert "exhausted" in result.notes[-1].message


# --- phone suffix policy ---------------------------------------------------


def test_phone_suffix_policy() -> None:
    u = users(user("a", business_phones=["+1 (650) 253-0123", "+1 650 253 0999"]))
    assert allocate_numbers(u, EMPTY_MAP, EMPTY_PBX, SUFFIX, NOW).numbers == {"a": "123"}


@pytest.mark.parametrize("phones", [[], None, ["12"], ["  "]])
def test_phone_suffix_missing_falls_back(phones: list[str] | None) -> None:
    u = users(user("a", business_phones=phones))
    result = allocate_numbers(u, EMPTY_MAP, EMPTY_PBX, SUFFIX, NOW)
    assert result.numbers == {"a": "200"}
    assert result.notes[0].field == "businessPhones"


def test_phone_suffix_collision() -> None:
    u = users(user("a", 2, business_phones=["+1 650 253 0123"]), user("b", 1, business_phones=["+44 20 7946 0123"]))
    result = allocate_numbers(u, EMPTY_MAP, EMPTY_PBX, SUFFIX, NOW)
    assert result.numbers == {"a": "123", "b": "200"}


def test_policy_validation() -> None:
    with pytest.raises(ConfigError, match="policy"):
        NumberingPolicy(policy="random")
    with pytest.raises(ConfigError, match="pool_first"):
        NumberingPolicy(pool_first="900", pool_last="100")


def test_from_settings_reads_attributes() -> None:
    class N:
        policy = "attribute"
        attribute = "extensionAttribute2"
        suffix_digits = 4
        pool_first = "1000"
        pool_last = "1999"
        min_length = 3
        max_length = 5
        fallback_to_pool = False
        quarantine_days = 7

    class S:
        numbering = N()

    pol = NumberingPolicy.from_settings(S())
    assert pol == NumberingPolicy("attribute", "extensionAttribute2", 4, "1000", "1999", 3, 5, False, 7)


def test_empty_frames() -> None:
    result = allocate_numbers(pd.DataFrame(), pd.DataFrame(), pd.DataFrame(), POOL, NOW)
    assert result.numbers == {}
    assert result.new_assignments == []
