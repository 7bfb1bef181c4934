from __future__ import annotations

from typing import Any

import pandas as pd
import pytest

from m365_3cx.errors import ConfigError
from m365_3cx.reconcile.plan import Change, PlanParams, plan_extensions, plan_rows

DISABLE = PlanParams(removal_policy="disable")
DELETE = PlanParams(removal_policy="delete")
IGNORE = PlanParams(removal_policy="ignore")


def want(uid: str, number: str | None, **kw: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "user_id": uid,
        "number": number,
        "first_name": "Ann",
        "last_name": "Lee",
        "email": f"{uid}@contoso.example",
        "mobile": "+16502530000",
        "outbound_caller_id": None,
        "enabled": True,
        "state": "active",
        "removal_reason": None,
    }
    row.update(kw)
    return row


def gone(uid: str, number: str | None, reason: str = "disabled") -> dict[str, Any]:
    return want(uid, number, enabled=False, state="removed", removal_reason=reason)


def ext(tid: int, number: str, uid: str | None = None, **kw: Any) -> dict[str, Any]:
    row: dict[str, Any] = {
        "threecx_id": tid,
        "number": number,
        "first_name": "Ann",
        "last_name": "Lee",
        "display_name": "Ann Lee",
        "email": f"{uid}@contoso.example" if uid else None,
        "mobile": "+16502530000",
        "outbound_caller_id": "",
        "enabled": True,
    }
    row.update(kw)
    return row


def frames(
    desired: list[dict[str, Any]], maps: list[tuple[str, str, int | None]], exts: list[dict[str, Any]]
) -> tuple[pd.DataFrame, pd.DataFrame, pd.DataFrame]:
    m = pd.DataFrame(
        [{"user_id": u, "number": n, "threecx_id": t, "status": "active"} for u, n, t in maps],
        columns=["user_id", "number", "threecx_id", "status"],
    )
    p = pd.DataFrame(exts, columns=list(ext(0, "0").keys()))
    return pd.DataFrame(desired), m, p


def plan(desired, maps, exts, params=DISABLE, **kw: Any):
    return plan_extensions(*frames(desired, maps, exts), params, **kw)


def test_create_new_user() -> None:
    result = plan([want("a", "200")], [], [], labels={"a": "a@contoso.example"})
    assert result.changes == [
        Change(
            action="create",
            object_key="a",
            number="200",
            threecx_id=None,
            fields={
                "FirstName": (None, "Ann"),
                "LastName": (None, "Lee"),
                "EmailAddress": (None, "a@contoso.example"),
                "Mobile": (None, "+16502530000"),
                "Enabled": (None, True),
            },
            reason="new user",
            label="a@contoso.example",
        )
    ]
    assert result.notes == []
    assert result.managed_count == 0


def test_create_omits_empty_fields() -> None:
    result = plan([want("a", "200", mobile=None, email="")], [], [])
    assert set(result.changes[0].fields) == {"FirstName", "LastName", "Enabled"}


def test_no_change_when_equal_is_empty_plan() -> None:
    result = plan([want("a", "200")], [("a", "200", 1)], [ext(1, "200", "a")])
    assert result.changes == []
    assert result.managed_count == 1


def test_none_equals_empty_string() -> None:
    result = plan(
        [want("a", "200", mobile=None, last_name=None)],
        [("a", "200", 1)],
        [ext(1, "200", "a", mobile="", last_name=None)],
    )
    assert result.changes == []


def test_update_only_differing_fields() -> None:
    result = plan(
        [want("a", "200", last_name="Lee-Smith", mobile="+16502530001")],
        [("a", "200", 1)],
        [ext(1, "200", "a", display_name="whatever", current_profile="Away")],
    )
    (change,) = result.changes
    assert change.action == "update"
    assert change.threecx_id == 1
    assert change.reason == "fields changed"
    assert change.fields == {"LastName": ("Lee", "Lee-Smith"), "Mobile": ("+16502530000", "+16502530001")}


def test_outbound_caller_id_only_when_managed() -> None:
    d = [want("a", "200", outbound_caller_id="+16502530000")]
    assert plan(d, [("a", "200", 1)], [ext(1, "200", "a")]).changes == []
    managed = PlanParams(manage_outbound_caller_id=True)
    (change,) = plan(d, [("a", "200", 1)], [ext(1, "200", "a")], managed).changes
    assert change.fields == {"OutboundCallerID": (None, "+16502530000")}


def test_reenabled_user() -> None:
    (change,) = plan([want("a", "200")], [("a", "200", 1)], [ext(1, "200", "a", enabled=False)]).changes
    assert (change.action, change.fields, change.reason) == ("update", {"Enabled": (False, True)}, "user re-enabled")


@pytest.mark.parametrize(
    ("reason", "text"),
    [("disabled", "user disabled"), ("deleted", "user deleted"), ("out_of_scope", "user out of scope")],
)
def test_disable_removed_user(reason: str, text: str) -> None:
    (change,) = plan([gone("a", "200", reason)], [("a", "200", 1)], [ext(1, "200", "a")]).changes
    assert change == Change("disable", "a", "200", 1, {"Enabled": (True, False)}, text)


def test_disable_is_idempotent() -> None:
    assert plan([gone("a", "200")], [("a", "200", 1)], [ext(1, "200", "a", enabled=False)]).changes == []


def test_delete_policy() -> None:
    (change,) = plan([gone("a", "200", "deleted")], [("a", "200", 1)], [ext(1, "200", "a")], DELETE).changes
    assert (change.action, change.threecx_id, change.fields, change.reason) == ("delete", 1, {}, "user deleted")


def test_delete_policy_already_deleted() -> None:
    assert plan([gone("a", "200", "deleted")], [("a", "200", 1)], [], DELETE).changes == []


def test_ignore_policy() -> None:
    assert plan([gone("a", "200")], [("a", "200", 1)], [ext(1, "200", "a")], IGNORE).changes == []


def test_removed_unmapped_user_nothing() -> None:
    assert plan([gone("a", None)], [], [ext(1, "200")]).changes == []


def test_recreate_vanished_extension_with_same_number() -> None:
    (change,) = plan([want("a", "200")], [("a", "200", 1)], [ext(2, "300")]).changes
    assert (change.action, change.number, change.threecx_id) == ("create", "200", None)
    assert change.reason == "extension missing in 3CX, re-created"


def test_mapped_without_threecx_id_is_created() -> None:
    (change,) = plan([want("a", "200")], [("a", "200", None)], []).changes
    assert change.action == "create"


def test_new_user_number_held_by_unmanaged_extension_is_skipped() -> None:
    result = plan([want("a", "200")], [], [ext(9, "200")], labels={"a": "a@contoso.example"})
    assert result.changes == []
    (note,) = result.notes
    assert note.severity == "error"
    assert note.message.startswith("user a@contoso.example: extension 200 is held by an unmanaged")


def test_vanished_extension_number_taken_by_hand_made_extension() -> None:
    result = plan([want("a", "200")], [("a", "200", 1)], [ext(5, "200")])
    assert result.changes == []
    assert "unmanaged" in result.notes[0].message


def test_mapped_id_with_other_number_left_untouched() -> None:
    result = plan([want("a", "200")], [("a", "200", 1)], [ext(1, "555")])
    assert result.changes == []
    assert "now has number 555" in result.notes[0].message


def test_user_without_number_skipped_silently() -> None:
    result = plan([want("a", None)], [], [])
    assert result.changes == [] and result.notes == []


def test_unmanaged_extensions_never_touched() -> None:
    exts = [ext(1, "200", "a"), ext(50, "500", first_name="Hand", enabled=True), ext(51, "501", enabled=False)]
    desired = [want("a", "200", first_name="Annie"), gone("x", None)]
    for params in (DISABLE, DELETE, IGNORE):
        result = plan(desired, [("a", "200", 1)], exts, params)
        assert {c.threecx_id for c in result.changes} == {1}


def test_only_keys() -> None:
    desired = [want("a", "200", first_name="Annie"), want("b", "201")]
    result = plan(desired, [("a", "200", 1)], [ext(1, "200", "a")], only_keys={"b"})
    assert [c.object_key for c in result.changes] == ["b"]
    assert plan(desired, [("a", "200", 1)], [ext(1, "200", "a")], only_keys=set()).changes == []


def test_order_creates_updates_disables_deletes_by_number() -> None:
    desired = [
        want("n2", "1000"),
        want("n1", "99"),
        want("u1", "300", first_name="X"),
        gone("d1", "400"),
        gone("d0", "150"),
    ]
    maps = [("u1", "300", 3), ("d1", "400", 4), ("d0", "150", 5)]
    exts = [ext(3, "300", "u1"), ext(4, "400", "d1"), ext(5, "150", "d0")]
    result = plan(desired, maps, exts)
    assert [(c.action, c.number) for c in result.changes] == [
        ("create", "99"),
        ("create", "1000"),
        ("update", "300"),
        ("disable", "150"),
        ("disable", "400"),
    ]
    assert [c.action for c in plan(desired, maps, exts, DELETE).changes][-2:] == ["delete", "delete"]


def test_frames_with_nan_and_float_ids() -> None:
    d, m, p = frames([want("a", "200", mobile=float("nan"))], [("a", "200", 1)], [ext(1, "200", "a", mobile=None)])
    m["threecx_id"] = m["threecx_id"].astype(float)
    assert plan_extensions(d, m, p, DISABLE).changes == []


def test_params() -> None:
    with pytest.raises(ConfigError, match="removal_policy"):
        PlanParams(removal_policy="purge")
    assert PlanParams().managed_fields == ("FirstName", "LastName", "EmailAddress", "Mobile", "Enabled")

    class Ext:
        removal_policy = "delete"
        manage_outbound_caller_id = True

    class S:
        extensions = Ext()

    assert PlanParams.from_settings(S()) == PlanParams("delete", True)


def test_plan_rows() -> None:
    changes = [Change("update", "a", "200", 1, {"FirstName": ("A", "B")}, "fields changed")]
    assert plan_rows(changes, "dag/run") == [
        {
            "run_key": "dag/run",
            "seq": 1,
            "action": "update",
            "object_type": "extension",
            "object_key": "a",
            "number": "200",
            "threecx_id": 1,
            "changes": {"FirstName": ["A", "B"]},
            "reason": "fields changed",
            "status": "planned",
        }
    ]


# ------------------------------------------------------------------ clear on empty (extensions.clear_on_empty)

CLEARABLE = {"FirstName": "first_name", "LastName": "last_name", "EmailAddress": "email", "Mobile": "mobile",
             "OutboundCallerID": "outbound_caller_id"}


@pytest.mark.parametrize("fld", sorted(CLEARABLE))
@pytest.mark.parametrize("clear", [True, False])
def test_an_emptied_field_clears_3cx_only_when_clear_on_empty(fld: str, clear: bool) -> None:
    column = CLEARABLE[fld]
    params = PlanParams(manage_outbound_caller_id=True, keep_on_empty=frozenset() if clear else frozenset({fld}))
    current = ext(1, "200", "a", outbound_caller_id="+16502530001")
    result = plan([want("a", "200", **{"outbound_caller_id": "+16502530001", column: None})],
                  [("a", "200", 1)], [current], params)
    if clear:
        assert [(c.action, c.fields) for c in result.changes] == [("update", {fld: (current[column], None)})]
    else:
        assert result.changes == []


@pytest.mark.parametrize("fld", sorted(CLEARABLE))
def test_keep_on_empty_still_writes_a_new_value(fld: str) -> None:
    column = CLEARABLE[fld]
    params = PlanParams(manage_outbound_caller_id=True, keep_on_empty=frozenset(CLEARABLE))
    value = "+16502539999" if fld in ("Mobile", "OutboundCallerID") else "new@contoso.example" \
        if fld == "EmailAddress" else "New"
    result = plan([want("a", "200", **{"outbound_caller_id": "+16502530001", column: value})],
                  [("a", "200", 1)], [ext(1, "200", "a", outbound_caller_id="+16502530001")], params)
    assert [c.fields for c in result.changes] == [{fld: (ext(1, "200", "a", outbound_caller_id="+16502530001")
                                                         [column], value)}]


def test_clear_on_empty_settings_become_keep_on_empty() -> None:
    from m365_3cx.settings import Settings

    settings = Settings.from_mapping({"extensions": {"clear_on_empty": {"Mobile": False, "LastName": False}}})
    assert PlanParams.from_settings(settings).keep_on_empty == frozenset({"Mobile", "LastName"})
    assert PlanParams.from_settings(Settings()).keep_on_empty == frozenset()
    with pytest.raises(ConfigError, match="clear_on_empty"):
        PlanParams(keep_on_empty=frozenset({"Enabled"}))


# ------------------------------------------------------------------ disable_then_delete

GRACE = PlanParams(removal_policy="disable_then_delete", delete_after_days=30)
NOW = pd.Timestamp("2026-03-01T12:00:00Z")


def grace_frames(since: pd.Timestamp | None, enabled: bool, desired: dict[str, Any]):
    d, m, p = frames([desired], [("a", "200", 1)], [ext(1, "200", "a", enabled=enabled)])
    m["removal_since"] = [since]
    return d, m, p


def test_disable_then_delete_disables_at_once_and_says_when_it_deletes() -> None:
    result = plan_extensions(*grace_frames(None, True, gone("a", "200", "deleted")), GRACE, now=NOW)
    assert [(c.action, c.fields, c.reason) for c in result.changes] == [
        ("disable", {"Enabled": (True, False)}, "user deleted; deleted after 30 days unless the user is back")]


@pytest.mark.parametrize(("days_ago", "action"), [(29, None), (30, "delete"), (45, "delete")])
def test_disable_then_delete_deletes_once_the_grace_period_is_over(days_ago: int, action: str | None) -> None:
    since = NOW - pd.Timedelta(days=days_ago)
    result = plan_extensions(*grace_frames(since, False, gone("a", "200", "out_of_scope")), GRACE, now=NOW)
    assert [c.action for c in result.changes] == ([action] if action else [])
    if action:
        change = result.changes[0]
        assert (change.threecx_id, change.number, change.fields) == (1, "200", {})
        assert "grace period of 30 days over" in change.reason and since.strftime("%Y-%m-%d") in change.reason


def test_disable_then_delete_without_now_or_clock_never_deletes() -> None:
    old = NOW - pd.Timedelta(days=90)
    assert plan_extensions(*grace_frames(old, False, gone("a", "200")), GRACE).changes == []
    assert plan_extensions(*grace_frames(None, False, gone("a", "200")), GRACE, now=NOW).changes == []
    # the plain disable policy never deletes, however long the extension has been disabled
    assert plan_extensions(*grace_frames(old, False, gone("a", "200")), DISABLE, now=NOW).changes == []


def test_a_user_back_within_the_grace_period_is_re_enabled_with_the_same_extension() -> None:
    since = NOW - pd.Timedelta(days=10)
    result = plan_extensions(*grace_frames(since, False, want("a", "200")), GRACE, now=NOW)
    assert [(c.action, c.threecx_id, c.number, c.fields, c.reason) for c in result.changes] == [
        ("update", 1, "200", {"Enabled": (False, True)}, "user back within the grace period, re-enabled")]


def test_delete_after_days_is_validated() -> None:
    with pytest.raises(ConfigError, match="delete_after_days"):
        PlanParams(removal_policy="disable_then_delete", delete_after_days=0)


# ------------------------------------------------------------------ protected users


@pytest.mark.parametrize("protection", ["protected_upn", "protected_group", "opted_out"])
def test_a_protected_user_is_never_created_changed_or_removed(protection: str) -> None:
    desired = [want("new", "201", protection=protection),
               want("changed", "202", first_name="Other", protection=protection),
               gone("removed", "203", "deleted") | {"protection": protection}]
    maps = [("changed", "202", 2), ("removed", "203", 3)]
    exts = [ext(2, "202", "changed"), ext(3, "203", "removed")]
    for params in (DISABLE, DELETE, GRACE):
        assert plan(desired, maps, exts, params, now=NOW).changes == []
